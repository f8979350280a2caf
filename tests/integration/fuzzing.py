"""The stanza fuzzer (issue 16 item 6): random, malformed, oversized and deeply nested
stanzas, written by hand (slixmpp's serialiser would recurse on them), sent from a
user account; every IQ get/set must get exactly one reply.

Used by tests/integration/test_hostile_stanzas.py (a short run in the suite) and
tests/chaos/fuzz.py (the long run: 10,000 stanzas per entity, memory reported).
"""
from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from vm_helpers import CONTROL, DEFINITION, HV_NS

DEEP = 3000
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


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


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class FuzzReport:
    target: str
    sent: int = 0
    expected: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    duplicated: list = field(default_factory=list)
    answered_silent: list = field(default_factory=list)
    reconnects: list = field(default_factory=list)
    heads: dict = field(default_factory=dict)
    rss_before_kib: int = 0
    rss_after_kib: int = 0

    def line(self) -> str:
        return (f"fuzz {self.target}: {self.sent} stanzas, {len(self.expected)} IQ get/set, "
                f"{len(self.lost)} lost, {len(self.duplicated)} answered twice, "
                f"{len(self.answered_silent)} results/errors answered, "
                f"{len(self.reconnects) // 2 if self.reconnects else 0} reconnections, agent RSS "
                f"{self.rss_before_kib / 1024:.1f} -> {self.rss_after_kib / 1024:.1f} MiB")


async def fuzz_run(agent, client, target: str, count: int, seed: int = 10, batch: int = 500) -> FuzzReport:
    """Send ``count`` fuzz stanzas to ``target`` from ``client``, in batches whose IQs are
    all awaited (the server's per-user shaper stays out of the way); report what came back."""
    raw = RawIqs(client)
    rng = random.Random(seed)
    since = agent.process.log_size()
    report = FuzzReport(target, rss_before_kib=rss_kib(agent.process.proc.pid))
    silent = []
    for start in range(0, count, batch):
        expected = []
        for n in range(start, min(count, start + batch)):
            stanza, iq_id, kind = fuzz_stanza(rng, target)
            client.xmpp.send_raw(stanza)
            report.sent += 1
            if iq_id:
                expected.append(iq_id)
                report.heads[iq_id] = stanza[:300]
            elif kind in ("result", "error"):
                silent.append(stanza.split("id='", 1)[1].split("'", 1)[0])
            if n % 25 == 0:
                await asyncio.sleep(0)  # let the client read replies meanwhile
        report.lost += await raw.wait_all(expected, timeout=120)
        report.expected += expected
    await client.ping(target)  # a last round trip: late duplicates would have arrived by now
    report.duplicated = [i for i in report.expected if len(raw.replies.get(i, [])) > 1]
    report.answered_silent = [i for i in silent if raw.replies.get(i)]
    report.reconnects = reconnections(agent, target.split("/")[0], since)
    report.rss_after_kib = rss_kib(agent.process.proc.pid)
    return report
