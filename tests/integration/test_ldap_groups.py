"""Grants to LDAP groups and roles, against the real slapd and ejabberd's LDAP auth.

The people here are the rig's LDAP users (student1, teacher1, stranger1), who
log in to ejabberd with their LDAP passwords (SASL PLAIN over STARTTLS); the
agent resolves their groups with ldap3.
"""
from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET

import pytest
import pytest_asyncio

from agent_fixtures import PERMS_NS, client_for
from xmpp_client import AcpError

HV_NS = "archipel:hypervisor:control"
ROLES_NODE = "/archipel/roles"


@pytest_asyncio.fixture(scope="module")
async def people(stack, agent):
    """student1, student2, teacher1 and stranger1, logged in with their LDAP passwords."""
    clients = {}
    for uid in ("student1", "student2", "teacher1", "stranger1"):
        user = stack.user(uid)
        clients[uid] = await client_for(stack, user["jid"], user["password"], f"ldap-{uid}").connect()
    yield clients
    for client in clients.values():
        await client.close()


def item(ptype: str, target: str, name: str, value: bool = True) -> ET.Element:
    return ET.Element("permission", {
        "permission_type": ptype, "permission_target": target,
        "permission_name": name, "permission_value": "true" if value else "false",
    })


async def set_items(admin, agent, *items: ET.Element) -> None:
    await admin.acp(agent.full_jid, PERMS_NS, "set", children=list(items))


async def setrole(admin, agent, name: str, *permissions: str, description: str = "") -> ET.Element:
    children = [ET.Element("permission", {"name": p}) for p in permissions]
    return await admin.acp(agent.full_jid, PERMS_NS, "setrole",
                           {"name": name, "description": description}, children=children)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def capabilities(client, agent):
    return await client.acp(agent.full_jid, HV_NS, "capabilities")


async def test_student_gets_capabilities_through_the_students_role(agent, admin, people):
    student, stranger = people["student1"], people["stranger1"]
    with pytest.raises(AcpError) as err:
        await capabilities(student, agent)
    assert err.value.is_permission_error
    role = unique("student")
    await setrole(admin, agent, role, "capabilities", "permission_getown", description="Students")
    await set_items(admin, agent, item("role", "students", role))
    try:
        assert len(await capabilities(student, agent)) == 1
        assert len(await capabilities(people["student2"], agent)) == 1
        with pytest.raises(AcpError) as err:
            await capabilities(stranger, agent)
        assert err.value.is_permission_error
        with pytest.raises(AcpError) as err:  # the role grants nothing more
            await student.acp(agent.full_jid, HV_NS, "nodeinfo")
        assert err.value.is_permission_error
        got = await admin.acp(agent.full_jid, PERMS_NS, "get",
                              {"permission_type": "role", "permission_target": "students"})
        assert {el.get("name") for el in got} == {role}
        listed = await admin.acp(agent.full_jid, PERMS_NS, "list", {"permission_type": "role"})
        assert any(el.get("permission_target") == "students" and el.get("permission_name") == role
                   and el.get("permission_target_type") == "group" for el in listed)
    finally:
        await set_items(admin, agent, item("role", "students", role, False))
    with pytest.raises(AcpError) as err:
        await capabilities(student, agent)
    assert err.value.is_permission_error
    await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": role})


