"""archipel:vm:disk end to end: disk lifecycle, golden overlays that boot, path escapes refused.

qemu-img's own view of the files is checked, not only the agent's replies.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import grant
from vm_helpers import CONTROL, DEFINITION, alloc, from_vm, unique_name, vm_full, wait_libvirt_state
from xmpp_client import AcpError

DISK = "archipel:vm:disk"
M = 1024 ** 2
G = 1024 ** 3


# ------------------------------------------------------------------ helpers
def qemu_info(path) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


async def subscribe_events(client, stack, jid):
    await client.xmpp.plugin["xep_0060"].subscribe(stack.pubsub_domain, f"/archipel/{jid}/events", timeout=10)


async def next_push(client, jid: str, change: str, timeout: float = 30, namespace: str | None = None):
    """The next push ``change`` on the VM's events node (earlier ones are consumed)."""
    return await client.next_push(f"/archipel/{jid}/events", change, timeout=timeout, fail_on="failed",
                                  namespace=f"archipel:push:{namespace}" if namespace else None)


async def new_vm(agent, admin, new_user, stack, prefix="owner"):
    """An owner (alloc granted) and a fresh VM; returns (owner, jid, uuid, full jid, folder)."""
    owner = await new_user(prefix)
    await grant(admin, agent.full_jid, owner.jid, "alloc")
    jid = await alloc(owner, agent.full_jid, unique_name())
    await owner.wait_presence(from_vm(jid, "Off"), timeout=30)
    uuid = jid.split("@")[0]
    await subscribe_events(owner, stack, jid)
    return owner, jid, uuid, vm_full(jid, agent.jid), stack.storage_dir / uuid


def disks_by_name(query) -> dict[str, ET.Element]:
    return {d.get("name"): d for d in query.findall(f"{{{DISK}}}disk")}


async def define_with_disk(client, full: str, path, fmt: str = "qcow2") -> None:
    """Redefine the VM with its current definition plus one virtio disk."""
    desc = (await client.acp(full, CONTROL, "xmldesc"))[0]
    for el in desc.iter():
        el.tag = el.tag.split("}", 1)[-1]
    devices = desc.find("devices")
    for old in devices.findall("disk"):
        devices.remove(old)
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": fmt})
    ET.SubElement(disk, "source", {"file": str(path)})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    await client.acp(full, DEFINITION, "define", children=[desc])


