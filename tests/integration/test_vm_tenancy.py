"""Tenancy of the hypervisor's VM actions: the hypervisor's right is not enough.

Two students hold the hypervisor's alloc/clone/free/unmanage/setorginfo
through a role given to their LDAP group (as a lab would set it up).  Each
owns their own VM; neither may clone, free, rename or unmanage the other's
(``-1``, nothing changed: no new domain, no new folder), and each may clone
their own.
"""
from __future__ import annotations

import asyncio
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import PERMS_NS, client_for
from vm_helpers import CONTROL, HV_NS, alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError

ROLE_ACTIONS = ("alloc", "clone", "free", "unmanage", "setorginfo", "rostervm", "message")


def role_item(target: str, role: str, value: bool = True) -> ET.Element:
    return ET.Element("permission", {"permission_type": "role", "permission_target": target,
                                     "permission_name": role, "permission_value": "true" if value else "false"})


@pytest_asyncio.fixture
async def students(stack, agent, admin):
    """student1 and student2 (LDAP group ``students``), holding ROLE_ACTIONS on the hypervisor by a role."""
    role = f"tenant-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role, "description": "lab"},
                    children=[ET.Element("permission", {"name": p}) for p in ROLE_ACTIONS])
    await admin.acp(agent.full_jid, PERMS_NS, "set", children=[role_item("students", role)])
    clients = []
    for uid in ("student1", "student2"):
        user = stack.user(uid)
        clients.append(await client_for(stack, user["jid"], user["password"], f"tenancy-{uid}").connect())
    try:
        yield clients
    finally:
        for client in clients:
            await client.close()
        await admin.acp(agent.full_jid, PERMS_NS, "set", children=[role_item("students", role, False)])
        await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": role})


def domain_uuids(stack) -> set[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return {d.UUIDString().lower() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def domain_name(stack, uuid: str) -> str:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return conn.lookupByUUIDString(uuid).name()
    finally:
        conn.close()


def folders(stack) -> set[str]:
    return {p.name for p in stack.storage_dir.iterdir()}


async def denied(coro) -> AcpError:
    with pytest.raises(AcpError) as err:
        await coro
    assert err.value.is_permission_error and err.value.code == -1, err.value
    return err.value


async def test_a_student_cannot_act_on_another_students_vm(agent, admin, stack, students):
    alice, bob = students
    hv = agent.full_jid
    name_a = unique_name("alice")
    vm_a = await alloc(alice, hv, name_a)
    vm_b = await alloc(bob, hv, unique_name("bob"))
    uuid_a = vm_a.split("@")[0]
    await wait_vm_ready(alice, vm_full(vm_a, agent.jid))
    try:
        domains, dirs = await asyncio.to_thread(domain_uuids, stack), await asyncio.to_thread(folders, stack)
        await denied(bob.acp(hv, HV_NS, "clone", {"jid": vm_a, "name": unique_name("stolen")}))
        await denied(bob.acp(hv, HV_NS, "free", {"jid": vm_a}))
        fn = ET.Element("FN")
        fn.text = unique_name("renamed")
        await denied(bob.acp(hv, HV_NS, "setorginfo", {"target": uuid_a}, children=[fn]))
        await denied(bob.acp(hv, HV_NS, "unmanage", children=[ET.Element("item", {"jid": vm_a})]))
        # one's own VM and another's in one request: refused as a whole, one's own stays managed
        await denied(bob.acp(hv, HV_NS, "unmanage", children=[ET.Element("item", {"jid": vm_b}),
                                                                ET.Element("item", {"jid": vm_a})]))
        # a VM that does not exist: the same refusal (no existence oracle)
        await denied(bob.acp(hv, HV_NS, "free", {"jid": f"{uuidlib.uuid4()}@{stack.domain}"}))
        # chat names the VM by its name: the same check
        assert (await bob.chat(hv, f"free {name_a}")).startswith("Sorry:")
        assert (await bob.chat(hv, f"clone {name_a}")).startswith("Sorry:")
        # nothing changed
        assert await asyncio.to_thread(domain_uuids, stack) == domains
        assert await asyncio.to_thread(folders, stack) == dirs
        assert await asyncio.to_thread(domain_name, stack, uuid_a) == name_a
        roster = await admin.acp(hv, HV_NS, "rostervm")
        managed = {i.text.split("/")[0].split("@")[0] for i in roster if i.get("managed") == "True"}
        assert {uuid_a, vm_b.split("@")[0]} <= managed
        await alice.acp(vm_full(vm_a, agent.jid), CONTROL, "info")  # still served
        # the owner may clone their own VM
        reply = await alice.acp(hv, HV_NS, "clone", {"jid": vm_a, "name": unique_name("mine")})
        clone = reply[0].get("jid")
        assert clone.split("@")[0] in await asyncio.to_thread(domain_uuids, stack)
        await alice.acp(hv, HV_NS, "free", {"jid": clone})
    finally:
        await alice.acp(hv, HV_NS, "free", {"jid": vm_a})
        await bob.acp(hv, HV_NS, "free", {"jid": vm_b})


async def test_the_vm_right_alone_is_not_enough(agent, admin, new_user):
    """A user granted ``free`` on a VM but not the hypervisor's ``free`` cannot free it through the hypervisor."""
    user = await new_user("vmonly")
    jid = await alloc(admin, agent.full_jid, unique_name("vmonly"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    try:
        await admin.acp(full, PERMS_NS, "set", children=[ET.Element("permission", {
            "permission_type": "user", "permission_target": user.jid, "permission_name": "free",
            "permission_value": "true"})])
        await denied(user.acp(agent.full_jid, HV_NS, "free", {"jid": jid}))
        await admin.acp(full, CONTROL, "info")
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
