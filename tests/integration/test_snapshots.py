"""archipel:virtualmachine:snapshoting end to end: take → change the disk → revert brings it back."""
from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import grant
from test_storage_disks import DISK, define_with_disk, new_vm, next_push, refused
from vm_helpers import CONTROL, DEFINITION, wait_libvirt_state
from xmpp_client import AcpError

SNAP = "archipel:virtualmachine:snapshoting"


def qemu_io(path, command: str) -> str:
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def pattern_is(path, pattern: str) -> bool:
    """qemu-io's own check of the first 4 KiB (it fails on a pattern mismatch)."""
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} 0 4k", str(path)],
                         capture_output=True, text=True)
    return out.returncode == 0 and "verification failed" not in out.stdout.lower()


def libvirt_snapshots(stack, uuid: str) -> list[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return sorted(conn.lookupByUUIDString(uuid).snapshotListNames(0))
    finally:
        conn.close()


def snapshot_request(name: str, description: str = "") -> ET.Element:
    snap = ET.Element("domainsnapshot")
    ET.SubElement(snap, "name").text = name
    ET.SubElement(snap, "description").text = description
    return snap


async def vm_with_qcow2(agent, admin, new_user, stack, prefix="owner"):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack, prefix)
    await owner.acp(full, DISK, "create", {"name": "root", "size": "32", "unit": "M"})
    await define_with_disk(owner, full, folder / "root.qcow2")
    return owner, jid, uuid, full, folder


async def test_take_write_revert(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await vm_with_qcow2(agent, admin, new_user, stack)
    disk = folder / "root.qcow2"
    assert pattern_is(disk, "0x00")

    taken = (await owner.acp(full, SNAP, "take", children=[snapshot_request("clean", "before the change")]))[0]
    assert taken.findtext(f"{{{SNAP}}}name") == "clean"
    push = await next_push(owner, jid, "taken", namespace="snapshoting")
    assert push[0].get("name") == "clean"
    # the presence said so while it ran
    assert any(p["from"].bare == jid and p["status"] == "Snapshoting..." and p["show"] == "dnd"
               for p in owner.presences)
    assert libvirt_snapshots(stack, uuid) == ["clean"]
    listed = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(disk)], capture_output=True, text=True).stdout
    assert "clean" in listed  # an internal snapshot, in the qcow2 file itself

    # write something observable on the (off) VM's disk
    qemu_io(disk, "write -P 0xab 0 4k")
    assert pattern_is(disk, "0xab") and not pattern_is(disk, "0x00")

    # a second snapshot by attribute, then get/current
    await owner.acp(full, SNAP, "take", {"name": "dirty"})
    snaps = (await owner.acp(full, SNAP, "get")).findall(f"{{{SNAP}}}domainsnapshot")
    by_name = {s.findtext(f"{{{SNAP}}}name"): s for s in snaps}  # libvirt's order: creation time, 1 s granular
    assert sorted(by_name) == ["clean", "dirty"]
    assert by_name["clean"].findtext(f"{{{SNAP}}}description") == "before the change"
    for snap in snaps:  # the domain copy carries no secrets
        assert snap.find(f".//{{{SNAP}}}domain/{{{SNAP}}}description") is None
    current = (await owner.acp(full, SNAP, "current"))[0]
    assert current.findtext(f"{{{SNAP}}}name") == "dirty"

    # revert: the disk content is back
    await owner.acp(full, SNAP, "revert", {"name": "clean"})
    await next_push(owner, jid, "restored", namespace="snapshoting")
    assert pattern_is(disk, "0x00") and not pattern_is(disk, "0xab")
    assert (await owner.acp(full, SNAP, "current"))[0].findtext(f"{{{SNAP}}}name") == "clean"
    await owner.acp(full, SNAP, "revert", {"name": "dirty"})
    assert pattern_is(disk, "0xab")

    # errors
    await refused(owner.acp(full, SNAP, "take", {"name": "clean"}), "already exists", code=-49)
    await refused(owner.acp(full, SNAP, "revert", {"name": "nope"}), "no snapshot", code=-47)
    await refused(owner.acp(full, SNAP, "take", {"name": "../bad"}), "without '/'")
    # a disk with snapshots is not converted (they would be lost)
    await refused(owner.acp(full, DISK, "convert", {"name": "root.qcow2", "format": "raw"}), "snapshots", code=-49)

    # delete
    await owner.acp(full, SNAP, "delete", {"name": "dirty"})
    await next_push(owner, jid, "deleted", namespace="snapshoting")
    await owner.acp(full, SNAP, "delete", {"name": "clean"})
    assert libvirt_snapshots(stack, uuid) == []
    assert len(await owner.acp(full, SNAP, "current")) == 0
    assert len(await owner.acp(full, SNAP, "get")) == 0


