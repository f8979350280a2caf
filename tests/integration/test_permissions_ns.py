"""``archipel:permissions`` on the hypervisor, over the wire."""
from __future__ import annotations

import pytest

from agent_fixtures import PERMS_NS, grant, permission_item
from xmpp_client import AcpError


def names(query) -> set[str]:
    return {el.get("name") for el in query}


async def test_list_shows_catalogue_with_defaults(agent, admin):
    query = await admin.acp(agent.full_jid, PERMS_NS, "list")
    listed = {el.get("name"): el for el in query}
    for name in ("all", "presence", "message", "capabilities", "nodeinfo", "migrationinfo", "permission_setown"):
        assert name in listed
    assert listed["capabilities"].get("default") == "False"


async def test_set_then_get_and_revoke(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "nodeinfo", "ip")
    got = await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_type": "user", "permission_target": user.jid})
    assert names(got) == {"nodeinfo", "ip"}
    await grant(admin, agent.full_jid, user.jid, "ip", value=False)
    got = await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_target": user.jid})
    assert names(got) == {"nodeinfo"}


async def test_set_pushes_target_jid(agent, admin, new_user, stack):
    await admin.subscribe_events(stack.pubsub_domain, agent.jid)
    user = await new_user()
    while not admin.pubsub_events.empty():
        admin.pubsub_events.get_nowait()
    await grant(admin, agent.full_jid, user.jid, "ip")
    import asyncio
    msg = await asyncio.wait_for(admin.pubsub_events.get(), 10)
    push = msg["pubsub_event"]["items"]["item"]["payload"]
    assert push.tag == "{archipel:push:permissions}push"
    assert push.get("change") == user.jid


async def test_set_unknown_permission_is_refused(agent, admin, new_user):
    user = await new_user()
    with pytest.raises(AcpError) as err:
        await grant(admin, agent.full_jid, user.jid, "fly")
    assert err.value.code == -47 and "fly" in err.value.text


async def test_set_without_items_is_missing_argument(agent, admin):
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, PERMS_NS, "set")
    assert err.value.code == -45


async def test_getown_only_for_self(agent, admin, new_user):
    user = await new_user()
    other = await new_user()
    await grant(admin, agent.full_jid, user.jid, "presence", "ip")
    own = await user.acp(agent.full_jid, PERMS_NS, "getown", {"permission_target": user.jid})
    assert names(own) == {"presence", "ip"}
    with pytest.raises(AcpError) as err:
        await user.acp(agent.full_jid, PERMS_NS, "getown", {"permission_target": other.jid})
    assert err.value.is_permission_error


async def test_getown_is_checked_against_permission_getown(agent, admin, new_user):
    """Held by default by those who see the entity (presence); a stranger is refused; revocable."""
    stranger, viewer = await new_user("gostranger"), await new_user("goviewer")
    with pytest.raises(AcpError) as err:
        await stranger.acp(agent.full_jid, PERMS_NS, "getown")
    assert err.value.is_permission_error and "getown" in err.value.text
    await grant(admin, agent.full_jid, viewer.jid, "presence")
    assert names(await viewer.acp(agent.full_jid, PERMS_NS, "getown")) == {"presence"}
    await grant(admin, agent.full_jid, viewer.jid, "permission_getown", value=False)
    with pytest.raises(AcpError) as err:
        await viewer.acp(agent.full_jid, PERMS_NS, "getown")
    assert err.value.is_permission_error


async def test_stranger_cannot_list_get_or_set(agent, new_user):
    stranger = await new_user("stranger")
    for action, kwargs in (("list", {}), ("get", {"attrs": {"permission_target": stranger.jid}}),
                           ("set", {"children": [permission_item(stranger.jid, "all")]}),
                           ("setown", {"children": [permission_item(stranger.jid, "ip")]})):
        with pytest.raises(AcpError) as err:
            await stranger.acp(agent.full_jid, PERMS_NS, action, **kwargs)
        assert err.value.is_permission_error, action


async def test_setown_never_escalates(agent, admin, new_user):
    user = await new_user()
    other = await new_user()
    await grant(admin, agent.full_jid, user.jid, "permission_setown", "ip")
    for item, why in ((permission_item(user.jid, "all"), "all"),
                      (permission_item(user.jid, "capabilities"), "capabilities"),
                      (permission_item(other.jid, "ip"), "is not the sender")):
        with pytest.raises(AcpError) as err:
            await user.acp(agent.full_jid, PERMS_NS, "setown", children=[item])
        assert err.value.is_permission_error and why in err.value.text
    got = await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_target": user.jid})
    assert names(got) == {"permission_setown", "ip"}
    # giving up one's own permission is fine
    await user.acp(agent.full_jid, PERMS_NS, "setown", children=[permission_item(user.jid, "ip", False)])
    got = await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_target": user.jid})
    assert names(got) == {"permission_setown"}


async def test_all_grants_everything(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "all")
    query = await user.acp(agent.full_jid, "archipel:hypervisor:control", "capabilities")
    assert len(query) == 1


@pytest.mark.parametrize("action,permission", [("list", "permission_list"), ("get", "permission_get"),
                                               ("set", "permission_set")])
async def test_user_with_exactly_that_permission(agent, admin, new_user, action, permission):
    user = await new_user("perm")
    other = await new_user("target")
    await grant(admin, agent.full_jid, user.jid, permission)
    kwargs = {"list": {}, "get": {"attrs": {"permission_target": other.jid}},
              "set": {"children": [permission_item(other.jid, "ip")]}}[action]
    await user.acp(agent.full_jid, PERMS_NS, action, **kwargs)
    refused = next(a for a in ("list", "get", "set") if a != action)
    kwargs = {"list": {}, "get": {"attrs": {"permission_target": other.jid}},
              "set": {"children": [permission_item(other.jid, "ip")]}}[refused]
    with pytest.raises(AcpError) as err:
        await user.acp(agent.full_jid, PERMS_NS, refused, **kwargs)
    assert err.value.is_permission_error
