"""Disk formats are pinned and chains confined, at definition time and at start (issue 10, item 1).

The hostile bytes are written into a disk the agent created as raw, as a guest
would write them (it owns the content of its raw disk): a qcow2 header naming a
host file as its backing file, a VMDK descriptor with a FLAT extent on a host file.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt

from test_storage_disks import DISK, define_with_disk, domain_disk_sources, new_vm, next_push, refused
from vm_helpers import CONTROL, DEFINITION, HV_NS, from_vm, libvirt_state, unique_name, vm_full

RECORDS = ".archipel-disks.json"


def records(folder) -> dict:
    return json.loads((folder / RECORDS).read_text())["disks"]


def hostile_qcow2_header(tmp_path, backing: str) -> bytes:
    """The first bytes of a qcow2 image whose header names ``backing`` (raw)."""
    evil = tmp_path / f"evil-{uuidlib.uuid4().hex[:6]}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", str(evil), "16M"],
                   check=True, capture_output=True)
    data = evil.read_bytes()
    evil.unlink()
    return data


def guest_writes(path, data: bytes) -> None:
    """What a guest can do to its own raw disk: write bytes from offset 0."""
    with open(path, "r+b") as f:
        f.write(data)


def set_disk_type_in_libvirt(stack, uuid: str, fmt: str) -> None:
    """Change a defined disk's driver type behind the agent (a definition made before this check existed)."""
    conn = libvirt.open(stack.libvirt_uri)
    try:
        root = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        root.find("devices/disk/driver").set("type", fmt)
        conn.defineXML(ET.tostring(root, encoding="unicode"))
    finally:
        conn.close()


