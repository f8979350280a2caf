"""``archipel:permissions getown effective=yes``: every permission the sender holds
on an entity, through groups, roles and admin rights too (what a client such as
web/ may enable), where plain ``getown`` lists only the sender's own rows.
"""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import pytest

from agent_fixtures import PERMS_NS, client_for, grant
from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError


def names(query) -> set[str]:
    return {el.get("name") for el in query}


async def test_effective_includes_group_roles_and_admin_rights(agent, admin, stack):
    vm_jid = await alloc(admin, agent.full_jid, unique_name("eff"))
    vm = vm_full(vm_jid, agent.jid)
    await wait_vm_ready(admin, vm)
    role = f"starter-{uuid.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role, "description": "start only"},
                    children=[ET.Element("permission", {"name": "create"})])
    teacher = await client_for(stack, stack.user("teacher1")["jid"], stack.user("teacher1")["password"],
                               "effective").connect()
    try:
        await grant(admin, vm, teacher.jid, "presence")
        await admin.acp(vm, PERMS_NS, "set", children=[ET.Element("permission", {
            "permission_type": "role", "permission_target": "teachers", "permission_name": role,
            "permission_value": "true"})])
        explicit = names(await teacher.acp(vm, PERMS_NS, "getown"))
        assert explicit == {"presence"}  # the role through the group is not a row of theirs
        held = names(await teacher.acp(vm, PERMS_NS, "getown", {"effective": "yes"}))
        assert {"presence", "create"} <= held
        assert "destroy" not in held and "all" not in held
        mine = names(await admin.acp(vm, PERMS_NS, "getown", {"effective": "yes"}))
        assert {"create", "destroy", "define", "permission_set"} <= mine  # the admin holds everything
    finally:
        await teacher.close()
        await admin.acp(agent.full_jid, PERMS_NS, "delrole", {"name": role})


async def test_effective_bad_inputs_are_refused(agent, admin, new_user):
    user = await new_user("eff")
    await grant(admin, agent.full_jid, user.jid, "presence")
    with pytest.raises(AcpError) as err:
        await user.acp(agent.full_jid, PERMS_NS, "getown", {"effective": "maybe"})
    assert err.value.code == -46 and "effective" in err.value.text
    with pytest.raises(AcpError) as err:
        await user.acp(agent.full_jid, PERMS_NS, "getown", {"effective": "yes", "permission_type": "role"})
    assert err.value.code == -46 and "permission_type=user" in err.value.text
    other = await new_user("eff")
    with pytest.raises(AcpError) as err:
        await user.acp(agent.full_jid, PERMS_NS, "getown", {"effective": "yes", "permission_target": other.jid})
    assert err.value.is_permission_error
    assert names(await user.acp(agent.full_jid, PERMS_NS, "getown", {"effective": "no"})) == {"presence"}
