"""The pure parts of the hostile-input bounds: stanza measure, in-flight counter, ad-hoc session store."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from archipelagent.commands.adhoc import AdhocSessions, AdhocTransport
from archipelagent.commands.dispatch import InFlight, TooManyRequests
from archipelagent.commands.registry import Arg, Command
from archipelagent.errors import InvalidArgument
from archipelagent.xmpp.limits import MAX_STANZA_DEPTH, oversize


def nested(levels: int) -> ET.Element:
    root = node = ET.Element("{jabber:client}iq", {"type": "get", "id": "x"})
    for _ in range(levels - 1):
        node = ET.SubElement(node, "{urn:x}a")
    return root


def test_oversize_accepts_a_normal_stanza():
    assert oversize(nested(10)) is None
    assert oversize(nested(MAX_STANZA_DEPTH)) is None


def test_oversize_refuses_deep_nesting_without_recursion():
    assert "deeper than" in oversize(nested(MAX_STANZA_DEPTH + 1))
    assert "deeper than" in oversize(nested(50_000))  # far past the recursion limit


def test_oversize_refuses_a_large_stanza():
    iq = ET.Element("iq")
    ET.SubElement(iq, "body").text = "x" * 5000
    assert oversize(iq, max_bytes=4096) == "larger than 4096 bytes"
    flat = ET.Element("iq")
    for _ in range(2000):
        ET.SubElement(flat, "item", {"name": "n"})
    assert oversize(flat, max_bytes=10_000) == "larger than 10000 bytes"


def test_in_flight_limits_per_entity_and_agent():
    limits = InFlight(per_entity=2, per_agent=3)
    limits.acquire("vm1", "eve@x")
    limits.acquire("vm1", "eve@x")
    with pytest.raises(TooManyRequests) as exc:
        limits.acquire("vm1", "eve@x")
    assert exc.value.condition == "resource-constraint" and "per sender on this entity" in exc.value.message
    limits.acquire("vm1", "bob@x")  # another sender is not affected
    limits.acquire("vm2", "eve@x")
    with pytest.raises(TooManyRequests, match="on this hypervisor"):
        limits.acquire("vm3", "eve@x")
    limits.release("vm1", "eve@x")
    limits.acquire("vm3", "eve@x")
    for entity in ("vm1", "vm2", "vm3"):
        limits.release(entity, "eve@x")
    limits.release("vm1", "bob@x")
    assert not limits._counts  # nothing left behind once everything is answered


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def open_session(store, sessionid, sender="eve@x/r"):
    store[sessionid] = {"id": sessionid, "from": sender, "next": object()}


def test_sessions_finished_are_not_kept():
    store = AdhocSessions()
    open_session(store, "s1")
    assert store.get("s1") is not None
    store["s1"] = {"id": "s1", "from": "eve@x/r", "next": None}  # completed
    assert store.get("s1") is None and len(store) == 0
    del store["never-there"]  # slixmpp deletes after completion: must not fail


def test_sessions_expire_and_are_bounded_per_sender():
    clock = Clock()
    store = AdhocSessions(ttl=300, per_sender=2, limit=3, clock=clock)
    open_session(store, "a")
    open_session(store, "b")
    with pytest.raises(TooManyRequests, match="per sender"):
        store.check_room("eve@x")
    store.check_room("bob@x")
    open_session(store, "c", "bob@x/r")
    with pytest.raises(TooManyRequests, match="on this entity"):
        store.check_room("carol@x")
    clock.now += 301
    assert store.get("a") is None and len(store) == 0
    store.check_room("eve@x")


def test_adhoc_xml_fields_go_through_the_safe_parser():
    command = Command("ns", "define", "define", handler=None, kinds=frozenset({"vm"}),
                      args=(Arg("domain", source="element"),))

    class Form:
        def __init__(self, value):
            self.value = value

        def get_values(self):
            return {"domain": self.value}

    laughs = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
              "<domain><name>&b;</name></domain>")
    with pytest.raises(InvalidArgument, match="entities are not accepted"):
        AdhocTransport.form_values(command, Form(laughs))
    with pytest.raises(InvalidArgument, match="deeper than"):
        AdhocTransport.form_values(command, Form("<a>" * 100 + "</a>" * 100))
    parsed = AdhocTransport.form_values(command, Form("<domain type='kvm'><name>x</name></domain>"))
    assert parsed["domain"].find("name").text == "x"


def test_the_slixmpp_hooks_the_guards_replace_still_exist():
    """The guard and the ad-hoc session check override slixmpp internals: fail loudly if they move."""
    import slixmpp
    from slixmpp.plugins.xep_0050 import XEP_0050

    from archipelagent.xmpp.limits import GuardedClientXMPP

    assert "_spawn_event" in vars(slixmpp.xmlstream.XMLStream)
    assert "_spawn_event" in vars(GuardedClientXMPP)
    assert callable(getattr(XEP_0050, "_handle_command_all", None))
    assert callable(getattr(XEP_0050, "set_backend", None))