async def test_running_vm_snapshot(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await vm_with_qcow2(agent, admin, new_user, stack)
    await owner.acp(full, CONTROL, "create")
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
    try:
        await owner.acp(full, SNAP, "take", {"name": "live"}, timeout=60)
        assert libvirt_snapshots(stack, uuid) == ["live"]
        await owner.acp(full, SNAP, "revert", {"name": "live"}, timeout=60)
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
    finally:
        await owner.acp(full, CONTROL, "destroy")
    await owner.acp(full, SNAP, "delete", {"name": "live"})


async def test_raw_disks_are_refused(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    await owner.acp(full, DISK, "create", {"name": "root", "size": "16", "unit": "M", "format": "raw"})
    await define_with_disk(owner, full, folder / "root.raw", fmt="raw")
    err = await refused(owner.acp(full, SNAP, "take", {"name": "s"}), "qcow2", "root.raw", code=-49)
    assert "convert" in err.text
    assert libvirt_snapshots(stack, uuid) == []


async def test_snapshot_only_user(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await vm_with_qcow2(agent, admin, new_user, stack)
    helper = await new_user("ta")
    await grant(admin, full, helper.jid, "snapshot_take", "snapshot_revert", "snapshot_get", "snapshot_current")
    await helper.acp(full, SNAP, "take", {"name": "ta-1"})
    qemu_io(folder / "root.qcow2", "write -P 0xcd 0 4k")
    await helper.acp(full, SNAP, "revert", {"name": "ta-1"})
    assert pattern_is(folder / "root.qcow2", "0x00")
    assert len((await helper.acp(full, SNAP, "get")).findall(f"{{{SNAP}}}domainsnapshot")) == 1
    denied = [
        (DISK, "create", {"name": "x", "size": "1", "unit": "M"}, ()),
        (DISK, "resize", {"name": "root.qcow2", "size": "64M"}, ()),
        (SNAP, "delete", {"name": "ta-1"}, ()),
        (DEFINITION, "define", {}, [ET.Element("domain")]),
    ]
    for namespace, action, attrs, children in denied:
        with pytest.raises(AcpError) as info:
            await helper.acp(full, namespace, action, attrs, children=children)
        assert info.value.is_permission_error, (namespace, action)
    assert libvirt_snapshots(stack, uuid) == ["ta-1"]
    await owner.acp(full, SNAP, "delete", {"name": "ta-1"})


async def test_unreadable_disk_refuses_the_snapshot(agent, admin, new_user, stack):
    """The backing check fails closed: qemu-img's error refuses the command (it was swallowed)."""
    owner, jid, uuid, full, folder = await vm_with_qcow2(agent, admin, new_user, stack)
    with open(folder / "root.qcow2", "r+b") as f:  # a broken qcow2 header: qemu-img cannot read the chain
        f.write(b"QFI\xfb\x00\x00\x00\x09")
    err = await refused(owner.acp(full, SNAP, "take", {"name": "s"}), "root.qcow2", "cannot read", code=-1050)
    assert "backing chain" in err.text
    assert libvirt_snapshots(stack, uuid) == []
