"""Chat and XEP-0050 ad-hoc: the same commands, the same permission checks."""
from __future__ import annotations

import asyncio
import os
import signal
import xml.etree.ElementTree as ET

import pytest
import pytest_asyncio
from slixmpp.exceptions import IqError

from agent_fixtures import grant
from archipelagent.commands.adhoc import MAX_SESSIONS_PER_SENDER
from archipelagent.commands.dispatch import MAX_IN_FLIGHT_PER_ENTITY
from vm_helpers import CONTROL, DEFINITION, alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError

HV_NS = "archipel:hypervisor:control"


async def test_chat_help_for_admin_lists_everything(agent, admin):
    text = await admin.chat(agent.full_jid, "help")
    for word in ("capabilities", "nodeinfo", "migration info", "ip", "vms"):
        assert word in text


async def test_chat_stranger_is_not_talked_to(agent, new_user):
    stranger = await new_user("stranger")
    text = await stranger.chat(agent.full_jid, "help")
    assert "not allowed to talk to me" in text


async def test_chat_help_lists_only_permitted_commands(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "message", "nodeinfo")
    text = await user.chat(agent.full_jid, "help")
    assert "nodeinfo" in text
    assert "capabilities" not in text and "migration info" not in text


async def test_chat_command_and_refusal(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "message", "nodeinfo")
    text = await user.chat(agent.full_jid, "nodeinfo")
    assert "CPUs at" in text and "MiB of memory" in text
    text = await user.chat(agent.full_jid, "capabilities")
    assert "Cannot use 'capabilities': permission denied" in text


async def test_chat_unknown_command_suggests_help(agent, admin):
    text = await admin.chat(agent.full_jid, "make coffee")
    assert "I don't know 'make'" in text and "help" in text


async def test_chat_admin_runs_multiword_command(agent, admin, stack):
    text = await admin.chat(agent.full_jid, "migration info")
    assert stack.libvirt_uri in text


async def test_adhoc_listed_and_executed(agent, admin):
    plugin = admin.xmpp.plugin["xep_0050"]
    items = await plugin.get_commands(agent.full_jid, timeout=10)
    nodes = {item[1] for item in items["disco_items"]["items"]}
    assert f"{HV_NS}#nodeinfo" in nodes
    result = await plugin.send_command(agent.full_jid, f"{HV_NS}#nodeinfo", timeout=10)
    command = result["command"]
    assert command["status"] == "completed"
    assert "CPUs at" in "\n".join(command["form"].get_values()["result"])


async def test_adhoc_nodes_are_described_and_the_entity_info_kept(agent, admin):
    """The list and each command's disco#info come from the registry (not per-entity copies)."""
    disco = admin.xmpp.plugin["xep_0030"]
    listing = await disco.get_info(agent.full_jid, node=COMMANDS_NS, timeout=10)
    assert ("automation", "command-list") in {i[:2] for i in listing["disco_info"]["identities"]}
    node = await disco.get_info(agent.full_jid, node=f"{HV_NS}#nodeinfo", timeout=10)
    identities = list(node["disco_info"]["identities"])
    assert [(i[0], i[1]) for i in identities] == [("automation", "command-node")]
    assert "nodeinfo" in identities[0][3]
    assert COMMANDS_NS in node["disco_info"]["features"]
    own = await disco.get_info(agent.full_jid, timeout=10)          # the entity itself: unchanged
    assert HV_NS in own["disco_info"]["features"] and COMMANDS_NS in own["disco_info"]["features"]
    assert ("client", "bot") in {i[:2] for i in own["disco_info"]["identities"]}


async def test_adhoc_refused_for_stranger(agent, new_user):
    stranger = await new_user("stranger")
    result = await stranger.xmpp.plugin["xep_0050"].send_command(agent.full_jid, f"{HV_NS}#capabilities", timeout=10)
    notes = result["command"]["notes"]
    assert notes and notes[0][0] == "error" and "permission denied" in notes[0][1]


