"""Federation as the seed's site runs it (issue 16 item 5; rig/federation.py, docs/FEDERATION.md).

People log in to the campus's ordinary XMPP server (``campus.test``, LDAP
passwords) and reach the Archipel server's entities (``archipel.test``) over
server-to-server connections with TLS (certificates checked, no dialback), the
servers finding each other by SRV records.  The agent maps ``<uid>@campus.test``
to the LDAP person ``uid`` because its config lists the domain
(``[LDAP] ldap_federated_domains``): a grant to an LDAP group reaches the
group's members on the campus server; everyone else stays a stranger.
"""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import pytest

from agent_fixtures import PERMS_NS, admin_client, grant, second_agent
from rig.federation import CAMPUS_DOMAIN, Federation
from vm_helpers import CONTROL, HV_NS, alloc, from_vm, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError, Client

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def federation(stack):
    fed = Federation(stack)
    fed.start()
    yield fed
    fed.stop()


@pytest.fixture(scope="module")
def fed_agent(stack, federation):
    hv = second_agent(stack, f"hv-fed-{uuid.uuid4().hex[:6]}",
                      {"LDAP": {"ldap_federated_domains": CAMPUS_DOMAIN}})
    hv.process.start()
    yield hv
    hv.process.stop()


async def on_campus(stack, federation, uid: str) -> Client:
    """An LDAP person logged in to the campus server (its own address, its own domain)."""
    person = stack.user(uid)
    return await Client(f"{uid}@{CAMPUS_DOMAIN}", person["password"], ca_file=stack.ca_file,
                        host=federation.campus.listen_ip, port=federation.campus.c2s_port, resource="campus").connect()


@pytest.fixture
async def fed_admin(stack, fed_agent):
    client = await admin_client(stack, f"fed-admin-{uuid.uuid4().hex[:4]}")
    await fed_agent.wait_ready(client, timeout=90)
    yield client
    await client.close()


async def test_a_campus_user_drives_a_vm_over_s2s(stack, federation, fed_agent, fed_admin):
    admin = fed_admin
    teacher = await on_campus(stack, federation, "teacher1")
    try:
        await grant(admin, fed_agent.full_jid, teacher.jid, "alloc")
        jid = await alloc(teacher, fed_agent.full_jid, unique_name("fed"))         # IQ over s2s
        full = vm_full(jid, fed_agent.jid)
        await teacher.wait_presence(from_vm(jid, "Off"), timeout=60)             # subscription + presence
        await teacher.subscribe_events(stack.pubsub_domain, jid)                 # pubsub.archipel.test
        await wait_vm_ready(teacher, full)
        await teacher.acp(full, CONTROL, "create")
        await teacher.wait_presence(from_vm(jid, "Running"), timeout=60)
        await teacher.next_push(f"/archipel/{jid}/events", "created", timeout=30)
        assert "Running" in await teacher.chat(full, "info")                     # chat over s2s
        plugin = teacher.xmpp.plugin["xep_0050"]                                 # ad-hoc over s2s
        done = await plugin.send_command(full, f"{CONTROL}#destroy", timeout=20)
        assert done["command"]["status"] == "completed", done
        await teacher.wait_presence(from_vm(jid, "Off"), timeout=60)
        await admin.acp(fed_agent.full_jid, HV_NS, "free", {"jid": jid})
    finally:
        await teacher.close()


async def test_an_ldap_group_grant_reaches_its_members_on_the_campus_server(stack, federation, fed_agent,
                                                                          fed_admin):
    admin = fed_admin
    student = await on_campus(stack, federation, "student1")      # member of the LDAP group students
    stranger = await on_campus(stack, federation, "stranger1")    # in no group
    item = ET.Element("permission", {"permission_type": "group", "permission_target": "students",
                                     "permission_name": "nodeinfo", "permission_value": "true"})
    try:
        with pytest.raises(AcpError) as before:
            await student.acp(fed_agent.full_jid, HV_NS, "nodeinfo")
        assert before.value.is_permission_error
        await admin.acp(fed_agent.full_jid, PERMS_NS, "set", children=[item])
        assert (await student.acp(fed_agent.full_jid, HV_NS, "nodeinfo"))[0].get("nrCPU")
        with pytest.raises(AcpError) as refused:
            await stranger.acp(fed_agent.full_jid, HV_NS, "nodeinfo")
        assert refused.value.is_permission_error
    finally:
        item.set("permission_value", "false")
        await admin.acp(fed_agent.full_jid, PERMS_NS, "set", children=[item])
        await student.close()
        await stranger.close()


async def test_without_the_mapping_a_campus_user_is_not_the_ldap_person(stack, federation, agent, admin):
    """The session agent does not list campus.test: a group grant there does not reach
    student1@campus.test (only student1@archipel.test)."""
    student = await on_campus(stack, federation, "student1")
    item = ET.Element("permission", {"permission_type": "group", "permission_target": "students",
                                     "permission_name": "nodeinfo", "permission_value": "true"})
    try:
        await admin.acp(agent.full_jid, PERMS_NS, "set", children=[item])
        with pytest.raises(AcpError) as refused:
            await student.acp(agent.full_jid, HV_NS, "nodeinfo")
        assert refused.value.is_permission_error
    finally:
        item.set("permission_value", "false")
        await admin.acp(agent.full_jid, PERMS_NS, "set", children=[item])
        await student.close()
