"""The stanza guard: every incoming stanza is measured before slixmpp builds or routes it.

slixmpp copies and serialises stanzas recursively: a few thousand levels of
nesting raise ``RecursionError`` while it builds a reply, the exception leaves
``data_received`` and the stream dies — any user could keep an entity offline.
:class:`GuardedClientXMPP` bounds the depth and size of each stanza (an IQ
``get``/``set`` over the bounds is answered ``policy-violation``, anything else
is dropped with a log line), answers the IQ types slixmpp's plugins silently
ignore (RFC 6120 §8.2.3: every ``get``/``set`` gets a reply), and turns an
exception escaping the routing of one stanza into an error reply instead of a
dead stream.  The server's own ``max_stanza_size`` is a first line only: a
server elsewhere may allow more.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import slixmpp

from ..xmlsafe import MAX_XML_BYTES

log = logging.getLogger(__name__)

STANZA_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CLIENT_NS = "jabber:client"

# xmlsafe.MAX_DEPTH (64) levels of user XML plus the envelope iq/query/archipel and some room.
MAX_STANZA_DEPTH = 80
# The largest user XML document (xmlsafe) plus room for the envelope; measured on the parsed tree.
MAX_STANZA_BYTES = MAX_XML_BYTES + 64 * 1024

# (payload namespace, IQ type) that a plugin's handler takes and never answers: answered here.
UNANSWERED = {
    ("http://jabber.org/protocol/disco#info", "set"):
        ("bad-request", "disco#info is a query of type 'get' (XEP-0030)"),
    ("http://jabber.org/protocol/disco#items", "set"):
        ("bad-request", "disco#items is a query of type 'get' (XEP-0030)"),
    ("vcard-temp", "get"):
        ("service-unavailable", "ask the server for this entity's vCard"),
}

# RFC 6120 §8.3.2: "modify" when the sender may retry with other data.
ERROR_TYPES = {"bad-request": "modify", "policy-violation": "modify"}


def oversize(xml: ET.Element, max_depth: int = MAX_STANZA_DEPTH, max_bytes: int = MAX_STANZA_BYTES) -> str | None:
    """Why ``xml`` is too deep or too large, or None.  Iterative, and stops at the first excess."""
    size = 0
    stack = [(xml, 1)]
    while stack:
        node, level = stack.pop()
        if level > max_depth:
            return f"nested deeper than {max_depth} levels"
        size += 2 * len(node.tag) + 5 + len(node.text or "") + len(node.tail or "")
        for key, value in node.attrib.items():
            size += len(key) + len(value) + 4
        if size > max_bytes:
            return f"larger than {max_bytes} bytes"
        stack.extend((child, level + 1) for child in node)
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


class GuardedClientXMPP(slixmpp.ClientXMPP):
    """A ClientXMPP whose incoming stanzas are bounded before any handler sees them."""

    max_stanza_depth = MAX_STANZA_DEPTH
    max_stanza_bytes = MAX_STANZA_BYTES

    def _spawn_event(self, xml: ET.Element) -> None:
        is_request = _local(xml.tag) == "iq" and xml.get("type") in ("get", "set")
        problem = oversize(xml, self.max_stanza_depth, self.max_stanza_bytes)
        if problem:
            log.warning("%s: %s from %s refused: %s", self.boundjid.bare, _local(xml.tag), xml.get("from"), problem)
            if is_request:
                self.send_iq_error(xml, "policy-violation", f"stanza {problem}")
            return
        if is_request and len(xml):
            unanswered = UNANSWERED.get((_namespace(xml[0].tag), xml.get("type")))
            if unanswered:
                self.send_iq_error(xml, *unanswered)
                return
        try:
            super()._spawn_event(xml)
        except Exception:  # noqa: BLE001 - one bad stanza must never close the stream
            log.exception("%s: a %s from %s could not be routed", self.boundjid.bare, _local(xml.tag), xml.get("from"))
            if is_request:
                self.send_iq_error(xml, "internal-server-error", "internal error, see the agent log")

    def send_iq_error(self, request: ET.Element, condition: str, text: str) -> None:
        """An IQ error built from the request's id and sender only (never a copy of the request)."""
        reply = self.Iq()
        reply["type"] = "error"
        reply["id"] = request.get("id", "")
        if request.get("from"):
            reply["to"] = request.get("from")
        error = ET.SubElement(reply.xml, f"{{{CLIENT_NS}}}error", {"type": ERROR_TYPES.get(condition, "cancel")})
        ET.SubElement(error, f"{{{STANZA_NS}}}{condition}")
        ET.SubElement(error, f"{{{STANZA_NS}}}text").text = text
        reply.send()
