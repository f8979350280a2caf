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
from slixmpp.xmlstream.matcher import MatchXPath

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


class AcpTransport:
    """Serves every namespace of an entity kind on one slixmpp client."""

    def __init__(self, entity: "Entity"):
        self.entity = entity

    def install(self) -> None:
        xmpp = self.entity.xmpp
        for namespace in self.entity.agent.registry.namespaces(self.entity.kind):
            xmpp.register_handler(
                CoroutineCallback(
                    f"acp {namespace}",
                    MatchXPath(f"{{{xmpp.default_ns}}}iq/{{{namespace}}}query"),
                    self._make_handler(namespace),
                )
            )

    def _make_handler(self, namespace: str):
        async def handler(iq) -> None:
            await self.handle(iq, namespace)

        return handler

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
