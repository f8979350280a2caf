"""Storage outage and recovery, against the real stack with an agent of its own.

There is no NFS/DRBD here, so the outage is made on this machine: the agent's
``vm_base_path`` is a bind mount (``storage_require_mountpoint = true``), and
the test remounts it read-only (root ignores file modes, not a read-only
mount), then unmounts it (the mount going away).  Every mount is undone in a
``finally``.

libvirtd and QEMU run in the rig's private mount namespace, so guests do not
see these mounts (their disks keep working: "running VMs are left alone" is
what is asserted).  A guest paused by an I/O error is made with QEMU's
``blkdebug`` driver injecting EIO on its disk reads (a domain defined with
virsh, since the policy refuses ``qemu:commandline``, then adopted with
``manage``); ``rerror=stop`` pauses it with libvirt reason ``ioerror``.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import AgentHandle, client_for, write_config
from agent_process import AgentProcess
from archipelagent.storage.health import is_mount_point
from vm_helpers import CONTROL, HV_NS, alloc, unique_name, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

HEALTH_NS = "archipel:hypervisor:health"
PUSH_NS = "archipel:push:hypervisor:storage"
HV = "hv-storage"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


def mount(*args: str) -> None:
    """``mount``; a read-only remount is retried: the agent's health probe may hold a probe file
    open for writing for an instant (``mount`` then fails with "busy", exit 32)."""
    for attempt in range(10):
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode == 0:
            return
        if result.returncode != 32 or attempt == 9:
            raise subprocess.CalledProcessError(result.returncode, ["mount", *args], result.stdout, result.stderr)
        time.sleep(0.2)


def umount_all(path) -> None:
    for _ in range(5):
        if not is_mount_point(path):  # os.path.ismount misses same-filesystem bind mounts
            return
        subprocess.run(["umount", str(path)], capture_output=True)


def state_and_reason(stack, uuid: str):
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return tuple(conn.lookupByUUIDString(uuid).state())
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


async def wait_state_reason(stack, uuid: str, wanted, timeout: float = 30):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current = await asyncio.to_thread(state_and_reason, stack, uuid)
        if current == wanted:
            return
        assert asyncio.get_running_loop().time() < deadline, f"{uuid}: {current}, expected {wanted}"
        await asyncio.sleep(0.2)


def from_hypervisor(jid: str, prefix: str):
    def predicate(presence):
        return (presence["from"].bare == jid and presence["type"] != "unavailable"
                and (presence["status"] or "").startswith(prefix))
    return predicate


async def next_storage_push(client, node: str, change: str, timeout: float = 20) -> ET.Element:
    return await client.next_push(node, change, namespace=PUSH_NS, timeout=timeout)


def io_error_domain(stack, folder, name: str, uuid: str) -> str:
    """A guest whose disk fails its first reads (blkdebug ``once`` rules), rerror=stop."""
    disk = folder / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    rule = {"event": "read_aio", "errno": 5, "once": True}
    blockdev = {"driver": "raw", "node-name": "iofail",
                "file": {"driver": "blkdebug", "inject-error": [rule] * 3,
                         "image": {"driver": "file", "filename": str(disk)}}}
    return (f"<domain type='{stack.domain_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
            f"<name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator><memballoon model='none'/></devices>"
            "<qemu:commandline><qemu:arg value='-blockdev'/>"
            f"<qemu:arg value='{json.dumps(blockdev)}'/>"
            "<qemu:arg value='-device'/><qemu:arg value='virtio-blk-pci,drive=iofail,rerror=stop,werror=stop,bootindex=1'/>"
            "</qemu:commandline></domain>")


async def test_storage_outage_refuses_writes_keeps_vms_and_recovers(stack):
    base = stack.state_dir / "storage-health"
    umount_all(base / "drives")
    assert not is_mount_point(base / "drives")
    shutil.rmtree(base, ignore_errors=True)
    lib_dir, backing, drives, outside = base / "lib", base / "backing", base / "drives", base / "outside"
    for d in (lib_dir, backing, drives, outside):
        d.mkdir(parents=True)
    hv_jid = f"{HV}@{stack.domain}"
    conf = write_config(stack, lib_dir, {
        "HYPERVISOR": {"hypervisor_xmpp_jid": hv_jid, "hypervisor_name": HV},
        "VIRTUALMACHINE": {"vm_base_path": str(drives)},
        "STORAGE": {"storage_check_interval": "1", "storage_require_mountpoint": "true",
                    "storage_fsync_warning_ms": "0"},
    })
    mount("--bind", str(backing), str(drives))
    process = AgentProcess(conf, lib_dir / "agent.out")
    handle = AgentHandle(stack, process, hv_jid, lib_dir)
    handle.full_jid = f"{hv_jid}/{HV}"
    process.start()
    user = stack.admin_user
    admin = await client_for(stack, user["jid"], user["password"], "storage-test").connect()
    node = f"/archipel/{hv_jid}/events"
    jids: list[str] = []
    try:
        await handle.wait_ready(admin)
        admin.xmpp.send_presence(pto=hv_jid, ptype="subscribe")
        await admin.wait_presence(from_hypervisor(hv_jid, "Online ("))
        await admin.xmpp.plugin["xep_0060"].subscribe(stack.pubsub_domain, node, timeout=10)
        health = (await admin.acp(handle.full_jid, HEALTH_NS, "storage"))[0]
        assert health.get("state") == "ok" and health.get("mounted") == "true" and int(health.get("free_bytes")) > 0

        # a running VM, a VM its user paused, and a guest whose disk will fail
        running = await alloc(admin, handle.full_jid, unique_name("run"))
        paused = await alloc(admin, handle.full_jid, unique_name("userpause"))
        jids += [running, paused]
        for jid in (running, paused):
            await wait_vm_ready(admin, f"{jid}/{HV}")
            await admin.acp(f"{jid}/{HV}", CONTROL, "create")
        await admin.acp(f"{paused}/{HV}", CONTROL, "suspend")
        run_uuid, paused_uuid = running.split("@")[0], paused.split("@")[0]
        await wait_state_reason(stack, paused_uuid, (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER))
        io_uuid = str(uuidlib.uuid4())
        subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "define", "/dev/stdin"], check=True, capture_output=True,
                       text=True, input=io_error_domain(stack, outside, unique_name("ioerr"), io_uuid))
        io_jid = f"{io_uuid}@{stack.domain}"
        await admin.acp(handle.full_jid, HV_NS, "manage", children=[ET.Element("item", {"jid": io_jid})])
        jids.append(io_jid)
        await wait_vm_ready(admin, f"{io_jid}/{HV}")

        # ---- outage 1: the mount turns read-only
        admin.presences.clear()
        mount("-o", "remount,ro,bind", str(drives))
        await admin.wait_presence(from_hypervisor(hv_jid, "Storage degraded: not writable"), timeout=15)
        push = await next_storage_push(admin, node, "degraded")
        assert [r.text for r in push.iter(f"{{{PUSH_NS}}}reason")] == ["not writable"]
        degraded_presence = [p for p in admin.presences if from_hypervisor(hv_jid, "Storage degraded")(p)][-1]
        assert degraded_presence["show"] == "dnd"
        with pytest.raises(AcpError) as err:
            await alloc(admin, handle.full_jid, unique_name("refused"))
        assert err.value.code == -48 and err.value.text.startswith("storage degraded (not writable): 'alloc' refused until it recovers")
        with pytest.raises(AcpError) as err:
            await admin.acp(handle.full_jid, HV_NS, "free", {"jid": paused})
        assert "'free' refused until it recovers" in err.value.text
        with pytest.raises(AcpError) as err:
            await admin.acp(f"{paused}/{HV}", CONTROL, "free")
        assert "'free' refused" in err.value.text
        health = (await admin.acp(handle.full_jid, HEALTH_NS, "storage"))[0]
        assert health.get("state") == "degraded" and [r.text for r in health] == ["not writable"]
        # the guest on the failing disk pauses with an I/O error and stays paused while degraded
        await admin.acp(f"{io_jid}/{HV}", CONTROL, "create")
        await wait_state_reason(stack, io_uuid, (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR))
        await asyncio.sleep(2.5)  # a few checks
        assert await asyncio.to_thread(state_and_reason, stack, io_uuid) == (
            libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)
        assert (await asyncio.to_thread(state_and_reason, stack, run_uuid))[0] == libvirt.VIR_DOMAIN_RUNNING
        assert process.alive

        # ---- recovery: writable again, nothing restarted
        admin.presences.clear()
        mount("-o", "remount,rw,bind", str(drives))
        await admin.wait_presence(from_hypervisor(hv_jid, "Online ("), timeout=15)
        assert (await next_storage_push(admin, node, "recovered")).find(f"{{{PUSH_NS}}}reason") is None
        await wait_libvirt_state(stack, io_uuid, libvirt.VIR_DOMAIN_RUNNING, timeout=20)  # resumed by the agent
        assert await asyncio.to_thread(state_and_reason, stack, paused_uuid) == (
            libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)  # a user's pause is never undone
        assert (await asyncio.to_thread(state_and_reason, stack, run_uuid))[0] == libvirt.VIR_DOMAIN_RUNNING
        after = await alloc(admin, handle.full_jid, unique_name("after"))
        jids.append(after)
        assert (drives / after.split("@")[0]).is_dir()

        # ---- outage 2: the mount goes away
        admin.presences.clear()
        subprocess.run(["umount", str(drives)], check=True, capture_output=True)
        await admin.wait_presence(from_hypervisor(hv_jid, "Storage degraded: not mounted"), timeout=15)
        push = await next_storage_push(admin, node, "degraded")
        assert "not mounted" in [r.text for r in push.iter(f"{{{PUSH_NS}}}reason")]
        with pytest.raises(AcpError) as err:
            await admin.acp(handle.full_jid, HV_NS, "clone", {"jid": after})
        assert "storage degraded (not mounted" in err.value.text and "'clone' refused" in err.value.text
        assert (await asyncio.to_thread(state_and_reason, stack, run_uuid))[0] == libvirt.VIR_DOMAIN_RUNNING
        admin.presences.clear()
        mount("--bind", str(backing), str(drives))
        await admin.wait_presence(from_hypervisor(hv_jid, "Online ("), timeout=15)
        await next_storage_push(admin, node, "recovered")
        for jid in jids:
            await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
        jids.clear()
    finally:
        umount_all(drives)
        for jid in jids:  # whatever the test could not free through the agent
            subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "destroy", jid.split("@")[0]], capture_output=True)
        await admin.close()
        process.stop()
        assert not is_mount_point(drives)