async def test_teacher_role(agent, admin, people):
    teacher, student = people["teacher1"], people["student1"]
    role = unique("teacher")
    await setrole(admin, agent, role, "capabilities", "nodeinfo", "permission_get")
    await set_items(admin, agent, item("role", "teachers", role))
    try:
        assert len(await teacher.acp(agent.full_jid, HV_NS, "nodeinfo")) >= 1
        assert len(await capabilities(teacher, agent)) == 1
        # A teacher may read who holds what (permission_get), a student may not.
        got = await teacher.acp(agent.full_jid, PERMS_NS, "get",
                                {"permission_type": "role", "permission_target": "teachers"})
        assert {el.get("name") for el in got} == {role}
        with pytest.raises(AcpError) as err:
            await student.acp(agent.full_jid, HV_NS, "nodeinfo")
        assert err.value.is_permission_error
        # Replacing the role changes what every teacher may do, at once.
        await setrole(admin, agent, role, "capabilities")
        with pytest.raises(AcpError) as err:
            await teacher.acp(agent.full_jid, HV_NS, "nodeinfo")
        assert err.value.is_permission_error
        # A role granted to one user (a JID target) instead of a group.
        await set_items(admin, agent, item("role", student.jid, role))
        assert len(await capabilities(student, agent)) == 1
        await set_items(admin, agent, item("user", student.jid, "presence"))  # getown: for those who see it
        own = await student.acp(agent.full_jid, PERMS_NS, "getown", {"permission_type": "role"})
        assert {el.get("name") for el in own} == {role}
    finally:
        await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": role})
    # Deleting the role removed its grants too.
    for client in (teacher, student):
        with pytest.raises(AcpError) as err:
            await capabilities(client, agent)
        assert err.value.is_permission_error


async def test_revoking_a_group_grant_takes_effect_without_restart(agent, admin, people):
    student = people["student1"]
    pid = agent.process.proc.pid
    await set_items(admin, agent, item("group", "students", "capabilities"))
    try:
        assert len(await capabilities(student, agent)) == 1
        got = await admin.acp(agent.full_jid, PERMS_NS, "get",
                              {"permission_type": "group", "permission_target": "Students"})
        assert {el.get("name") for el in got} == {"capabilities"}
    finally:
        await set_items(admin, agent, item("group", "students", "capabilities", False))
    with pytest.raises(AcpError) as err:  # the very next request, well within the LDAP cache TTL
        await capabilities(student, agent)
    assert err.value.is_permission_error
    assert agent.process.alive and agent.process.proc.pid == pid  # same process, no restart


async def test_group_and_role_grants_cannot_go_through_setown(agent, admin, people):
    student = people["student1"]
    await set_items(admin, agent, item("user", student.jid, "permission_setown"),
                    item("group", "students", "capabilities"))
    try:
        for bad in (item("group", "students", "nodeinfo"), item("role", student.jid, "student"),
                    item("user", student.jid, "capabilities")):  # held through the group only
            with pytest.raises(AcpError) as err:
                await student.acp(agent.full_jid, PERMS_NS, "setown", children=[bad])
            assert err.value.is_permission_error, bad.attrib
    finally:
        await set_items(admin, agent, item("user", student.jid, "permission_setown", False),
                        item("group", "students", "capabilities", False))


async def test_roles_are_validated(agent, admin, people):
    with pytest.raises(AcpError) as err:
        await setrole(admin, agent, unique("pilot"), "fly")
    assert err.value.code == -47 and "fly" in err.value.text
    with pytest.raises(AcpError) as err:
        await setrole(admin, agent, "*)(cn=*", "capabilities")
    assert err.value.code == -46
    with pytest.raises(AcpError) as err:
        await set_items(admin, agent, item("role", "students", unique("ghost")))
    assert err.value.code == -47
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": unique("ghost")})
    assert err.value.code == -47
    for action, attrs in (("roles", {}), ("setrole", {"name": "x"}), ("delrole", {"name": "x"})):
        with pytest.raises(AcpError) as err:
            await people["student1"].acp(agent.full_jid, PERMS_NS, action, attrs)
        assert err.value.is_permission_error, action


async def test_roles_are_listed_and_published_to_pubsub(agent, admin, stack):
    role = unique("operator")
    await setrole(admin, agent, role, "capabilities", "nodeinfo", description="Lab operators")
    try:
        listed = await admin.acp(agent.full_jid, PERMS_NS, "roles")
        mine = [el for el in listed if el.get("name") == role]
        assert len(mine) == 1 and mine[0].get("description") == "Lab operators"
        assert mine[0].get("creator") == admin.jid
        assert {p.get("permission_name") for p in mine[0]} == {"capabilities", "nodeinfo"}
        await admin.see(agent.jid)  # the roles node is read by those who see the hypervisor
        items = await admin.xmpp.plugin["xep_0060"].get_items(stack.pubsub_domain, ROLES_NODE, timeout=10)
        published = {i["id"]: i["payload"] for i in items["pubsub"]["items"]}
        assert role in published
        payload = published[role]
        assert payload.tag.split("}")[-1] == "role" and payload.get("name") == role
        assert {p.get("permission_name") for p in payload} == {"capabilities", "nodeinfo"}
    finally:
        await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": role})
    items = await admin.xmpp.plugin["xep_0060"].get_items(stack.pubsub_domain, ROLES_NODE, timeout=10)
    assert role not in {i["id"] for i in items["pubsub"]["items"]}