async def test_adhoc_with_arguments_shows_form_then_runs(agent, admin, new_user):
    user = await new_user()
    await grant(admin, agent.full_jid, user.jid, "ip")
    plugin = admin.xmpp.plugin["xep_0050"]
    first = await plugin.send_command(agent.full_jid, "archipel:permissions#get", timeout=10)
    form = first["command"]["form"]
    assert "permission_target" in form.get_fields()
    session = first["command"]["sessionid"]
    submit = admin.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    submit.add_field(var="permission_target", value=user.jid)
    done = await plugin.send_command(agent.full_jid, "archipel:permissions#get", action="complete",
                                     sessionid=session, payload=submit, timeout=10)
    assert done["command"]["status"] == "completed"
    assert "permission name=ip" in "\n".join(done["command"]["form"].get_values()["result"])


# ----------------------------------------------- ad-hoc: safe XML, session lifetime, bounds
COMMANDS_NS = "http://jabber.org/protocol/commands"
ENTITY_PAYLOADS = {
    "internal entity": ("<!DOCTYPE domain [<!ENTITY x \"expanded-from-an-entity\">]>"
                        "<domain type='kvm'><name>&x;</name><memory>131072</memory><vcpu>1</vcpu>"
                        "<os><type>hvm</type></os></domain>"),
    "billion laughs": ("<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">"
                       "<!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">"
                       "<!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">"
                       "<!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]>"
                       "<domain type='kvm'><name>laughs</name><description>&lol3;</description></domain>"),
}


