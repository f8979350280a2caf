"""Clone, adopt (manage/unmanage) and surviving an agent SIGKILL."""
from __future__ import annotations

import asyncio
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import admin_client, second_agent
from xmpp_client import AcpError
from vm_helpers import CONTROL, DEFINITION, HV_NS, alloc, from_vm, libvirt_state, unique_name, vm_full, wait_libvirt_state, wait_vm_ready


def disk_definition(desc: ET.Element, disk_path: str) -> ET.Element:
    """The VM's definition (from xmldesc) plus one qcow2 disk."""
    for el in desc.iter():
        el.tag = el.tag.split("}", 1)[-1]
    devices = desc.find("devices")
    disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(disk, "source", {"file": disk_path})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    iface = ET.SubElement(devices, "interface", {"type": "network"})
    ET.SubElement(iface, "mac", {"address": "52:54:00:12:34:56"})
    ET.SubElement(iface, "source", {"network": "default"})
    return desc


def macs_of(stack, uuid: str) -> list[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        root = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()
    return [m.get("address") for m in root.iter("mac")]


async def test_clone_of_an_off_vm(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("src"))
    uuid = jid.split("@")[0]
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    disk = stack.storage_dir / uuid / "disk0.qcow2"
    # created through the agent: only disks whose format it recorded are accepted in a definition
    await admin.acp(full, "archipel:vm:disk", "create", {"name": "disk0", "size": "64", "unit": "M"})
    desc = (await admin.acp(full, CONTROL, "xmldesc"))[0]
    await admin.acp(full, DEFINITION, "define", children=[disk_definition(desc, str(disk))])
    clone_name = unique_name("clone")
    reply = await admin.acp(agent.full_jid, HV_NS, "clone", {"jid": jid, "name": clone_name})
    clone_jid = reply[0].get("jid")
    clone_uuid = clone_jid.split("@")[0]
    assert clone_uuid != uuid
    await admin.wait_presence(from_vm(clone_jid, "Off"), timeout=30)
    cloned_disk = stack.storage_dir / clone_uuid / "disk0.qcow2"
    assert cloned_disk.is_file() and cloned_disk.stat().st_size == disk.stat().st_size
    assert macs_of(stack, clone_uuid) and set(macs_of(stack, clone_uuid)).isdisjoint(macs_of(stack, uuid))
    conn = libvirt.open(stack.libvirt_uri)
    try:
        clone_xml = conn.lookupByUUIDString(clone_uuid).XMLDesc(0)
    finally:
        conn.close()
    assert str(cloned_disk) in clone_xml and str(disk) not in clone_xml and clone_name in clone_xml
    for j in (jid, clone_jid):
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": j})


async def test_clone_of_a_running_vm_is_refused(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name("busy"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    await admin.acp(full, CONTROL, "create")
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, "clone", {"jid": jid})
    assert err.value.code == -49 and "must be shut off" in err.value.text
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_manage_a_domain_created_outside(agent, admin, stack):
    uuid = str(uuidlib.uuid4())
    name = unique_name("virsh")
    xml = (f"<domain type='{stack.domain_type}'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
           "<memballoon model='none'/></devices></domain>")
    subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "define", "/dev/stdin"], input=xml, text=True, check=True,
                   capture_output=True)
    roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
    assert any(i.get("managed") == "False" and i.text == f"{uuid}@{stack.domain}" for i in roster)
    item = ET.Element("item", {"jid": f"{uuid}@{stack.domain}"})
    await admin.acp(agent.full_jid, HV_NS, "manage", children=[item])
    await admin.wait_presence(from_vm(f"{uuid}@{stack.domain}", "Off"), timeout=30)
    roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
    assert any(i.get("managed") == "True" and i.get("name") == name for i in roster)
    await admin.acp(agent.full_jid, HV_NS, "unmanage", children=[item])
    roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
    assert any(i.get("managed") == "False" and i.get("name") == name for i in roster)
    assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_SHUTOFF  # kept
    subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "undefine", uuid], check=True, capture_output=True)


async def test_setorginfo_renames_a_stopped_vm(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name())
    uuid = jid.split("@")[0]
    await wait_vm_ready(admin, vm_full(jid, agent.jid))
    new_name = unique_name("renamed")
    fields = [ET.Element("FN"), ET.Element("ORGUNIT")]
    fields[0].text, fields[1].text = new_name, "GEII"
    await admin.acp(agent.full_jid, HV_NS, "setorginfo", {"target": uuid}, children=fields)
    conn = libvirt.open(stack.libvirt_uri)
    try:
        assert conn.lookupByUUIDString(uuid).name() == new_name
    finally:
        conn.close()
    vcard = await admin.xmpp.plugin["xep_0054"].get_vcard(jid, timeout=10)
    assert vcard["vcard_temp"]["FN"] == new_name
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_sigkill_and_restart_keeps_running_vms_and_entities(stack):
    """A second agent of its own (so the session agent is not disturbed)."""
    handle = second_agent(stack, "hv-kill")
    process = handle.process
    process.start()
    admin = await admin_client(stack, "sigkill-test")
    try:
        await handle.wait_ready(admin)
        jid = await alloc(admin, handle.full_jid, unique_name("kill"))
        uuid = jid.split("@")[0]
        full = f"{jid}/hv-kill"
        await wait_vm_ready(admin, full)
        await admin.acp(full, CONTROL, "create")
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
        registrations = process.log_path.read_text().count("creating the account")
        process.kill()
        assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_RUNNING
        process.start()
        await handle.wait_ready(admin)
        await wait_vm_ready(admin, full)
        info = (await admin.acp(full, CONTROL, "info"))[0]
        assert info.get("state") == "1"  # still running, never touched
        assert process.log_path.read_text().count("creating the account") == registrations  # same account
        await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
    finally:
        await admin.close()
        process.stop()
