"""Archipel's ACP over IQ: ``<query xmlns=NS><archipel action=A .../></query>``.

Replies and errors keep Archipel's wire shapes (protocol reference §0) so its
client works unchanged; errors also carry a standard XMPP condition.
"""
from __future__ import annotations

import logging
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from slixmpp.xmlstream.handler import CoroutineCallback
from slixmpp.xmlstream.matcher.base import MatcherBase

from ..errors import ArchipelError, MalformedRequest, UnknownAction
from .dispatch import TooManyRequests, admitted, record_refusal, run_command
from .payload import as_elements, local_name, qualify

if TYPE_CHECKING:  # pragma: no cover
    from ..xmpp.entity import Entity

log = logging.getLogger(__name__)

STANZA_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def raw_arguments(archipel: ET.Element) -> dict[str, object]:
    """Attributes plus child elements (by local name) of the <archipel> element."""
    raw: dict[str, object] = {k: v for k, v in archipel.attrib.items() if k != "action"}
    children = list(archipel)
    raw["__children__"] = children
    for child in children:
        raw.setdefault(local_name(child.tag), child)
    return raw


def error_element(error: ArchipelError, namespace: str, action: str | None) -> ET.Element:
    """Archipel's error: code, the error namespace child, and text with the query context."""
    el = ET.Element("{jabber:client}error", {"code": str(error.code), "type": "cancel"})
    ET.SubElement(el, f"{{{STANZA_NS}}}{error.condition}")
    ET.SubElement(el, f"{{{error.namespace}}}{error.namespace.replace(':', '-')}")
    text = ET.SubElement(el, f"{{{STANZA_NS}}}text")
    text.text = f"{error.message}\n\n{namespace}\n{action or ''}"
    return el


class AcpQueries(MatcherBase):
    """An IQ carrying a ``query`` of one of the served namespaces.

    One handler for all of an entity's namespaces instead of one each: every
    stanza an entity receives is tried against every handler, and a VM serves
    about twenty namespaces (1,000 entities logging in: 20,000 handlers fewer).
    """

    def __init__(self, default_ns: str, namespaces):
        super().__init__(frozenset(f"{{{ns}}}query" for ns in namespaces))
        self.iq_tag = f"{{{default_ns}}}iq"

    def query(self, xml: ET.Element) -> ET.Element | None:
        """The first child that is a served query, or None."""
        if xml.tag != self.iq_tag:
            return None
        return next((child for child in xml if child.tag in self._criteria), None)

    def match(self, stanza) -> bool:
        return self.query(stanza.xml) is not None


class AcpTransport:
    """Serves every namespace of an entity kind on one slixmpp client."""

    def __init__(self, entity: "Entity"):
        self.entity = entity
        self.matcher: AcpQueries | None = None

    def install(self) -> None:
        xmpp = self.entity.xmpp
        self.matcher = AcpQueries(xmpp.default_ns, self.entity.agent.registry.namespaces(self.entity.kind))
        xmpp.register_handler(CoroutineCallback("acp", self.matcher, self._route))

    async def _route(self, iq) -> None:
        query = self.matcher.query(iq.xml)
        if query is not None:
            await self.handle(iq, query.tag[1:].split("}", 1)[0])

    async def handle(self, iq, namespace: str) -> None:
        if iq["type"] not in ("get", "set"):
            return
        query = iq.xml.find(f"{{{namespace}}}query")
        archipel = query.find(f"{{{namespace}}}archipel") if query is not None else None
        action = archipel.get("action") if archipel is not None else None
        try:
            with admitted(self.entity, iq["from"], "iq", namespace, action):
                await self._serve(iq, namespace, archipel, action)
        except TooManyRequests as exc:
            self._send_error(iq, namespace, action, exc)

    async def _serve(self, iq, namespace: str, archipel: ET.Element | None, action: str | None) -> None:
        started = time.perf_counter()
        dispatched = False  # past this point run_command records the request itself
        try:
            if archipel is None:
                raise MalformedRequest("missing <archipel> element in the query")
            if not action:
                raise MalformedRequest("missing 'action' attribute on <archipel>")
            command = self.entity.agent.registry.lookup(self.entity.kind, namespace, action)
            if command is None:
                raise UnknownAction(f"unknown action '{action}' in namespace {namespace}")
            dispatched = True
            result = await run_command(self.entity, command, iq["from"], raw_arguments(archipel), "iq")
        except ArchipelError as exc:
            if not dispatched:
                record_refusal(self.entity, iq["from"], "iq", namespace, action, exc, started=started,
                               raw=raw_arguments(archipel) if archipel is not None else None)
            self._send_error(iq, namespace, action, exc)
            return
        except Exception:  # a bug must still produce a reply, never silence
            log.exception("%s: %s %s failed", self.entity.jid, namespace, action)
            self._send_error(iq, namespace, action, ArchipelError("internal error, see the agent log"))
            return
        reply = iq.reply(clear=True)
        out = ET.Element(f"{{{namespace}}}query")
        for el in as_elements(result):
            out.append(qualify(el, namespace))
        reply.append(out)
        reply.send()

    def _send_error(self, iq, namespace: str, action: str | None, error: ArchipelError) -> None:
        reply = iq.reply(clear=False)
        reply["type"] = "error"
        reply.xml.append(error_element(error, namespace, action))
        reply.send()
