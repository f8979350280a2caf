"""The hypervisor entity against the real stack: every action by admin, grantee and stranger."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from agent_fixtures import PERMS_NS, grant
from xmpp_client import AcpError

HV_NS = "archipel:hypervisor:control"
ACTIONS = ["capabilities", "nodeinfo", "ip", "migrationinfo", "rostervm"]


def check_payload(action: str, query: ET.Element, stack) -> None:
    children = list(query)
    if action == "capabilities":
        assert children[0].tag == f"{{{HV_NS}}}capabilities"
        assert children[0].find(f"{{{HV_NS}}}host/{{{HV_NS}}}uuid") is not None
        assert children[0].find(f"{{{HV_NS}}}guest") is not None
    elif action == "nodeinfo":
        node = children[0]
        assert node.tag == f"{{{HV_NS}}}nodeinfo"
        assert int(node.get("nrCPU")) >= 1 and int(node.get("memory")) > 1024 * 1024
        for key in ("model", "mHzCPU", "nrNumaNodes", "nrSockets", "nrCoreperSocket", "nrThreadperCore"):
            assert node.get(key), key
    elif action == "ip":
        assert children[0].text == "127.0.0.1"
    elif action == "migrationinfo":
        assert children[0].get("libvirt_uri") == stack.libvirt_uri
        assert children[0].get("base_folder") == str(stack.storage_dir)
    elif action == "rostervm":
        assert all(c.tag == f"{{{HV_NS}}}item" for c in children)


@pytest.mark.parametrize("action", ACTIONS)
async def test_admin_may_use_every_action(agent, admin, stack, action):
    query = await admin.acp(agent.full_jid, HV_NS, action)
    check_payload(action, query, stack)


@pytest.mark.parametrize("action", ACTIONS)
async def test_stranger_is_refused_with_permission_error(agent, new_user, action):
    stranger = await new_user("stranger")
    with pytest.raises(AcpError) as err:
        await stranger.acp(agent.full_jid, HV_NS, action)
    assert err.value.is_permission_error
    assert err.value.code == -1
    assert f"Cannot use '{action}': permission denied" in err.value.text
    assert err.value.condition == "forbidden"


@pytest.mark.parametrize("action", ACTIONS)
async def test_user_granted_one_permission_gets_only_that(agent, admin, new_user, stack, action):
    user = await new_user("grantee")
    await grant(admin, agent.full_jid, user.jid, action)
    check_payload(action, await user.acp(agent.full_jid, HV_NS, action), stack)
    other = next(a for a in ACTIONS if a != action)
    with pytest.raises(AcpError) as err:
        await user.acp(agent.full_jid, HV_NS, other)
    assert err.value.is_permission_error


async def test_ping_answers(agent, admin):
    assert await admin.ping(agent.full_jid) >= 0


async def test_presence_and_vcard(agent, admin):
    vcard = await admin.xmpp.plugin["xep_0054"].get_vcard(agent.jid, timeout=10)
    assert vcard["vcard_temp"]["ROLE"] == "hypervisor"
    assert vcard["vcard_temp"]["FN"] == "hv-test"


async def test_disco_lists_namespaces_and_commands(agent, admin):
    info = await admin.xmpp.plugin["xep_0030"].get_info(jid=agent.full_jid, timeout=10)
    features = set(info["disco_info"]["features"])
    assert {HV_NS, PERMS_NS, "urn:xmpp:ping", "http://jabber.org/protocol/commands"} <= features
    items = await admin.xmpp.plugin["xep_0030"].get_items(jid=agent.full_jid, node="http://jabber.org/protocol/commands", timeout=10)
    nodes = {item[1] for item in items["disco_items"]["items"]}
    assert f"{HV_NS}#capabilities" in nodes and f"{PERMS_NS}#list" in nodes


async def test_events_node_exists(agent, admin, stack):
    node = f"/archipel/{agent.jid}/events"
    result = await admin.xmpp.plugin["xep_0060"].get_nodes(stack.pubsub_domain, timeout=10)
    nodes = {item[1] for item in result["disco_items"]["items"]}
    assert node in nodes


# ---------------------------------------------------------------- malformed
async def test_missing_archipel_element_is_malformed(agent, admin):
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, None, with_archipel=False)
    assert err.value.code == -42 and err.value.condition == "bad-request"
    assert "missing <archipel>" in err.value.text


async def test_missing_action_is_malformed(agent, admin):
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, None)
    assert err.value.code == -42 and "missing 'action'" in err.value.text


async def test_unknown_action(agent, admin):
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, "launch-missiles")
    assert err.value.code == -44 and err.value.condition == "feature-not-implemented"
    assert "launch-missiles" in err.value.text


async def test_missing_argument(agent, admin):
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, PERMS_NS, "get")
    assert err.value.code == -45 and "permission_target" in err.value.text


async def test_malformed_argument(agent, admin):
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, PERMS_NS, "get", {"permission_target": "not a jid"})
    assert err.value.code == -46 and "permission_target" in err.value.text


async def test_error_reply_echoes_query_and_context(agent, admin):
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, "launch-missiles")
    iq = err.value.iq
    assert iq.xml.find(f"{{{HV_NS}}}query/{{{HV_NS}}}archipel").get("action") == "launch-missiles"
    assert err.value.text.endswith(f"\n\n{HV_NS}\nlaunch-missiles")
    assert "archipel:error:generic" in err.value.namespaces