def domain_disk_sources(stack, uuid: str) -> list[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        root = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()
    return [s.get("file") for s in root.findall("devices/disk/source")]


def record_formats(folder, **formats: str) -> None:
    """Add format records to the agent's record file (as an admin importing disks by hand would)."""
    path = folder / ".archipel-disks.json"
    data = json.loads(path.read_text()) if path.exists() else {"version": 1, "disks": {}}
    data["disks"].update(formats)
    path.write_text(json.dumps(data))


async def refused(coro, *fragments: str, code: int | None = -46):
    with pytest.raises(AcpError) as info:
        await coro
    err = info.value
    assert not err.is_permission_error, err
    if code is not None:
        assert err.code == code, err
    for fragment in fragments:
        assert fragment.lower() in err.text.lower(), err
    return err


# -------------------------------------------------------------------- tests
async def test_disk_lifecycle(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)

    # create: qcow2 in M, raw in K (and T accepted), the format's suffix added
    created = (await owner.acp(full, DISK, "create", {"name": "d1", "size": "64", "unit": "M", "format": "qcow2"}))[0]
    assert created.get("name") == "d1.qcow2" and created.get("virtualSize") == str(64 * M)
    await next_push(owner, jid, "created")
    await owner.acp(full, DISK, "create", {"name": "d2", "size": "32768", "unit": "K", "format": "raw",
                                           "preallocation": "off"})
    await owner.acp(full, DISK, "create", {"name": "big", "size": "1", "unit": "T", "format": "qcow2",
                                           "preallocation": "off"})
    await owner.acp(full, DISK, "create", {"name": "full", "size": "4", "unit": "M", "format": "raw",
                                           "preallocation": "full"})
    assert qemu_info(folder / "d1.qcow2")["format"] == "qcow2"
    assert qemu_info(folder / "d1.qcow2")["virtual-size"] == 64 * M
    assert qemu_info(folder / "d2.raw") == {**qemu_info(folder / "d2.raw"), "format": "raw", "virtual-size": 32 * M}
    assert qemu_info(folder / "big.qcow2")["virtual-size"] == 1024 * G
    assert qemu_info(folder / "full.raw")["actual-size"] >= 4 * M  # really allocated

    # bad arguments get clear errors
    await refused(owner.acp(full, DISK, "create", {"name": "d1", "size": "1", "unit": "G"}), "already exists", code=-49)
    await refused(owner.acp(full, DISK, "create", {"name": "x", "size": "1", "unit": "P"}), "unit")
    await refused(owner.acp(full, DISK, "create", {"name": "x", "size": "-3", "unit": "G"}), "size")
    await refused(owner.acp(full, DISK, "create", {"name": "x", "size": "1", "unit": "G", "format": "vmdk"}), "format")
    await refused(owner.acp(full, DISK, "create", {"name": "x", "size": "1", "unit": "G", "format": "raw",
                                                   "preallocation": "metadata"}), "raw")
    await refused(owner.acp(full, DISK, "create", {"name": "x", "size": "999", "unit": "T"}), "maximum")

    # get: every disk with qemu-img's figures
    disks = disks_by_name(await owner.acp(full, DISK, "get"))
    assert set(disks) == {"d1.qcow2", "d2.raw", "big.qcow2", "full.raw"}
    assert disks["d1.qcow2"].get("format") == "qcow2" and disks["d1.qcow2"].get("virtualSize") == str(64 * M)
    assert disks["d2.raw"].get("path") == str(folder / "d2.raw")
    assert int(disks["full.raw"].get("diskSize")) >= 4 * M

    # resize grows; shrinking is refused
    await owner.acp(full, DISK, "resize", {"name": "d1.qcow2", "size": "128", "unit": "M"})
    assert qemu_info(folder / "d1.qcow2")["virtual-size"] == 128 * M
    await refused(owner.acp(full, DISK, "resize", {"name": "d1.qcow2", "size": "32", "unit": "M"}), "shrinking")
    await refused(owner.acp(full, DISK, "resize", {"name": "nope.qcow2", "size": "1", "unit": "G"}), "no disk", code=-47)

    # rename (keeps the suffix); the definition follows
    await define_with_disk(owner, full, folder / "d1.qcow2")
    renamed = (await owner.acp(full, DISK, "rename", {"name": "d1.qcow2", "newname": "system"}))[0]
    assert renamed.get("name") == "system.qcow2"
    await next_push(owner, jid, "renamed")
    assert (folder / "system.qcow2").is_file() and not (folder / "d1.qcow2").exists()
    assert domain_disk_sources(stack, uuid) == [str(folder / "system.qcow2")]
    await refused(owner.acp(full, DISK, "rename", {"name": "d2.raw", "newname": "system.qcow2"}), "exists", code=-49)

    # convert raw → qcow2, in the background, reported by pushes; the original goes
    reply = (await owner.acp(full, DISK, "convert", {"name": "d2.raw", "format": "qcow2"}))[0]
    assert reply.get("status") == "converting" and reply.get("name") == "d2.qcow2"
    await next_push(owner, jid, "converted")
    assert qemu_info(folder / "d2.qcow2")["format"] == "qcow2"
    assert qemu_info(folder / "d2.qcow2")["virtual-size"] == 32 * M
    assert not (folder / "d2.raw").exists()
    await refused(owner.acp(full, DISK, "convert", {"name": "d2.qcow2", "format": "qcow2"}), "already")

    # delete: a disk in the definition needs undefine=yes
    await refused(owner.acp(full, DISK, "delete", {"name": "system.qcow2"}), "undefine=yes", code=-49)
    await owner.acp(full, DISK, "delete", {"name": "system.qcow2", "undefine": "yes"})
    await next_push(owner, jid, "deleted")
    assert not (folder / "system.qcow2").exists() and domain_disk_sources(stack, uuid) == []
    for name in ("d2.qcow2", "big.qcow2", "full.raw"):
        await owner.acp(full, DISK, "delete", {"name": name})
    assert disks_by_name(await owner.acp(full, DISK, "get")) == {}

    # the ISO library
    iso_dir = stack.storage_dir.parent / "iso"
    iso_dir.mkdir(exist_ok=True)
    iso = iso_dir / f"test-{uuidlib.uuid4().hex[:6]}.iso"
    iso.write_bytes(b"\0" * 2048)
    try:
        isos = (await owner.acp(full, DISK, "getiso")).findall(f"{{{DISK}}}iso")
        assert any(i.get("name") == iso.name and i.get("path") == str(iso) for i in isos)
    finally:
        iso.unlink()


async def test_resize_a_running_vm_live(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    await owner.acp(full, DISK, "create", {"name": "root", "size": "64", "unit": "M"})
    await define_with_disk(owner, full, folder / "root.qcow2")
    await owner.acp(full, CONTROL, "create")
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
    try:
        await owner.acp(full, DISK, "resize", {"name": "root.qcow2", "size": "96M"})
        conn = libvirt.open(stack.libvirt_uri)
        try:
            capacity = conn.lookupByUUIDString(uuid).blockInfo("vda")[0]
        finally:
            conn.close()
        assert capacity == 96 * M
        assert qemu_info(folder / "root.qcow2")["virtual-size"] == 96 * M
        await refused(owner.acp(full, DISK, "delete", {"name": "root.qcow2", "undefine": "yes"}), "running", code=-49)
        await refused(owner.acp(full, DISK, "convert", {"name": "root.qcow2", "format": "raw"}), "running", code=-49)
    finally:
        await owner.acp(full, CONTROL, "destroy")


async def test_golden_image_overlay_boots(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    await owner.acp(full, DISK, "create", {"name": "base", "size": "48", "unit": "M"})
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", str(folder / "base.qcow2")],
                   check=True, capture_output=True)
    golden = f"tpl-{uuidlib.uuid4().hex[:8]}"
    reply = (await owner.acp(full, DISK, "setgolden", {"name": "base.qcow2", "golden": golden}))[0]
    assert reply.get("status") == "copying"
    await next_push(owner, jid, "goldened")
    golden_dir = stack.storage_dir.parent / "golden"
    gpath = golden_dir / f"{golden}.qcow2"
    assert gpath.is_file() and stat.S_IMODE(gpath.stat().st_mode) == 0o444
    assert "backing-filename" not in qemu_info(gpath)
    goldens = (await owner.acp(full, DISK, "getgolden")).findall(f"{{{DISK}}}golden")
    assert any(g.get("name") == gpath.name and g.get("path") == str(gpath) for g in goldens)
    await refused(owner.acp(full, DISK, "setgolden", {"name": "base.qcow2", "golden": golden}), "exists", code=-49)

    # a second VM gets a disk that is an overlay of the golden image, and boots from it
    owner2, jid2, uuid2, full2, folder2 = await new_vm(agent, admin, new_user, stack, "student")
    await grant(admin, full2, owner2.jid, "drives_getgolden")
    names = [g.get("name") for g in (await owner2.acp(full2, DISK, "getgolden")).findall(f"{{{DISK}}}golden")]
    assert gpath.name in names
    created = (await owner2.acp(full2, DISK, "create", {"name": "root", "golden": golden}))[0]
    assert created.get("backingFile") == str(gpath) and created.get("virtualSize") == str(48 * M)
    info = qemu_info(folder2 / "root.qcow2")
    assert info["format"] == "qcow2" and info["backing-filename"] == str(gpath)
    assert info["virtual-size"] == 48 * M
    # the overlay reads the golden image's data
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k", str(folder2 / "root.qcow2")],
                          capture_output=True, text=True)
    assert read.returncode == 0 and "verification failed" not in read.stdout.lower(), read.stdout
    await refused(owner2.acp(full2, DISK, "create", {"name": "r2", "golden": golden, "format": "raw"}), "qcow2")
    await refused(owner2.acp(full2, DISK, "create", {"name": "r3", "golden": "no-such-golden"}), "no golden", code=-47)

    await define_with_disk(owner2, full2, folder2 / "root.qcow2")
    await owner2.acp(full2, CONTROL, "create")
    await wait_libvirt_state(stack, uuid2, libvirt.VIR_DOMAIN_RUNNING)
    await owner2.wait_presence(from_vm(jid2, "Running"))
    conn = libvirt.open(stack.libvirt_uri)
    try:
        live = ET.fromstring(conn.lookupByUUIDString(uuid2).XMLDesc(0))
    finally:
        conn.close()
    backing = live.find("devices/disk/backingStore/source")
    assert backing is not None and backing.get("file") == str(gpath)
    disks = disks_by_name(await owner2.acp(full2, DISK, "get"))  # -U: readable while the guest runs
    assert disks["root.qcow2"].get("backingFile") == str(gpath)
    await owner2.acp(full2, CONTROL, "destroy")
    await wait_libvirt_state(stack, uuid2, libvirt.VIR_DOMAIN_SHUTOFF)
    # the golden image is nobody's to delete through a VM
    await refused(owner2.acp(full2, DISK, "delete", {"name": str(gpath)}), "outside")


async def test_path_escapes_are_refused(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    # another VM (someone else's) with a disk
    other, ojid, ouuid, ofull, ofolder = await new_vm(agent, admin, new_user, stack, "victim")
    await other.acp(ofull, DISK, "create", {"name": "secret", "size": "16", "unit": "M"})
    victim = ofolder / "secret.qcow2"
    await owner.acp(full, DISK, "create", {"name": "mine", "size": "16", "unit": "M"})
    # hostile files planted in the VM folder (as if by someone with shell access)
    (folder / "etc").symlink_to("/etc")
    (folder / "passwd.qcow2").symlink_to("/etc/passwd")
    (folder / "theirs.qcow2").symlink_to(victim)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname",
                    str(folder / "evil.qcow2"), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(victim),
                    str(folder / "evil2.qcow2"), "16M"], check=True)
    # recorded as qcow2 (as if imported), so the chain check itself is what refuses them
    record_formats(folder, **{"evil.qcow2": "qcow2", "evil2.qcow2": "qcow2"})

    attempts = [
        ("create", {"name": "../x", "size": "1", "unit": "M"}, "without '/'"),
        ("create", {"name": "/etc/x", "size": "1", "unit": "M"}, "without '/'"),
        ("create", {"name": "sub/dir", "size": "1", "unit": "M"}, "without '/'"),
        ("create", {"name": "x" * 65, "size": "1", "unit": "M"}, "not a valid name"),
        ("create", {"name": ".hidden", "size": "1", "unit": "M"}, "not a valid name"),
        ("create", {"name": "etc/shadow", "size": "1", "unit": "M"}, "without '/'"),
        ("create", {"name": "x", "golden": f"../drives/{ouuid}/secret.qcow2"}, "without '/'"),
        ("delete", {"name": "/etc/passwd"}, "outside this vm's folder"),
        ("delete", {"name": f"../{ouuid}/secret.qcow2"}, "without '/'"),
        ("delete", {"name": ".."}, "not a valid name"),
        ("delete", {"name": str(victim)}, "outside this vm's folder"),
        ("delete", {"name": str(folder / ".." / ouuid / "secret.qcow2")}, "outside this vm's folder"),
        ("delete", {"name": "passwd.qcow2"}, "resolves to '/etc/passwd'"),
        ("resize", {"name": "theirs.qcow2", "size": "1", "unit": "G"}, "outside this vm's folder"),
        ("resize", {"name": "evil.qcow2", "size": "1", "unit": "G"}, "backing chain"),
        ("convert", {"name": "evil2.qcow2", "format": "raw"}, "backing chain"),
        ("convert", {"path": str(victim), "format": "raw"}, "outside this vm's folder"),
        ("rename", {"name": "mine.qcow2", "newname": f"../{ouuid}/stolen.qcow2"}, "without '/'"),
        ("rename", {"name": "mine.qcow2", "newname": "/tmp/stolen.qcow2"}, "without '/'"),
        ("rename", {"name": "passwd.qcow2", "newname": "p.qcow2"}, "outside"),
        ("setgolden", {"path": str(victim), "name": "stolen"}, "outside this vm's folder"),
        ("setgolden", {"name": "mine.qcow2", "golden": "../drives/x"}, "without '/'"),
        ("setgolden", {"name": "evil.qcow2", "golden": "evil"}, "backing chain"),
    ]
    for action, attrs, fragment in attempts:
        err = await refused(owner.acp(full, DISK, action, attrs), fragment)
        assert "\n\narchipel:vm:disk\n" in err.text  # Archipel's error text: message, namespace, action

    # nothing happened to the victim, nothing was written outside
    assert qemu_info(victim)["virtual-size"] == 16 * M
    assert not (ofolder / "stolen.qcow2").exists() and not os.path.exists("/tmp/stolen.qcow2")
    assert not (stack.storage_dir / "x").exists()
    # get shows only files really in the folder, and marks a hostile backing chain
    disks = disks_by_name(await owner.acp(full, DISK, "get"))
    assert "passwd.qcow2" not in disks and "theirs.qcow2" not in disks
    assert "backing chain" in disks["evil.qcow2"].get("error", "")
    assert disks["mine.qcow2"].get("error") is None


