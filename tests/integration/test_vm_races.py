"""Races and starvation (issue 10, item 7), each provoked against the real stack.

* a clone's disk copy no longer holds the VM manager's lock: an alloc by
  someone else completes while a large clone is still copying;
* a clone whose definition is refused leaves no folder behind;
* slow libvirt calls (screenshots of guests whose QEMU is stopped, so its
  monitor never answers) stay in the slow lane: ``info`` of another VM and
  the hypervisor's ``nodeinfo`` still answer;
* SIGTERM while a free runs: after a restart the VM is fully freed or fully
  present, never a row without a domain;
* SIGTERM while a clone copies: no half-copied clone folder, no domain.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import admin_client, grant, second_agent
from vm_helpers import CONTROL, HV_NS, alloc, libvirt_state, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

CHUNK = 8 * 1024 * 1024  # the manager's copy chunk: one non-zero byte per chunk defeats hole skipping


def write_dense_enough(path, size: int) -> None:
    """A sparse file (cheap to make) whose every copy chunk holds data, so a clone really writes ``size`` bytes."""
    with open(path, "wb") as f:
        for offset in range(0, size, CHUNK):
            f.seek(offset)
            f.write(b"\x01")
        f.truncate(size)


def folders(stack) -> set[str]:
    return {p.name for p in stack.storage_dir.iterdir()}


async def test_an_alloc_completes_while_a_large_clone_copies(agent, admin, new_user, stack):
    watcher, other = await new_user("clonewatch"), await new_user("allocator")
    await grant(admin, agent.full_jid, other.jid, "alloc", "free")
    node = f"/archipel/{agent.jid}/events"
    await grant(admin, agent.full_jid, watcher.jid, "presence")  # the events node is readable by who sees the entity
    await watcher.subscribe_events(stack.pubsub_domain, agent.jid)
    src = await alloc(admin, agent.full_jid, unique_name("bigsrc"))
    await wait_vm_ready(admin, vm_full(src, agent.jid))
    await asyncio.to_thread(write_dense_enough, stack.storage_dir / src.split("@")[0] / "data.raw", 2 * 1024 ** 3)
    clone = asyncio.ensure_future(admin.acp(agent.full_jid, HV_NS, "clone", {"jid": src}, timeout=300))
    allocated = None
    try:
        await watcher.next_push(node, "cloning", namespace="archipel:push:hypervisor", timeout=60)  # copying now
        allocated = await alloc(other, agent.full_jid, unique_name("meanwhile"), )
        assert not clone.done(), "the alloc waited for the whole clone copy"
    finally:
        reply = await clone
        for jid, client in ((allocated, other), (reply[0].get("jid"), admin), (src, admin)):
            if jid:
                await client.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_a_clone_whose_definition_is_refused_leaves_no_folder(agent, admin, stack):
    """A domain defined outside the agent (a tcp serial port, which the policy refuses) is managed, then cloned:
    the copy's definition is refused and nothing is left."""
    uuid = str(uuidlib.uuid4())
    name = unique_name("outside")
    xml = (f"<domain type='{stack.domain_type}'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
           "<serial type='tcp'><source mode='connect' host='127.0.0.1' service='9'/><protocol type='raw'/></serial>"
           "<memballoon model='none'/></devices></domain>")
    subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "define", "/dev/stdin"], input=xml, text=True, check=True,
                   capture_output=True)
    (stack.storage_dir / uuid).mkdir()
    (stack.storage_dir / uuid / "notes.txt").write_text("copied by the clone\n")
    item = ET.Element("item", {"jid": f"{uuid}@{stack.domain}"})
    try:
        await admin.acp(agent.full_jid, HV_NS, "manage", children=[item])
        before = await asyncio.to_thread(folders, stack)
        with pytest.raises(AcpError) as err:
            await admin.acp(agent.full_jid, HV_NS, "clone", {"jid": uuid, "name": unique_name("refused")})
        assert err.value.code == -50 and "serial" in err.value.text, err.value  # the definition policy
        assert await asyncio.to_thread(folders, stack) == before  # the clone's own folder is gone
    finally:
        await admin.acp(agent.full_jid, HV_NS, "unmanage", children=[item])
        subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "undefine", uuid], check=True, capture_output=True)
        shutil.rmtree(stack.storage_dir / uuid, ignore_errors=True)


def qemu_pid(uuid: str) -> int:
    """The QEMU process of a running test VM (its command line carries ``-uuid <uuid>``)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if uuid.encode() in cmdline and b"qemu" in cmdline:
            return int(entry)
    raise AssertionError(f"no QEMU process for {uuid}")


def monitor_busy(stack, uuid: str) -> bool:
    """libvirt's own view: a job or an unanswered monitor command is pending on this domain."""
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return conn.lookupByUUIDString(uuid).controlInfo()[0] != libvirt.VIR_DOMAIN_CONTROL_OK
    finally:
        conn.close()


