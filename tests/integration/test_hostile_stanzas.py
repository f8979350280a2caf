"""Hostile stanzas against the real agent: deep nesting, huge payloads, odd IQ types, a fuzz run.

Every IQ get/set must get exactly one reply, and the entity must stay online
(no reconnection in its log, ping answered).  The stanzas are written by hand:
slixmpp's own serialiser would recurse on them in the test client.
"""
from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from xml.sax.saxutils import escape, quoteattr

import pytest
import pytest_asyncio
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from vm_helpers import CONTROL, DEFINITION, HV_NS, alloc, unique_name, vm_full, wait_vm_ready

DEEP = 3000
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def nest(levels: int, name: str = "a") -> str:
    return f"<{name}>" * levels + f"</{name}>" * levels


class RawIqs:
    """Sends hand-written stanzas and collects every IQ reply by id."""

    def __init__(self, client):
        self.client = client
        self.replies: dict[str, list] = defaultdict(list)
        self._changed = asyncio.Event()
        client.xmpp.register_handler(Callback(f"raw replies {uuid.uuid4().hex}", MatchXPath("{jabber:client}iq"),
                                              self._on_iq))

    def _on_iq(self, iq) -> None:
        if iq["type"] in ("result", "error"):
            self.replies[iq["id"]].append(iq)
            self._changed.set()

    def send(self, to: str, payload: str, itype: str = "get") -> str:
        iq_id = "raw-" + uuid.uuid4().hex
        self.client.xmpp.send_raw(f"<iq type='{itype}' id='{iq_id}' to={quoteattr(to)}>{payload}</iq>")
        return iq_id

    async def wait_all(self, ids, timeout: float = 60) -> list[str]:
        """Until every id has a reply or the timeout passes; returns the ids still unanswered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            missing = [i for i in ids if not self.replies.get(i)]
            if not missing or loop.time() >= deadline:
                return missing
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                pass

    async def reply(self, iq_id: str, timeout: float = 30):
        missing = await self.wait_all([iq_id], timeout)
        assert not missing, f"no reply to {iq_id}"
        return self.replies[iq_id][0]


def reconnections(agent, bare: str, since: int) -> list[str]:
    text = agent.process.log_path.read_text(errors="replace")[since:]
    return [line for line in text.splitlines() if f"{bare}: disconnected" in line or f"{bare}: online as" in line]


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
NAMESPACES = [HV_NS, "archipel:permissions", "archipel:hypervisor:health", "archipel:quota", CONTROL, DEFINITION,
              DISCO_INFO, DISCO_ITEMS, "urn:xmpp:ping", "jabber:iq:version", "vcard-temp", "jabber:iq:register",
              "http://jabber.org/protocol/commands", "jabber:iq:roster", "jabber:iq:last", "urn:example:fuzz"]
ACTIONS = ["list", "get", "nodeinfo", "capabilities", "ip", "alloc", "free", "set", "define", "info", "", "x" * 300]
WORDS = ["a", "domain", "item", "field", "value", "devices", "disk", "zz", "query", "archipel"]
TEXT = "abcxyz <>&'\" é中 0123"


def fuzz_stanza(rng: random.Random, to: str) -> tuple[str, str | None, str]:
    """(stanza text, IQ id if it expects a reply, kind): random but well-formed, under ejabberd's size limit."""
    def text(limit: int) -> str:
        size = rng.choice([0, 0, 5, 50, limit])
        return escape("".join(rng.choice(TEXT) for _ in range(min(size, 200))) * max(1, size // 200))

    def attrs(limit: int = 100) -> str:
        return "".join(f" {rng.choice(WORDS)}{i}={quoteattr(text(limit))}" for i in range(rng.choice([0, 1, 3])))

    def body() -> str:
        depth = rng.choice([0, 1, 3, 10, 70, 90, 500, 1500, DEEP])
        tags = [rng.choice(WORDS) for _ in range(depth)]
        decorate = depth <= 100  # attributes and text on every level only when shallow (size stays small)
        opened = "".join(f"<{t}{attrs() if decorate else ''}>{text(100) if decorate else ''}" for t in tags)
        return text(20000) + opened + "".join(f"</{t}>" for t in reversed(tags))

    kind = rng.choices(["iq", "message", "presence"], weights=[70, 20, 10])[0]
    if kind == "iq":
        iq_id = "fz-" + uuid.uuid4().hex
        itype = rng.choices(["get", "set", "result", "error"], weights=[45, 45, 5, 5])[0]
        namespace = rng.choice(NAMESPACES)
        if namespace == "jabber:iq:roster" and itype == "set":
            itype = "get"  # ejabberd never delivers another account's roster push to the entity: no reply to count
        if namespace.startswith("archipel"):
            payload = (f"<query xmlns='{namespace}'><archipel action={quoteattr(rng.choice(ACTIONS))}{attrs()}>"
                       f"{body()}</archipel></query>")
        elif namespace == "http://jabber.org/protocol/commands":
            node = rng.choice(["archipel:permissions#list", "archipel:permissions#get", "x"])
            action = rng.choice(["execute", "next", "complete", "cancel", "bogus"])
            session = rng.choice(["", f" sessionid='{uuid.uuid4().hex}'"])
            payload = f"<command xmlns='{namespace}' node='{node}' action='{action}'{session}>{body()}</command>"
        else:
            tag = rng.choice(["query", "ping", "vCard", "x"])
            payload = f"<{tag} xmlns='{namespace}'{attrs()}>{body()}</{tag}>"
        stanza = f"<iq type='{itype}' id='{iq_id}' to={quoteattr(to)}>{payload}</iq>"
        return stanza, (iq_id if itype in ("get", "set") else None), itype
    if kind == "message":
        mtype = rng.choice(["chat", "normal", "headline", "groupchat"])
        return (f"<message to={quoteattr(to)} type='{mtype}'><body>{text(100) or 'help'}</body>{body()}</message>",
                None, "message")
    ptype = rng.choice(["", " type='probe'", " type='unavailable'", " type='subscribed'"])
    return f"<presence to={quoteattr(to)}{ptype}>{body()}</presence>", None, "presence"


@pytest.fixture(params=["hypervisor", "vm"])
def fuzz_target(request, agent):
    return agent.full_jid if request.param == "hypervisor" else request.getfixturevalue("vm")


async def test_fuzz_every_iq_answered_once_and_entity_online(agent, new_user, fuzz_target):
    stranger = await new_user("fuzz")
    raw = RawIqs(stranger)
    rng = random.Random(10)
    since = agent.process.log_size()
    expected, silent, heads = [], [], {}
    for n in range(500):
        stanza, iq_id, kind = fuzz_stanza(rng, fuzz_target)
        stranger.xmpp.send_raw(stanza)
        if iq_id:
            expected.append(iq_id)
            heads[iq_id] = stanza[:300]
        elif kind in ("result", "error"):
            silent.append(stanza.split("id='", 1)[1].split("'", 1)[0])
        if n % 25 == 0:
            await asyncio.sleep(0)  # let the client read replies meanwhile
    lost = await raw.wait_all(expected, timeout=120)
    await stranger.ping(fuzz_target)  # a last round trip: late duplicates would have arrived by now
    duplicated = [i for i in expected if len(raw.replies.get(i, [])) > 1]
    answered_silent = [i for i in silent if raw.replies.get(i)]
    reconnects = reconnections(agent, fuzz_target.split("/")[0], since)
    print(f"fuzz: {len(expected)} IQ get/set sent, {len(lost)} lost, {len(duplicated)} answered twice, "
          f"{len(reconnects) // 2 if reconnects else 0} reconnections")
    assert not lost, (f"{len(lost)} of {len(expected)} IQs got no reply; reconnections: {reconnects}; "
                      f"first: {[heads[i] for i in lost[:3]]}")
    assert not duplicated and not answered_silent
    await assert_still_online(agent, stranger, fuzz_target, since)
