"""Parking across hosts: park on hv-1, unpark on hv-2 of the multi-hypervisor rig
(rig/hypervisors.py: a libvirtd per namespace, one shared storage), same JID and rights."""
from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import admin_client, grant
from hypervisor_fixtures import running_agents
from vm_helpers import CONTROL, alloc, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

HV_PARK = "archipel:hypervisor:vmparking"
VM_PARK = "archipel:vm:vmparking"


@pytest.fixture(scope="module")
def hypervisors(stack):
    members = stack.start_hypervisors(2)
    yield members
    stack.hypervisors.stop()


@pytest_asyncio.fixture(scope="module")
async def hv_admin(stack):
    client = await admin_client(stack, "park-multi-hv")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module")
async def hv_agents(stack, hypervisors, hv_admin):
    async with running_agents(stack, hypervisors, hv_admin) as agents:
        yield agents



def _state(uri: str, vm_uuid: str):
    conn = libvirt.open(uri)
    try:
        return conn.lookupByUUIDString(vm_uuid).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


async def test_park_on_one_host_and_unpark_on_another(hypervisors, hv_agents, hv_admin, new_user):
    hv_a, hv_b = hypervisors
    a, b = hv_agents
    owner, viewer, stranger = await new_user("mhpark"), await new_user("mhview"), await new_user("mhstranger")
    await grant(hv_admin, a.full_jid, owner.jid, "alloc")
    vm_jid = await alloc(owner, a.full_jid, f"mhpark-{uuid.uuid4().hex[:6]}")
    vm_uuid = vm_jid.split("@")[0]
    on_a, on_b = f"{vm_jid}/{hv_a.name}", f"{vm_jid}/{hv_b.name}"
    await wait_vm_ready(owner, on_a)
    await grant(hv_admin, on_a, viewer.jid, "info")
    await owner.acp(on_a, VM_PARK, "park")
    await wait_libvirt_state(hv_a, vm_uuid, None)

    # hv-2 lists it (the registry is the shared storage) and brings it back, started
    for user in (owner, stranger):
        await grant(hv_admin, b.full_jid, user.jid, "vmparking_list", "vmparking_unpark")
    assert vm_uuid in [v.get("uuid") for v in await owner.acp(b.full_jid, HV_PARK, "list")]
    with pytest.raises(AcpError) as err:
        await stranger.acp(b.full_jid, HV_PARK, "unpark", children=[ET.Element("item", {"identifier": vm_uuid})])
    assert err.value.code == -1
    reply = await owner.acp(b.full_jid, HV_PARK, "unpark",
                            children=[ET.Element("item", {"identifier": vm_uuid, "start": "yes"})])
    assert reply[0].get("jid") == vm_jid
    await wait_libvirt_state(hv_b, vm_uuid, libvirt.VIR_DOMAIN_RUNNING)
    assert await asyncio.to_thread(_state, hv_a.libvirt_uri, vm_uuid) is None
    await wait_vm_ready(viewer, on_b)  # the viewer's right came along
    with pytest.raises(AcpError) as err:
        await stranger.acp(on_b, CONTROL, "info")
    assert err.value.code == -1
    await owner.acp(on_b, CONTROL, "destroy")
    await owner.acp(on_b, CONTROL, "free")
