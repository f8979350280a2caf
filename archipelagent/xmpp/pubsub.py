"""The entity's pubsub events node and Archipel push items (reference §5)."""
from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
import xml.etree.ElementTree as ET
from typing import Iterable

from slixmpp.exceptions import IqError, IqTimeout

from ..xmlns import qualify
from .published import PublishedMemory, digest

log = logging.getLogger(__name__)

# Who may read a node: ``presence`` = those subscribed to the owner's presence,
# which the agent grants only to holders of the ``presence`` permission on the
# entity (xmpp/entity.py).  Never ``open``: pushes name permission targets and
# disk paths.  Only the owner (the entity) publishes.
NODE_CONFIG = {
    "pubsub#access_model": "presence",
    "pubsub#publish_model": "publishers",
    "pubsub#deliver_notifications": "1",
    "pubsub#deliver_payloads": "1",
    "pubsub#persist_items": "0",
    "pubsub#max_items": "100",
    "pubsub#send_last_published_item": "never",
}
TIMEOUT = 10
# ejabberd answers internal-server-error when many nodes are created at once (a
# transaction conflict in its pubsub tables): such answers are worth a retry.
TRANSIENT_CONDITIONS = {"internal-server-error", "resource-constraint"}
CREATE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


def config_form(xmpp, config: dict[str, str]):
    form = xmpp.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
    for var, value in config.items():
        form.add_field(var=var, value=value)
    return form


async def node_owners(xmpp, service: str, node: str) -> list[str]:
    """Who the pubsub service says owns ``node`` (disco#info meta-data; best effort, may be empty)."""
    try:
        info = await xmpp.plugin["xep_0030"].get_info(jid=service, node=node, timeout=TIMEOUT)
    except (IqError, IqTimeout):
        return []
    owners: list[str] = []
    for form in info["disco_info"].xml.iter("{jabber:x:data}x"):
        for field in form.iter("{jabber:x:data}field"):
            if field.get("var") in ("pubsub#owner", "pubsub#creator"):
                owners += [v.text for v in field.iter("{jabber:x:data}value") if v.text and v.text not in owners]
    return owners


async def ensure_node(xmpp, service: str, node: str, config: dict[str, str]) -> bool:
    """Create ``node`` with ``config``, or make sure an existing one is ours and configured so.

    A ``conflict`` is not success: the node may have been created by someone
    else (squatted, to publish fake pushes or read ours).  Only the owner may
    read a node's affiliations; if we may not, or are not listed as owner, the
    node is refused with an error naming its owner.  A node we own is
    reconfigured (an older agent created ``open`` nodes).  A node this agent
    already checked is not asked about again (``EventsNode``, published.py).
    """
    me = xmpp.boundjid.bare
    pubsub = xmpp.plugin["xep_0060"]
    for delay in (*CREATE_RETRY_DELAYS, None):
        try:
            await pubsub.create_node(service, node, config=config_form(xmpp, config), timeout=TIMEOUT)
            log.debug("created pubsub node %s", node)
            return True
        except IqError as exc:
            if exc.condition == "conflict":
                break
            if exc.condition not in TRANSIENT_CONDITIONS or delay is None:
                log.warning("cannot create pubsub node %s: %s", node, exc.condition)
                return False
            log.info("creating pubsub node %s: %s, trying again in %s s", node, exc.condition, delay)
        except IqTimeout:  # not retried: the entity would stay offline for minutes
            log.warning("timeout creating pubsub node %s", node)
            return False
        await asyncio.sleep(delay)
    try:
        result = await pubsub.get_node_affiliations(service, node, timeout=TIMEOUT)
        owned = any(aff["jid"].bare == me and aff["affiliation"] == "owner"
                    for aff in result["pubsub_owner"]["affiliations"])
    except IqError as exc:
        if exc.condition not in ("forbidden", "not-authorized", "item-not-found"):
            log.warning("cannot read the affiliations of pubsub node %s: %s", node, exc.condition)
            return False
        owned = False
    except IqTimeout:
        log.warning("timeout reading the affiliations of pubsub node %s", node)
        return False
    if not owned:
        owners = await node_owners(xmpp, service, node)
        log.error("pubsub node %s on %s is owned by %s, not by %s: refusing to use it "
                  "(an administrator must delete it)", node, service,
                  ", ".join(owners) or "someone else", me)
        return False
    try:
        await pubsub.set_node_config(service, node, config_form(xmpp, config), timeout=TIMEOUT)
    except (IqError, IqTimeout) as exc:
        log.error("cannot reconfigure pubsub node %s: %s: refusing to use it", node, exc)
        return False
    return True


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
    """Makes sure of the node at each session and publishes pushes to it.

    A node this agent made or checked before, in this run or an earlier one
    (same service, node and configuration: ``published``), is trusted without a
    request: only its owner can delete it, and an account made again forgets it.
    A node found missing when a push is published anyway (deleted by a server
    administrator) is made again at once and the push sent to it.
    """

    def __init__(self, xmpp, service: str, bare_jid: str, published: PublishedMemory | None = None):
        self.xmpp = xmpp
        self.service = service
        self.jid = bare_jid
        self.node = events_node(bare_jid)
        self.ready = False
        self._published = published or PublishedMemory()
        self._fingerprint = digest([service, self.node, NODE_CONFIG])

    async def ensure(self) -> None:
        if self._published.matches(self.jid, "node", self._fingerprint):
            self.ready = True  # made and checked by this agent, in this run or an earlier one
            return
        self.ready = await ensure_node(self.xmpp, self.service, self.node, NODE_CONFIG)
        if self.ready:
            self._published.remember(self.jid, "node", self._fingerprint)

    async def publish(self, namespace: str, change: str, children: Iterable[ET.Element] = ()) -> bool:
        if not self.ready:
            return False
        for attempt in (1, 2):
            try:
                await self.xmpp.plugin["xep_0060"].publish(
                    self.service, self.node, id=uuid.uuid4().hex, payload=push_element(namespace, change, children),
                    timeout=10)
                return True
            except IqError as exc:
                if exc.condition != "item-not-found" or attempt == 2:
                    log.warning("push %s/%s on %s failed: %s", namespace, change, self.node, exc)
                    return False
                log.warning("pubsub node %s is gone: making it again", self.node)
                self._published.forget(self.jid, "node")  # checked in full: whoever holds that name now
                await self.ensure()
                if not self.ready:
                    return False
            except IqTimeout as exc:
                log.warning("push %s/%s on %s failed: %s", namespace, change, self.node, exc)
                return False
        return False