async def test_permissions_are_per_action(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    reader = await new_user("reader")
    await grant(admin, full, reader.jid, "drives_get", "drives_getgolden")
    assert (await reader.acp(full, DISK, "get")) is not None
    await reader.acp(full, DISK, "getgolden")
    for action, attrs in (("create", {"name": "x", "size": "1", "unit": "M"}), ("setgolden", {"name": "x", "golden": "y"}),
                          ("getiso", {}), ("resize", {"name": "x", "size": "1G"})):
        with pytest.raises(AcpError) as info:
            await reader.acp(full, DISK, action, attrs)
        assert info.value.is_permission_error, action
    # chat works with the same declaration
    await grant(admin, full, reader.jid, "message")
    text = await reader.chat(jid, "disks")
    assert "No disks" in text


async def test_iso_from_the_library_can_be_attached_and_booted(agent, admin, stack):
    """getiso lists the ISO library; a cdrom from it passes the definition policy, one elsewhere does not."""
    library = stack.storage_dir.parent / "iso"
    library.mkdir(exist_ok=True)
    iso = library / f"{unique_name('install')}.iso"
    iso.write_bytes(b"\0" * 2048 * 16)
    jid = await alloc(admin, agent.full_jid, unique_name("iso"))
    full = vm_full(jid, agent.jid)
    await admin.wait_presence(from_vm(jid, "Off"), timeout=30)
    listed = await admin.acp(full, DISK, "getiso")
    assert any(el.get("path") == str(iso) for el in listed)

    def with_cdrom(desc, path):
        for el in desc.iter():
            el.tag = el.tag.split("}", 1)[-1]
        disk = ET.SubElement(desc.find("devices"), "disk", {"type": "file", "device": "cdrom"})
        ET.SubElement(disk, "driver", {"name": "qemu", "type": "raw"})
        ET.SubElement(disk, "source", {"file": path})
        ET.SubElement(disk, "target", {"dev": "sda", "bus": "sata"})
        ET.SubElement(disk, "readonly")
        return desc

    desc = (await admin.acp(full, CONTROL, "xmldesc"))[0]
    await admin.acp(full, DEFINITION, "define", children=[with_cdrom(desc, str(iso))])
    await admin.acp(full, CONTROL, "create")
    await wait_libvirt_state(stack, jid.split("@")[0], libvirt.VIR_DOMAIN_RUNNING)
    await admin.acp(full, CONTROL, "destroy")
    desc = (await admin.acp(full, CONTROL, "xmldesc"))[0]
    for el in desc.iter():
        el.tag = el.tag.split("}", 1)[-1]
    for disk in desc.findall("devices/disk"):
        desc.find("devices").remove(disk)
    with pytest.raises(AcpError) as err:
        await admin.acp(full, DEFINITION, "define", children=[with_cdrom(desc, "/etc/passwd")])
    assert err.value.code == -50 and "/etc/passwd" in err.value.text
    await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})
