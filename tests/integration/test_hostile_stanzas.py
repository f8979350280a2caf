"""Hostile stanzas against the real agent: deep nesting, huge payloads, odd IQ types, a fuzz run.

Every IQ get/set must get exactly one reply, and the entity must stay online
(no reconnection in its log, ping answered).  The stanzas are written by hand:
slixmpp's own serialiser would recurse on them in the test client.
"""
from __future__ import annotations

import os
from xml.sax.saxutils import quoteattr

import pytest
import pytest_asyncio

from fuzzing import DEEP, DISCO_INFO, DISCO_ITEMS, RawIqs, fuzz_run, reconnections
from vm_helpers import CONTROL, DEFINITION, HV_NS, alloc, unique_name, vm_full, wait_vm_ready


def nest(levels: int, name: str = "a") -> str:
    return f"<{name}>" * levels + f"</{name}>" * levels


async def assert_still_online(agent, client, full_jid: str, since: int) -> None:
    await client.ping(full_jid)
    assert reconnections(agent, full_jid.split("/")[0], since) == []


def assert_error(iq, condition: str, text: str | None = None) -> None:
    assert iq["type"] == "error", iq
    assert iq["error"]["condition"] == condition, iq
    if text:
        assert text in iq["error"]["text"], iq


@pytest_asyncio.fixture
async def vm(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name("hostile"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    yield full
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


def deep_payloads(namespace: str, action: str) -> dict[str, str]:
    return {
        "acp": f"<query xmlns='{namespace}'><archipel action='{action}'>{nest(DEEP)}</archipel></query>",
        "disco": f"<query xmlns='{DISCO_INFO}'>{nest(DEEP)}</query>",
        "unknown namespace": f"<x xmlns='urn:example:unknown'>{nest(DEEP)}</x>",
    }


async def test_deep_iqs_to_the_hypervisor_get_an_error_and_the_stream_stays(agent, new_user):
    stranger = await new_user("deep")
    raw = RawIqs(stranger)
    since = agent.process.log_size()
    for what, payload in deep_payloads(HV_NS, "nodeinfo").items():
        reply = await raw.reply(raw.send(agent.full_jid, payload))
        assert_error(reply, "policy-violation", "nested deeper than")
        assert reply["from"].full == agent.full_jid, what
    # a deep message and presence are dropped; the stream stays
    stranger.xmpp.send_raw(f"<message to={quoteattr(agent.full_jid)} type='chat'><body>hi</body>{nest(DEEP)}</message>")
    stranger.xmpp.send_raw(f"<presence to={quoteattr(agent.full_jid)}>{nest(DEEP, 'status')}</presence>")
    await assert_still_online(agent, stranger, agent.full_jid, since)
    assert "refused: nested deeper than" in agent.process.log_path.read_text(errors="replace")[since:]


async def test_deep_define_to_a_vm_gets_an_error_and_the_stream_stays(agent, admin, vm):
    raw = RawIqs(admin)
    since = agent.process.log_size()
    payloads = deep_payloads(CONTROL, "info")
    payloads["define"] = (f"<query xmlns='{DEFINITION}'><archipel action='define'><domain type='kvm'>"
                          f"{nest(DEEP)}</domain></archipel></query>")
    for what, payload in payloads.items():
        reply = await raw.reply(raw.send(vm, payload, "set" if what == "define" else "get"))
        assert_error(reply, "policy-violation", "nested deeper than")
    await assert_still_online(agent, admin, vm, since)
    assert (await admin.acp(vm, CONTROL, "info")).find(f"{{{CONTROL}}}info") is not None


async def test_a_stanza_over_the_size_bound_gets_an_error(agent, new_user):
    stranger = await new_user("large")
    raw = RawIqs(stranger)
    since = agent.process.log_size()
    big = "x" * (1536 * 1024)  # over the agent's bound, under ejabberd's max_stanza_size
    reply = await raw.reply(raw.send(agent.full_jid, f"<x xmlns='urn:example:big'>{big}</x>"))
    assert_error(reply, "policy-violation", "larger than")
    await assert_still_online(agent, stranger, agent.full_jid, since)


async def test_every_get_or_set_is_answered_rfc6120(agent, new_user):
    """disco#info/#items as 'set', vCard 'get' to the entity, ping 'set', unknown payload: each gets an error."""
    stranger = await new_user("types")
    raw = RawIqs(stranger)
    cases = [
        (f"<query xmlns='{DISCO_INFO}'/>", "set", "bad-request"),
        (f"<query xmlns='{DISCO_ITEMS}'/>", "set", "bad-request"),
        ("<vCard xmlns='vcard-temp'/>", "get", "service-unavailable"),
        ("<ping xmlns='urn:xmpp:ping'/>", "set", "feature-not-implemented"),
        ("<query xmlns='urn:example:nothing'/>", "get", "feature-not-implemented"),
        ("<command xmlns='http://jabber.org/protocol/commands' node='x' action='execute'/>", "get",
         "feature-not-implemented"),
    ]
    for payload, itype, condition in cases:
        reply = await raw.reply(raw.send(agent.full_jid, payload, itype), timeout=15)
        assert_error(reply, condition)
    ok = await raw.reply(raw.send(agent.full_jid, f"<query xmlns='{DISCO_INFO}'/>", "get"))
    assert ok["type"] == "result"


# ------------------------------------------------------------------ fuzz
@pytest.fixture(params=["hypervisor", "vm"])
def fuzz_target(request, agent):
    return agent.full_jid if request.param == "hypervisor" else request.getfixturevalue("vm")


async def test_fuzz_every_iq_answered_once_and_entity_online(agent, admin, new_user, fuzz_target):
    """ARCHIPEL_FUZZ_COUNT stanzas (500 by default; tests/chaos/fuzz.py runs 10,000)."""
    stranger = await new_user("fuzz")
    since = agent.process.log_size()
    report = await fuzz_run(agent, stranger, fuzz_target, int(os.environ.get("ARCHIPEL_FUZZ_COUNT", "500")))
    print(report.line())
    assert not report.lost, (f"{len(report.lost)} of {len(report.expected)} IQs got no reply; reconnections: "
                             f"{report.reconnects}; first: {[report.heads[i] for i in report.lost[:3]]}")
    assert not report.duplicated and not report.answered_silent
    await assert_still_online(agent, stranger, fuzz_target, since)
    await admin.acp(agent.full_jid, HV_NS, "nodeinfo")  # and still serves the others