def disk_types(stack, uuid: str) -> list[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        root = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()
    return [d.get("type") for d in root.findall("devices/disk/driver")]


def domain_names(stack) -> set[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return {d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


async def test_formats_are_recorded_private_and_follow_the_disk(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    await owner.acp(full, DISK, "create", {"name": "a", "size": "16", "unit": "M", "format": "raw"})
    await owner.acp(full, DISK, "create", {"name": "b", "size": "16", "unit": "M"})
    assert records(folder) == {"a.raw": "raw", "b.qcow2": "qcow2"}
    assert stat.S_IMODE(os.stat(folder / RECORDS).st_mode) == 0o600
    # Archipel's client: rename with path + newname
    renamed = (await owner.acp(full, DISK, "rename", {"path": str(folder / "a.raw"), "newname": "data"}))[0]
    assert renamed.get("name") == "data.raw" and (folder / "data.raw").is_file() and not (folder / "a.raw").exists()
    await next_push(owner, jid, "renamed")
    assert records(folder) == {"data.raw": "raw", "b.qcow2": "qcow2"}
    # path is confined like name; a missing disk argument is named
    other, ojid, ouuid, ofull, ofolder = await new_vm(agent, admin, new_user, stack, "victim")
    await other.acp(ofull, DISK, "create", {"name": "secret", "size": "16", "unit": "M"})
    await refused(owner.acp(full, DISK, "rename", {"path": str(ofolder / "secret.qcow2"), "newname": "mine"}),
                  "outside this vm's folder")
    await refused(owner.acp(full, DISK, "rename", {"newname": "x"}), "name", "path")
    assert (ofolder / "secret.qcow2").is_file() and not (folder / "mine.qcow2").exists()
    # a suffix claiming another format is refused (a raw '.vmdk' is read as VMDK by anything that probes)
    await refused(owner.acp(full, DISK, "rename", {"name": "data.raw", "newname": "data.vmdk"}), "suffix")
    await refused(owner.acp(full, DISK, "rename", {"name": "data.raw", "newname": "data.qcow2"}), "suffix")
    assert (folder / "data.raw").is_file() and records(folder)["data.raw"] == "raw"
    # convert records the new format and forgets the old file
    await owner.acp(full, DISK, "convert", {"name": "data.raw", "format": "qcow2"})
    await next_push(owner, jid, "converted")
    assert records(folder) == {"data.qcow2": "qcow2", "b.qcow2": "qcow2"}
    await owner.acp(full, DISK, "delete", {"name": "data.qcow2"})
    assert records(folder) == {"b.qcow2": "qcow2"}


async def test_qcow2_header_in_a_raw_disk_is_refused_at_define_and_start(agent, admin, new_user, stack, tmp_path):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    await owner.acp(full, DISK, "create", {"name": "root", "size": "16", "unit": "M", "format": "raw"})
    disk = folder / "root.raw"
    guest_writes(disk, hostile_qcow2_header(tmp_path, "/etc/passwd"))
    before = domain_disk_sources(stack, uuid)
    # define: the raw disk declared as qcow2 is refused, naming the disk and both formats
    err = await refused(define_with_disk(owner, full, disk, fmt="qcow2"), "root.raw", "qcow2", "recorded raw", code=-50)
    assert "vda" in err.text
    assert domain_disk_sources(stack, uuid) == before
    # no format at all is refused too (libvirt would probe it)
    desc = (await owner.acp(full, CONTROL, "xmldesc"))[0]
    for el in desc.iter():
        el.tag = el.tag.split("}", 1)[-1]
    d = ET.SubElement(desc.find("devices"), "disk", {"type": "file", "device": "disk"})
    ET.SubElement(d, "source", {"file": str(disk)})
    ET.SubElement(d, "target", {"dev": "vdb", "bus": "virtio"})
    await refused(owner.acp(full, DEFINITION, "define", children=[desc]), "explicitly", "probed", code=-50)
    assert domain_disk_sources(stack, uuid) == before
    # as raw it is what it is: bytes (accepted)
    await define_with_disk(owner, full, disk, fmt="raw")
    assert disk_types(stack, uuid) == ["raw"]

    # create (start): a definition changed behind the agent is checked again and refused
    set_disk_type_in_libvirt(stack, uuid, "qcow2")
    await refused(owner.acp(full, CONTROL, "create"), "root.raw", "recorded raw", code=-50)
    assert libvirt_state(stack, uuid) == libvirt.VIR_DOMAIN_SHUTOFF

    # a qcow2 disk the agent created, whose header is rewritten after definition: refused at start
    await owner.acp(full, DISK, "create", {"name": "sys", "size": "16", "unit": "M", "format": "qcow2"})
    await define_with_disk(owner, full, folder / "sys.qcow2", fmt="qcow2")
    guest_writes(folder / "sys.qcow2", hostile_qcow2_header(tmp_path, "/etc/passwd"))
    await refused(owner.acp(full, CONTROL, "create"), "sys.qcow2", "/etc/passwd", "outside", code=-50)
    assert libvirt_state(stack, uuid) == libvirt.VIR_DOMAIN_SHUTOFF


async def test_another_vms_disk_as_backing_is_refused(agent, admin, new_user, stack, tmp_path):
    other, ojid, ouuid, ofull, ofolder = await new_vm(agent, admin, new_user, stack, "victim")
    await other.acp(ofull, DISK, "create", {"name": "secret", "size": "16", "unit": "M", "format": "raw"})
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    await owner.acp(full, DISK, "create", {"name": "sys", "size": "16", "unit": "M", "format": "qcow2"})
    guest_writes(folder / "sys.qcow2", hostile_qcow2_header(tmp_path, str(ofolder / "secret.raw")))
    await refused(define_with_disk(owner, full, folder / "sys.qcow2", fmt="qcow2"),
                  "sys.qcow2", str(ofolder / "secret.raw"), code=-50)
    assert domain_disk_sources(stack, uuid) == []
    # the disk commands use the same check
    await refused(owner.acp(full, DISK, "resize", {"name": "sys.qcow2", "size": "32M"}), "backing chain", "secret.raw")
    await refused(owner.acp(full, DISK, "convert", {"name": "sys.qcow2", "format": "raw"}), "backing chain")
    assert not (folder / "sys.raw").exists()


async def test_library_images_are_raw_read_only(agent, admin, new_user, stack, tmp_path):
    """A cdrom or read-only disk from the ISO library: raw, explicit, read-only; a qcow2 with a
    backing file is not an ISO.  (``alloc`` with a ``<domain>`` runs the same check, but the
    definition policy refuses any such definition first: its uuid cannot match the new VM's.)"""
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    library = stack.storage_dir.parent / "iso"
    library.mkdir(exist_ok=True)
    iso = library / f"{unique_name('fake')}.iso"
    iso.write_bytes(hostile_qcow2_header(tmp_path, "/etc/passwd"))
    try:
        for driver, device, readonly, fragment in ((None, "cdrom", True, "explicitly"),
                                                   ("qcow2", "cdrom", True, "a cdrom is attached as raw"),
                                                   ("qcow2", "disk", True, "raw and read-only")):
            desc = (await owner.acp(full, CONTROL, "xmldesc"))[0]
            for el in desc.iter():
                el.tag = el.tag.split("}", 1)[-1]
            d = ET.SubElement(desc.find("devices"), "disk", {"type": "file", "device": device})
            if driver:
                ET.SubElement(d, "driver", {"name": "qemu", "type": driver})
            ET.SubElement(d, "source", {"file": str(iso)})
            ET.SubElement(d, "target", {"dev": "sda", "bus": "sata"})
            if readonly:
                ET.SubElement(d, "readonly")
            await refused(owner.acp(full, DEFINITION, "define", children=[desc]), iso.name, fragment, code=-50)
            assert domain_disk_sources(stack, uuid) == []
    finally:
        iso.unlink()


async def test_clone_of_a_hostile_definition_is_refused(agent, admin, stack, tmp_path):
    from vm_helpers import alloc, wait_vm_ready
    jid = await alloc(admin, agent.full_jid, unique_name("src"))
    uuid = jid.split("@")[0]
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    folder = stack.storage_dir / uuid
    await admin.acp(full, DISK, "create", {"name": "root", "size": "16", "unit": "M", "format": "raw"})
    await define_with_disk(admin, full, folder / "root.raw", fmt="raw")
    guest_writes(folder / "root.raw", hostile_qcow2_header(tmp_path, "/etc/passwd"))
    set_disk_type_in_libvirt(stack, uuid, "qcow2")  # defined before the check existed
    clone_name = unique_name("clone")
    await refused(admin.acp(agent.full_jid, HV_NS, "clone", {"jid": jid, "name": clone_name}),
                  "root.raw", "recorded raw", code=-50)
    assert clone_name not in domain_names(stack)
    # put right, the clone works and its copy keeps the source's records
    set_disk_type_in_libvirt(stack, uuid, "raw")
    reply = await admin.acp(agent.full_jid, HV_NS, "clone", {"jid": jid, "name": unique_name("clone")})
    clone_uuid = reply[0].get("jid").split("@")[0]
    assert records(stack.storage_dir / clone_uuid) == {"root.raw": "raw"}
    await admin.wait_presence(from_vm(reply[0].get("jid"), "Off"), timeout=30)
    for j in (jid, reply[0].get("jid")):
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": j})


async def test_vmdk_descriptor_never_reads_the_host_file(agent, admin, new_user, stack):
    owner, jid, uuid, full, folder = await new_vm(agent, admin, new_user, stack)
    secret_value = f"HOST-SECRET-{uuidlib.uuid4().hex}".encode()
    host_file = stack.state_dir / f"host-secret-{uuidlib.uuid4().hex[:8]}"
    host_file.write_bytes(secret_value.ljust(4096, b"."))
    descriptor = ("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n"
                  f"RW 8 FLAT \"{host_file}\" 0\n\nddb.virtualHWVersion = \"4\"\n").encode()
    try:
        # 1. written by the guest into its raw disk: renaming it .vmdk is refused, converting reads it as raw
        await owner.acp(full, DISK, "create", {"name": "guest", "size": "1", "unit": "M", "format": "raw"})
        guest_writes(folder / "guest.raw", descriptor)
        await refused(owner.acp(full, DISK, "rename", {"name": "guest.raw", "newname": "guest.vmdk"}), "suffix")
        assert not (folder / "guest.vmdk").exists()
        await owner.acp(full, DISK, "convert", {"name": "guest.raw", "format": "qcow2"})
        await next_push(owner, jid, "converted")
        converted = (folder / "guest.qcow2").read_bytes()
        assert secret_value not in converted and b"Disk DescriptorFile" in converted
        # 2. a descriptor file the agent never recorded (planted by hand as .vmdk): refused, nothing written
        (folder / "planted.vmdk").write_bytes(descriptor)
        await refused(owner.acp(full, DISK, "convert", {"name": "planted.vmdk", "format": "qcow2"}),
                      "planted.vmdk", "no format recorded")
        await refused(owner.acp(full, DISK, "setgolden", {"name": "planted.vmdk", "golden": "g"}), "no format recorded")
        assert not (folder / "planted.qcow2").exists()
        listed = {d.get("name"): d for d in (await owner.acp(full, DISK, "get")).findall(f"{{{DISK}}}disk")}
        assert "no format recorded" in listed["planted.vmdk"].get("error", "")
        for f in folder.iterdir():
            assert secret_value not in f.read_bytes(), f
    finally:
        host_file.unlink()


async def test_manage_records_the_admins_formats_after_the_chain_check(agent, admin, stack, tmp_path):
    def define(uuid: str, disk, fmt: str) -> str:
        name = unique_name("adopt")
        xml = (f"<domain type='{stack.domain_type}'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory>"
               "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
               f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{disk}'/>"
               "<target dev='vda' bus='virtio'/></disk><memballoon model='none'/></devices></domain>")
        subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "define", "/dev/stdin"], input=xml, text=True,
                       check=True, capture_output=True)
        return name

    good, bad = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    for u in (good, bad):
        (stack.storage_dir / u).mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stack.storage_dir / good / "d.qcow2"), "16M"], check=True)
    (stack.storage_dir / bad / "d.qcow2").write_bytes(hostile_qcow2_header(tmp_path, "/etc/passwd"))
    define(good, stack.storage_dir / good / "d.qcow2", "qcow2")
    define(bad, stack.storage_dir / bad / "d.qcow2", "qcow2")
    try:
        await refused(admin.acp(agent.full_jid, HV_NS, "manage", children=[ET.Element("item", {"jid": f"{bad}@{stack.domain}"})]),
                      "d.qcow2", "/etc/passwd", code=-50)
        assert not (stack.storage_dir / bad / RECORDS).exists()
        roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
        assert any(i.get("managed") == "False" and i.text == f"{bad}@{stack.domain}" for i in roster)
        item = ET.Element("item", {"jid": f"{good}@{stack.domain}"})
        await admin.acp(agent.full_jid, HV_NS, "manage", children=[item])
        assert records(stack.storage_dir / good) == {"d.qcow2": "qcow2"}
        await admin.acp(agent.full_jid, HV_NS, "unmanage", children=[item])
    finally:
        for u in (good, bad):
            subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "undefine", u], capture_output=True)
