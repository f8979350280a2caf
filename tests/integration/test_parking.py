"""VM parking against the real stack: park on one hypervisor, unpark on another, same JID and rights.

The second hypervisor is a second agent (``hv-park``) on the same libvirtd and shared storage
folder as the session agent: a different hypervisor entity, not a different host.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import admin_client, grant, second_agent
from vm_helpers import CONTROL, HV_NS, alloc, libvirt_state, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

HV_PARK = "archipel:hypervisor:vmparking"
VM_PARK = "archipel:vm:vmparking"


def item(**attrs) -> ET.Element:
    return ET.Element("item", attrs)


async def parked_uuids(client, hv_full: str, **attrs) -> list[str]:
    return [v.get("uuid") for v in await client.acp(hv_full, HV_PARK, "list", attrs)]


async def test_park_then_unpark_on_another_hypervisor_keeps_jid_and_rights(agent, admin, new_user, stack):
    owner, viewer, stranger = await new_user("parkowner"), await new_user("parkviewer"), await new_user("parkstranger")
    await grant(admin, agent.full_jid, owner.jid, "alloc")
    name = unique_name("park")
    jid = await alloc(owner, agent.full_jid, name)
    uuid = jid.split("@")[0]
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(owner, full)
    await grant(admin, full, viewer.jid, "info")
    await grant(admin, full, stranger.jid, "vmparking_park", value=False)
    # a running VM is not parked; a stranger cannot park it
    await owner.acp(full, CONTROL, "create")
    with pytest.raises(AcpError) as err:
        await owner.acp(full, VM_PARK, "park")
    assert err.value.code == -49
    await owner.acp(full, CONTROL, "destroy")
    with pytest.raises(AcpError) as err:
        await stranger.acp(full, VM_PARK, "park")
    assert err.value.code == -1
    await owner.acp(full, VM_PARK, "park")
    await wait_libvirt_state(stack, uuid, None)  # undefined from libvirt
    assert (stack.storage_dir / uuid).is_dir()   # its folder stays on the shared storage
    record = stack.storage_dir / uuid / ".archipel-parked.json"
    assert record.stat().st_mode & 0o777 == 0o600
    # the registry is read from the shared storage; the reply carries no secret
    await grant(admin, agent.full_jid, owner.jid, "vmparking_list")
    reply = await owner.acp(agent.full_jid, HV_PARK, "list")
    mine = [v for v in reply if v.get("uuid") == uuid]
    assert len(mine) == 1 and mine[0].get("name") == name and mine[0].get("parker") == owner.jid
    assert mine[0].find("{*}domain") is not None
    assert "password" not in ET.tostring(reply, encoding="unicode")
    assert uuid in await parked_uuids(owner, agent.full_jid, filter=name[-8:])
    assert await parked_uuids(owner, agent.full_jid, filter="' OR 1=1 --") == []
    with pytest.raises(AcpError) as err:
        await owner.acp(agent.full_jid, HV_PARK, "list", {"page": "0"})
    assert err.value.code == -46
    # the entity is gone from this hypervisor (rostervm no longer lists it)
    roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
    assert jid not in [e.get("jid") for e in roster]

    other = second_agent(stack, "hv-park")
    other.process.start()
    hv_admin = await admin_client(stack, "park-test")
    try:
        await other.wait_ready(hv_admin)
        for user in (owner, stranger):
            await grant(hv_admin, other.full_jid, user.jid, "vmparking_unpark")
        with pytest.raises(AcpError) as err:  # the hypervisor's right alone does not reach someone else's VM
            await stranger.acp(other.full_jid, HV_PARK, "unpark", children=[item(identifier=uuid)])
        assert err.value.code == -1
        with pytest.raises(AcpError) as err:
            await owner.acp(other.full_jid, HV_PARK, "unpark", children=[item(identifier="not-a-uuid")])
        assert err.value.code == -46
        reply = await owner.acp(other.full_jid, HV_PARK, "unpark", children=[item(identifier=uuid, start="no")])
        assert reply[0].get("jid") == jid
        moved = f"{jid}/hv-park"
        await wait_vm_ready(owner, moved)
        assert libvirt_state(stack, uuid) == libvirt.VIR_DOMAIN_SHUTOFF
        assert not record.exists()
        # rights came back with it: the viewer reads, the stranger does not
        await viewer.acp(moved, CONTROL, "info")
        with pytest.raises(AcpError) as err:
            await stranger.acp(moved, CONTROL, "info")
        assert err.value.code == -1
        await owner.acp(moved, CONTROL, "create")
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
        with pytest.raises(AcpError) as err:  # unparked once only
            await owner.acp(other.full_jid, HV_PARK, "unpark", children=[item(identifier=uuid)])
        assert err.value.code == -47
        await owner.acp(moved, CONTROL, "destroy")
        await owner.acp(moved, CONTROL, "free")
    finally:
        other.process.stop()
        await hv_admin.close()


async def test_updatexml_changes_a_parked_definition_through_the_policy(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("parkx"))
    uuid = jid.split("@")[0]
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    await admin.acp(agent.full_jid, HV_PARK, "park", children=[item(uuid=uuid)])
    await wait_libvirt_state(stack, uuid, None)
    (vm,) = [v for v in await admin.acp(agent.full_jid, HV_PARK, "list") if v.get("uuid") == uuid]
    domain = vm.find("{*}domain")
    for el in domain.iter():
        el.tag = el.tag.split("}", 1)[-1]
    domain.find("memory").text = "262144"
    domain.find("memory").set("unit", "KiB")
    cur = domain.find("currentMemory")
    if cur is not None:
        domain.remove(cur)
    changed = item(identifier=uuid)
    changed.append(domain)
    await admin.acp(agent.full_jid, HV_PARK, "updatexml", children=[changed])
    hostile = item(identifier=uuid)
    bad = ET.fromstring(ET.tostring(domain))
    devices = bad.find("devices")
    ET.SubElement(ET.SubElement(devices, "hostdev", {"mode": "subsystem", "type": "pci"}), "source")
    hostile.append(bad)
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_PARK, "updatexml", children=[hostile])
    assert err.value.code in (-46, -50)
    await admin.acp(agent.full_jid, HV_PARK, "unpark", children=[item(identifier=uuid)])
    await wait_vm_ready(admin, full)
    conn = libvirt.open(stack.libvirt_uri)
    try:
        assert conn.lookupByUUIDString(uuid).maxMemory() == 262144
    finally:
        conn.close()
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_delete_of_a_parked_vm_removes_its_account_and_trashes_its_folder(agent, admin, new_user, stack):
    owner, stranger = await new_user("delowner"), await new_user("delstranger")
    await grant(admin, agent.full_jid, owner.jid, "alloc")
    jid = await alloc(owner, agent.full_jid, unique_name("parkdel"))
    uuid = jid.split("@")[0]
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(owner, full)
    await owner.acp(full, VM_PARK, "park")
    await wait_libvirt_state(stack, uuid, None)
    assert stack.ejabberd_api("check_account", user=uuid, host=stack.domain) == 0  # kept while parked
    for user in (owner, stranger):
        await grant(admin, agent.full_jid, user.jid, "vmparking_delete")
    with pytest.raises(AcpError) as err:
        await stranger.acp(agent.full_jid, HV_PARK, "delete", children=[item(identifier=uuid)])
    assert err.value.code == -1
    await owner.acp(agent.full_jid, HV_PARK, "delete", children=[item(identifier=uuid)])
    assert stack.ejabberd_api("check_account", user=uuid, host=stack.domain) != 0
    assert not (stack.storage_dir / uuid).exists()
    trashed = [p for p in (stack.storage_dir / ".trash").iterdir() if p.name.startswith(uuid)]
    assert len(trashed) == 1 and not (trashed[0] / ".archipel-parked.json").exists()
    assert uuid not in await parked_uuids(admin, agent.full_jid)
    with pytest.raises(AcpError) as err:
        await owner.acp(agent.full_jid, HV_PARK, "delete", children=[item(identifier=uuid)])
    assert err.value.code == -47