async def test_ldap_filter_injection_in_a_jid_is_harmless(agent, admin, stack):
    """Internal accounts whose node is an LDAP filter fragment (unescaped, it would match student1)."""
    await set_items(admin, agent, item("group", "students", "capabilities"))
    accounts = []
    try:
        for node in ("*)(uid=student1", "student1)(uid=*", "*"):
            password = "pw-" + uuid.uuid4().hex
            try:
                jid = stack.register_user(node, password, exist_ok=True)
            except Exception as exc:  # noqa: BLE001 - ejabberd may refuse the name
                pytest.fail(f"ejabberd refused the account {node!r}: {exc}")
            if jid.split("@")[0] != node:
                pytest.fail(f"ejabberd changed the account name {node!r} to {jid!r}")
            stack.unregister_user(jid)  # exist_ok: a previous run's account had another password
            stack.register_user(jid, password)
            client = await client_for(stack, jid, password, "inject").connect()
            accounts.append((jid, client))
            with pytest.raises(AcpError) as err:
                await capabilities(client, agent)
            assert err.value.is_permission_error, jid
    finally:
        await set_items(admin, agent, item("group", "students", "capabilities", False))
        for jid, client in accounts:
            await client.close()
            try:
                stack.unregister_user(jid)
            except Exception:  # noqa: BLE001
                pass


async def test_directory_resolve_against_the_real_slapd(stack):
    from archipelagent.config import load_config
    from archipelagent.directory import Directory
    from agent_fixtures import write_config

    lib = stack.state_dir / "directory-test"
    lib.mkdir(exist_ok=True)
    config = load_config(write_config(stack, lib))
    directory = Directory(config.ldap, config.domain)
    try:
        assert await directory.ping()
        student = await directory.resolve("Student1@archipel.test/laptop")
        assert student is not None and student.uid == "student1"
        assert student.dn == f"uid=student1,ou=people,{stack.ldap_base_dn}"
        assert student.groups == {"students"} and student.mail == "student1@archipel.test"
        assert (await directory.resolve("admin@archipel.test")).groups == {"admins"}
        assert (await directory.resolve("stranger1@archipel.test")).groups == frozenset()
        for hostile in ("*", "*)(uid=student1", "student1)(uid=*", "*)(|(uid=*",
                        "student1\\29", "stu*", "\\2a", "student1)(objectClass=*"):
            assert await directory.resolve(f"{hostile}@archipel.test") is None, hostile
        assert await directory.resolve("student1@elsewhere.test") is None
        assert await directory.resolve("nobody@archipel.test") is None
    finally:
        await directory.close()


async def test_ldap_down_refuses_students_but_admins_still_work(agent, admin, people, stack):
    student = people["student1"]
    role = unique("student")
    await setrole(admin, agent, role, "capabilities")
    await set_items(admin, agent, item("role", "students", role))
    try:
        assert len(await capabilities(student, agent)) == 1
        stack.stop_slapd()
        try:
            await asyncio.sleep(1.5)  # the agent's test config caches LDAP answers for 1 s
            with pytest.raises(AcpError) as err:
                await capabilities(student, agent)
            assert "LDAP is unreachable" in err.value.text
            assert err.value.code == -48 and not err.value.is_permission_error
            # chat says so too, instead of staying silent
            assert "LDAP is unreachable" in await student.chat(agent.full_jid, "capabilities")
            # The config's root admin does not need LDAP.
            assert len(await capabilities(admin, agent)) == 1
            await admin.acp(agent.full_jid, PERMS_NS, "roles")
        finally:
            stack.start_slapd()
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            try:
                assert len(await capabilities(student, agent)) == 1
                break
            except AcpError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": role})