@pytest_asyncio.fixture
async def vm(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name("adhoc"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    yield full
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


def submit_form(client, **values):
    form = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in values.items():
        form.add_field(var=var, value=value)
    return form


async def continue_error(client, to: str, node: str, sessionid: str, action: str = "execute") -> IqError:
    with pytest.raises(IqError) as exc:
        await client.xmpp.plugin["xep_0050"].send_command(to, node, action=action, sessionid=sessionid, timeout=10)
    return exc.value


def assert_bad_session(error: IqError) -> None:
    assert error.iq["error"]["condition"] == "bad-request", error.iq
    assert error.iq.xml.find(f"{{jabber:client}}error/{{{COMMANDS_NS}}}bad-sessionid") is not None, error.iq


async def test_adhoc_define_refuses_entities_never_expands(agent, admin, vm):
    plugin = admin.xmpp.plugin["xep_0050"]
    node = f"{DEFINITION}#define"
    for what, payload in ENTITY_PAYLOADS.items():
        first = await plugin.send_command(vm, node, timeout=10)
        assert "domain" in first["command"]["form"].get_fields(), what
        done = await plugin.send_command(vm, node, action="complete", sessionid=first["command"]["sessionid"],
                                         payload=submit_form(admin, domain=payload), timeout=10)
        notes = done["command"]["notes"]
        assert notes and notes[0][0] == "error", (what, notes)
        assert "invalid argument 'domain'" in notes[0][1] and "entities are not accepted" in notes[0][1], notes
    desc = await admin.acp(vm, CONTROL, "xmldesc")
    assert "expanded-from-an-entity" not in ET.tostring(desc, encoding="unicode")


async def test_adhoc_session_freed_at_completion_cancel_and_refusal(agent, admin, new_user):
    plugin = admin.xmpp.plugin["xep_0050"]
    node = "archipel:permissions#get"
    first = await plugin.send_command(agent.full_jid, node, timeout=10)
    sessionid = first["command"]["sessionid"]
    done = await plugin.send_command(agent.full_jid, node, action="complete", sessionid=sessionid,
                                     payload=submit_form(admin, permission_target=admin.jid), timeout=10)
    assert done["command"]["status"] == "completed"
    assert_bad_session(await continue_error(admin, agent.full_jid, node, sessionid))
    # cancelled: gone too
    first = await plugin.send_command(agent.full_jid, node, timeout=10)
    await plugin.send_command(agent.full_jid, node, action="cancel", sessionid=first["command"]["sessionid"],
                              timeout=10)
    assert_bad_session(await continue_error(admin, agent.full_jid, node, first["command"]["sessionid"], "complete"))
    # refused (a stranger): nothing is kept, however many times they try
    stranger = await new_user("stranger")
    for _ in range(20):
        refused = await stranger.xmpp.plugin["xep_0050"].send_command(agent.full_jid, node, timeout=10)
        assert refused["command"]["notes"][0][0] == "error"
    assert_bad_session(await continue_error(stranger, agent.full_jid, node, refused["command"]["sessionid"]))


async def test_adhoc_session_belongs_to_its_requester(agent, admin, new_user):
    first = await admin.xmpp.plugin["xep_0050"].send_command(agent.full_jid, "archipel:permissions#get", timeout=10)
    other = await new_user("hijack")
    await grant(admin, agent.full_jid, other.jid, "permission_get")
    error = await continue_error(other, agent.full_jid, "archipel:permissions#get", first["command"]["sessionid"],
                                 "complete")
    assert_bad_session(error)
    await admin.xmpp.plugin["xep_0050"].send_command(agent.full_jid, "archipel:permissions#get", action="cancel",
                                                     sessionid=first["command"]["sessionid"], timeout=10)


async def test_adhoc_open_sessions_are_bounded_per_sender(agent, admin, new_user):
    user = await new_user("sessions")
    await grant(admin, agent.full_jid, user.jid, "permission_get")
    plugin = user.xmpp.plugin["xep_0050"]
    node = "archipel:permissions#get"
    opened = []
    for _ in range(MAX_SESSIONS_PER_SENDER):
        reply = await plugin.send_command(agent.full_jid, node, timeout=10)
        assert reply["command"]["status"] == "executing"
        opened.append(reply["command"]["sessionid"])
    with pytest.raises(IqError) as exc:
        await plugin.send_command(agent.full_jid, node, timeout=10)
    assert exc.value.iq["error"]["condition"] == "resource-constraint"
    assert "too many open ad-hoc sessions" in exc.value.iq["error"]["text"]
    await plugin.send_command(agent.full_jid, node, action="cancel", sessionid=opened.pop(), timeout=10)
    opened.append((await plugin.send_command(agent.full_jid, node, timeout=10))["command"]["sessionid"])
    for sessionid in opened:
        await plugin.send_command(agent.full_jid, node, action="cancel", sessionid=sessionid, timeout=10)


# ----------------------------------------------- requests in flight, every transport
def send_info(client, to: str):
    """An ACP 'info', written to the stream now; returns the reply's future."""
    iq = client.xmpp.make_iq_get(ito=to)
    query = ET.SubElement(iq.xml, f"{{{CONTROL}}}query")
    ET.SubElement(query, f"{{{CONTROL}}}archipel", {"action": "info"})
    return iq.send(timeout=60)


async def test_requests_in_flight_are_bounded_per_sender(agent, admin, new_user, stack, vm):
    """libvirtd is paused: the first requests hang in flight; past the limit IQ, chat and ad-hoc are refused."""
    user = await new_user("flood")
    await grant(admin, vm, user.jid, "info", "message")
    await user.acp(vm, CONTROL, "info")
    pids = stack.libvirtd.pids()
    assert pids
    hanging = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # sent in order now (iq.send writes at once): the agent takes them in that order
        hanging = [send_info(user, vm) for _ in range(MAX_IN_FLIGHT_PER_ENTITY)]
        with pytest.raises(IqError) as exc:
            await send_info(user, vm)
        error = AcpError(exc.value.iq)
        assert error.condition == "resource-constraint" and error.code == -52
        assert "too many requests in flight" in error.text
        text = await user.chat(vm, "info")
        assert "too many requests in flight" in text
        with pytest.raises(IqError) as adhoc:
            await user.xmpp.plugin["xep_0050"].send_command(vm, f"{CONTROL}#info", timeout=20)
        assert adhoc.value.iq["error"]["condition"] == "resource-constraint"
        assert not any(task.done() for task in hanging)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    results = await asyncio.gather(*hanging)
    assert all(result.xml.find(f"{{{CONTROL}}}query/{{{CONTROL}}}info") is not None for result in results)
    await user.acp(vm, CONTROL, "info")  # places are given back
    audit = await admin.acp(agent.full_jid, "archipel:audit", "get", {"sender": user.jid, "outcome": "error"})
    assert any(e.get("outcome") == "error:-52" for e in audit), ET.tostring(audit, encoding="unicode")
