"""The entity's pubsub events node and Archipel push items (reference §5)."""
from __future__ import annotations

import datetime
import logging
import uuid
import xml.etree.ElementTree as ET
from typing import Iterable

from slixmpp.exceptions import IqError, IqTimeout

from ..commands.payload import qualify

log = logging.getLogger(__name__)

NODE_CONFIG = {
    "pubsub#access_model": "open",
    "pubsub#publish_model": "publishers",
    "pubsub#deliver_notifications": "1",
    "pubsub#deliver_payloads": "1",
    "pubsub#persist_items": "0",
    "pubsub#max_items": "100",
    "pubsub#send_last_published_item": "never",
}


def events_node(bare_jid: str) -> str:
    return f"/archipel/{bare_jid}/events"


def push_element(namespace: str, change: str, children: Iterable[ET.Element] = ()) -> ET.Element:
    """``<push xmlns="archipel:push:<ns>" date=... change=...>`` (``ns`` with or without the prefix)."""
    if not namespace.startswith("archipel:push:"):
        namespace = f"archipel:push:{namespace}"
    el = ET.Element(
        f"{{{namespace}}}push",
        {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f"), "change": change},
    )
    for child in children:
        el.append(qualify(child, namespace))  # children live in the push namespace, as the client reads them
    return el


class EventsNode:
    """Creates the node once per session and publishes pushes to it."""

    def __init__(self, xmpp, service: str, bare_jid: str):
        self.xmpp = xmpp
        self.service = service
        self.node = events_node(bare_jid)
        self.ready = False

    async def ensure(self) -> None:
        form = self.xmpp.plugin["xep_0004"].make_form(ftype="submit")
        form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
        for var, value in NODE_CONFIG.items():
            form.add_field(var=var, value=value)
        try:
            await self.xmpp.plugin["xep_0060"].create_node(self.service, self.node, config=form, timeout=10)
            log.debug("created pubsub node %s", self.node)
        except IqError as exc:
            if exc.condition != "conflict":
                log.warning("cannot create pubsub node %s: %s", self.node, exc.condition)
                return
        except IqTimeout:
            log.warning("timeout creating pubsub node %s", self.node)
            return
        self.ready = True

    async def publish(self, namespace: str, change: str, children: Iterable[ET.Element] = ()) -> bool:
        if not self.ready:
            return False
        try:
            await self.xmpp.plugin["xep_0060"].publish(
                self.service, self.node, id=uuid.uuid4().hex, payload=push_element(namespace, change, children), timeout=10
            )
            return True
        except (IqError, IqTimeout) as exc:
            log.warning("push %s/%s on %s failed: %s", namespace, change, self.node, exc)
            return False