async def wait_monitor_busy(stack, uuid: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(monitor_busy, stack, uuid):
        assert asyncio.get_running_loop().time() < deadline, f"no screenshot pending on {uuid}"
        await asyncio.sleep(0.1)


HUNG = 4  # the quick lane's size: in the old single-pool design they took every thread


async def test_hung_slow_calls_do_not_starve_info_or_nodeinfo(agent, admin, stack):
    jids = [await alloc(admin, agent.full_jid, unique_name("hung")) for _ in range(HUNG)]
    other = await alloc(admin, agent.full_jid, unique_name("other"))
    stopped: list[int] = []
    shots: list[asyncio.Future] = []
    try:
        for jid in jids:
            full = vm_full(jid, agent.jid)
            await wait_vm_ready(admin, full)
            await admin.acp(full, CONTROL, "create")
            await wait_libvirt_state(stack, jid.split("@")[0], libvirt.VIR_DOMAIN_RUNNING)
        await wait_vm_ready(admin, vm_full(other, agent.jid))
        for jid in jids:  # QEMU stopped: its monitor never answers, a screenshot waits for it
            pid = qemu_pid(jid.split("@")[0])
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        shots = [asyncio.ensure_future(admin.acp(vm_full(jid, agent.jid), CONTROL, "screenshot", timeout=300))
                 for jid in jids]
        for jid in jids:
            await wait_monitor_busy(stack, jid.split("@")[0])
        # every slow call is stuck in libvirt: the quick lane still serves everyone else
        info = (await admin.acp(vm_full(other, agent.jid), CONTROL, "info", timeout=30))[0]
        assert info.get("state") == str(libvirt.VIR_DOMAIN_SHUTOFF)
        assert (await admin.acp(agent.full_jid, HV_NS, "nodeinfo", timeout=30))[0].get("nrCPU")
        for shot in shots:  # still stuck, or refused by libvirt because the health module's statistics query
            if shot.done():  # took that stopped QEMU's monitor job first (libvirt waits 30 s for it, then error 68)
                error = shot.exception()
                assert isinstance(error, AcpError) and error.code == libvirt.VIR_ERR_OPERATION_TIMEOUT \
                    and "state change lock" in error.text, error
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        await asyncio.gather(*shots, return_exceptions=True)
        for jid in [*jids, other]:
            await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid}, timeout=60)


def sigterm_when_undefined(stack, uuid: str, proc, timeout: float = 30) -> None:
    """Poll libvirt back to back and SIGTERM the agent the moment the domain is undefined:
    the free is then between the undefine and the deletion of the VM's row."""
    conn = libvirt.open(stack.libvirt_uri)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError:
                proc.send_signal(signal.SIGTERM)
                return
            assert time.monotonic() < deadline, "the domain was never undefined"
    finally:
        conn.close()


async def test_sigterm_during_a_free_leaves_the_vm_whole_or_gone(stack):
    """A second agent of its own, stopped by SIGTERM in the middle of a VM's own free (a background task)."""
    handle = second_agent(stack, "hv-term")
    process = handle.process
    process.start()
    admin = await admin_client(stack, "sigterm-test")
    jid = None
    try:
        await handle.wait_ready(admin)
        jid = await alloc(admin, handle.full_jid, unique_name("term"))
        uuid = jid.split("@")[0]
        full = f"{jid}/hv-term"
        await wait_vm_ready(admin, full)
        watcher = asyncio.ensure_future(asyncio.to_thread(sigterm_when_undefined, stack, uuid, process.proc))
        await admin.acp(full, CONTROL, "free")  # answered at once; the free runs in the background
        await watcher
        assert await asyncio.to_thread(process.proc.wait, 60) == 0
        process.start()
        await handle.wait_ready(admin)
        domain = await asyncio.to_thread(libvirt_state, stack, uuid)
        roster = await admin.acp(handle.full_jid, HV_NS, "rostervm")
        managed = any(i.get("managed") == "True" and uuid in (i.text or "") for i in roster)
        assert (domain is None) == (not managed), f"domain state {domain}, managed {managed}"
        if managed:
            await wait_vm_ready(admin, full)
        else:
            jid = None  # fully freed
    finally:
        if jid:
            try:
                await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
            except AcpError:
                pass
        await admin.close()
        process.stop()


def domain_uuids(stack) -> set[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return {d.UUIDString().lower() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


async def test_sigterm_during_a_clone_copy_leaves_no_half_copied_clone(stack):
    """A second agent of its own, stopped by SIGTERM while a clone copies: no clone folder, no clone domain."""
    handle = second_agent(stack, "hv-termclone")
    process, hv_jid = handle.process, handle.jid
    process.start()
    admin = await admin_client(stack, "sigterm-clone-test")
    jid = None
    try:
        await handle.wait_ready(admin)
        node = f"/archipel/{hv_jid}/events"
        await admin.subscribe_events(stack.pubsub_domain, hv_jid)
        jid = await alloc(admin, handle.full_jid, unique_name("termsrc"))
        await wait_vm_ready(admin, f"{jid}/hv-termclone")
        await asyncio.to_thread(write_dense_enough, stack.storage_dir / jid.split("@")[0] / "data.raw", 2 * 1024 ** 3)
        dirs, domains = await asyncio.to_thread(folders, stack), await asyncio.to_thread(domain_uuids, stack)
        cloning = asyncio.ensure_future(admin.acp(handle.full_jid, HV_NS, "clone", {"jid": jid}, timeout=120))
        await admin.next_push(node, "cloning", namespace="archipel:push:hypervisor", timeout=60)
        process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.proc.wait, 60) == 0
        cloning.cancel()
        await asyncio.gather(cloning, return_exceptions=True)
        assert await asyncio.to_thread(folders, stack) == dirs  # the copy's folder was removed
        assert await asyncio.to_thread(domain_uuids, stack) == domains
        process.start()
        await handle.wait_ready(admin)
    finally:
        if jid:
            try:
                await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
            except AcpError:
                pass
        await admin.close()
        process.stop()
