"""A hung storage never freezes the agent (issue 10, item 4).

The agent's ``vm_base_path`` is a FUSE passthrough mount (``hangfs.py``) whose
server the test freezes with ``SIGSTOP``: every file system call on the mount
then blocks in the kernel, exactly as on a hung NFS mount.  While it is
frozen the hypervisor must keep answering (ping, ``nodeinfo``), another VM
its ``info``, the storage health must go degraded (presence ``dnd``), and a
disk command on a VM of that storage must answer ``-48`` (storage not
answering) instead of hanging.  After ``SIGCONT`` everything recovers.

libvirtd runs in the rig's private mount namespace and does not see the FUSE
mount: the VMs here are defined, never started.  Cleanup always resumes and
lazily unmounts the FUSE server this test started (and only that one).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_fixtures import admin_client, second_agent
from vm_helpers import CONTROL, HV_NS, alloc, unique_name, wait_vm_ready
from xmpp_client import AcpError

HV = "hv-hung"
DISK = "archipel:vm:disk"
HEALTH_NS = "archipel:hypervisor:health"
HANGFS = Path(__file__).with_name("hangfs.py")
STORAGE_TIMEOUT = 15  # archipelagent/fsio.py DEFAULT_TIMEOUT

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount") is None,
                                reason="needs /dev/fuse and fusermount (scripts/bootstrap.sh installs fuse)")


def mounted(path: Path) -> bool:
    """From /proc/self/mountinfo: never touches the (maybe frozen) mount itself."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class HangFS:
    """The FUSE server process of one mount."""

    def __init__(self, backing: Path, mountpoint: Path, log: Path):
        self.backing, self.mountpoint, self.log = backing, mountpoint, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(HANGFS), str(self.backing), str(self.mountpoint)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not mounted(self.mountpoint):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "hangfs did not mount"
            time.sleep(0.05)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        subprocess.run(["fusermount", "-u", "-z", str(self.mountpoint)], capture_output=True)
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def status_of(jid: str, prefix: str):
    def predicate(presence):
        return (presence["from"].bare == jid and presence["type"] != "unavailable"
                and (presence["status"] or "").startswith(prefix))
    return predicate


async def test_a_frozen_storage_never_freezes_the_agent(stack):
    base = stack.state_dir / "hung-storage"
    drives = base / "drives"
    if mounted(drives):  # left by an interrupted run
        subprocess.run(["fusermount", "-u", "-z", str(drives)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)
    lib_dir, backing, iso, golden = base / "lib", base / "backing", base / "iso", base / "golden"
    for d in (lib_dir, backing, drives, iso, golden):
        d.mkdir(parents=True)
    handle = second_agent(stack, HV, lib_dir=lib_dir, overrides={
        "VIRTUALMACHINE": {"vm_base_path": str(drives)},
        "STORAGE": {"storage_check_interval": "1", "storage_fsync_warning_ms": "0",
                    "iso_library_path": str(iso), "golden_images_path": str(golden)},
    })
    fs = HangFS(backing, drives, base / "hangfs.log")
    fs.start()
    process, hv_jid = handle.process, handle.jid
    process.start()
    admin = await admin_client(stack, "hung-storage")
    jids: list[str] = []
    try:
        await handle.wait_ready(admin)
        admin.xmpp.send_presence(pto=hv_jid, ptype="subscribe")
        await admin.wait_presence(status_of(hv_jid, "Online ("))
        frozen_vm = await alloc(admin, handle.full_jid, unique_name("frozen"))
        other_vm = await alloc(admin, handle.full_jid, unique_name("other"))
        jids += [frozen_vm, other_vm]
        for jid in jids:
            await wait_vm_ready(admin, f"{jid}/{HV}")
        await admin.acp(f"{frozen_vm}/{HV}", DISK, "create", {"name": "data", "size": "16", "unit": "M",
                                                               "format": "qcow2"})
        disks = await admin.acp(f"{frozen_vm}/{HV}", DISK, "get")
        assert [d.get("name") for d in disks] == ["data.qcow2"]
        assert (backing / frozen_vm.split("@")[0] / "data.qcow2").is_file()  # really on the FUSE mount

        # ---- the storage hangs: the health monitor notices (dnd "Storage degraded") ...
        admin.presences.clear()
        fs.freeze()
        degraded = await admin.wait_presence(status_of(hv_jid, "Storage degraded"), timeout=STORAGE_TIMEOUT * 2)
        assert degraded["show"] == "dnd"
        # ... a disk command on that storage is sent ...
        stuck = asyncio.ensure_future(admin.acp(f"{frozen_vm}/{HV}", DISK, "get", timeout=STORAGE_TIMEOUT * 4))
        await asyncio.sleep(0)
        # ... and every other entity keeps answering while that call is stuck in the kernel
        assert await admin.ping(handle.full_jid, timeout=10) >= 0
        node = (await admin.acp(handle.full_jid, HV_NS, "nodeinfo", timeout=10))[0]
        assert int(node.get("nrCPU")) > 0
        info = (await admin.acp(f"{other_vm}/{HV}", CONTROL, "info", timeout=10))[0]
        assert info.get("state") is not None
        # the stuck disk command gets an answer, not silence: -48 storage not answering
        with pytest.raises(AcpError) as err:
            await stuck
        assert err.value.code == -48 and "storage is not answering" in err.value.text, err.value
        assert process.alive

        # ---- the storage answers again
        admin.presences.clear()
        fs.thaw()
        await admin.wait_presence(status_of(hv_jid, "Online ("), timeout=STORAGE_TIMEOUT * 2)
        disks = await admin.acp(f"{frozen_vm}/{HV}", DISK, "get", timeout=STORAGE_TIMEOUT * 2)
        assert [d.get("name") for d in disks] == ["data.qcow2"]
        assert (await admin.acp(f"{other_vm}/{HV}", CONTROL, "info"))[0].get("state") is not None
        for jid in list(jids):
            await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
            jids.remove(jid)
    finally:
        fs.thaw()  # before anything (the agent's stop included) touches the mount
        await admin.close()
        process.stop()
        fs.stop()
        for jid in jids:  # whatever the test could not free through the agent
            subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "undefine", jid.split("@")[0]],
                           capture_output=True)
        assert not mounted(drives)
