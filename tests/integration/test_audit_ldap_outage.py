"""Decisions that LDAP's absence prevents are audited, not only logged (issue 10 item 8):
the chat gate's "LDAP is unreachable" refusal and an inbound subscription left pending."""
from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from agent_fixtures import PERMS_NS, client_for
from test_audit_and_admin_cli import find_entry


def group_item(group: str, name: str, value: bool = True) -> ET.Element:
    return ET.Element("permission", {"permission_type": "group", "permission_target": group,
                                     "permission_name": name, "permission_value": "true" if value else "false"})


async def test_ldap_outage_in_the_chat_gate_and_a_subscription_is_audited(agent, admin, stack):
    user = stack.user("student2")
    student = await client_for(stack, user["jid"], user["password"], "audit-ldap").connect()
    # a group grant on the hypervisor: deciding for a student now needs their LDAP groups
    await admin.acp(agent.full_jid, PERMS_NS, "set", children=[group_item("students", "message")])
    try:
        assert "LDAP is unreachable" not in await student.chat(agent.full_jid, "help")
        stack.stop_slapd()
        try:
            for _ in range(50):  # until the agent's 1 s LDAP cache has expired
                answer = await student.chat(agent.full_jid, "capabilities")
                if "LDAP is unreachable" in answer:
                    break
                await asyncio.sleep(0.2)
            assert "LDAP is unreachable" in answer
            entry = await find_entry(admin, agent, lambda e: e["transport"] == "chat",
                                     sender=student.jid, outcome="error:-48")
            assert entry["entity"] == agent.jid and entry["action"] == "capabilities"
            student.xmpp.send_presence(pto=agent.jid, ptype="subscribe")
            entry = await find_entry(admin, agent, lambda e: e["transport"] == "presence",
                                     sender=student.jid, outcome="error:-48")
            assert entry["entity"] == agent.jid and entry["action"] == "subscribe"
            assert not [p for p in student.presences if p["from"].bare == agent.jid
                        and p["type"] in ("subscribed", "unsubscribed")]  # left pending
        finally:
            stack.start_slapd()
        for _ in range(100):  # until the agent reaches LDAP again (later tests need it)
            if "LDAP is unreachable" not in await student.chat(agent.full_jid, "help"):
                break
            await asyncio.sleep(0.2)
    finally:
        await admin.acp(agent.full_jid, PERMS_NS, "set", children=[group_item("students", "message", False)])
        await student.close()


async def test_subscription_decisions_are_audited(agent, admin, new_user):
    stranger = await new_user("auditsub")
    stranger.xmpp.send_presence(pto=agent.jid, ptype="subscribe")
    await stranger.wait_presence(lambda p: p["from"].bare == agent.jid and p["type"] == "unsubscribed", 15)
    await find_entry(admin, agent, lambda e: e["transport"] == "presence" and e["action"] == "subscribe",
                     sender=stranger.jid, outcome="denied")
