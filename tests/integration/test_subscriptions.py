"""archipel:subscription add/remove, and who may subscribe to an entity by themselves."""
from __future__ import annotations

import asyncio

import pytest

from agent_fixtures import PERMS_NS, grant
from xmpp_client import AcpError

SUB_NS = "archipel:subscription"


def presence_from(jid: str, ptype: str):
    return lambda p: p["from"].bare == jid and p["type"] == ptype


async def explicit(admin, agent, user: str) -> set[str]:
    got = await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_target": user})
    return {el.get("name") for el in got}


async def roster_has(agent_process, client, jid: str) -> bool:
    await client.xmpp.get_roster(timeout=10)
    return jid in client.xmpp.client_roster


async def test_add_then_remove_a_contact(agent, admin, new_user, stack):
    contact = await new_user("contact")
    await admin.subscribe_events(stack.pubsub_domain, agent.jid)
    await admin.acp(agent.full_jid, SUB_NS, "add", {"jid": contact.jid})
    # the hypervisor authorizes the contact and asks for its presence
    await contact.wait_presence(presence_from(agent.jid, "subscribed"), timeout=15)
    await contact.wait_presence(presence_from(agent.jid, "subscribe"), timeout=15)
    assert "presence" in await explicit(admin, agent, contact.jid)
    # the contact now sees the hypervisor online
    await contact.wait_presence(lambda p: p["from"].bare == agent.jid and p["type"] == "available", timeout=15)
    await admin.acp(agent.full_jid, SUB_NS, "remove", {"jid": contact.jid})
    await contact.wait_presence(presence_from(agent.jid, "unsubscribed"), timeout=15)
    assert "presence" not in await explicit(admin, agent, contact.jid)
    # the pushes say what changed
    seen = []
    while not {"added", "removed"} <= set(seen):
        msg = await asyncio.wait_for(admin.pubsub_events.get(), 10)
        payload = msg["pubsub_event"]["items"]["item"]["payload"]
        if payload is not None and payload.tag == "{archipel:push:subscription}push":
            seen.append(payload.get("change"))


async def test_subscription_commands_need_their_permission(agent, admin, new_user):
    stranger, other = await new_user("substranger"), await new_user("subother")
    for action in ("add", "remove"):
        with pytest.raises(AcpError) as err:
            await stranger.acp(agent.full_jid, SUB_NS, action, {"jid": other.jid})
        assert err.value.is_permission_error, action
    assert "presence" not in await explicit(admin, agent, other.jid)
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, SUB_NS, "add", {"jid": "not a jid"})
    assert err.value.code == -46
    await grant(admin, agent.full_jid, stranger.jid, "subscription_add")
    await stranger.acp(agent.full_jid, SUB_NS, "add", {"jid": other.jid})
    await other.wait_presence(presence_from(agent.jid, "subscribed"), timeout=15)


async def test_unauthorised_subscribe_is_refused_cleanly(agent, admin, new_user):
    stranger = await new_user("subscriber")
    stranger.xmpp.send_presence(pto=agent.jid, ptype="subscribe")
    await stranger.wait_presence(presence_from(agent.jid, "unsubscribed"), timeout=15)
    assert not [p for p in stranger.presences if p["from"].bare == agent.jid and p["type"] == "subscribed"]
    # the agent is still fine, and a permitted user is accepted
    friend = await new_user("friend")
    await grant(admin, agent.full_jid, friend.jid, "presence")
    friend.xmpp.send_presence(pto=agent.jid, ptype="subscribe")
    await friend.wait_presence(presence_from(agent.jid, "subscribed"), timeout=15)
    await friend.wait_presence(lambda p: p["from"].bare == agent.jid and p["type"] == "available", timeout=15)
