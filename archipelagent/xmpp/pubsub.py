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


PUBSUB_NS = "http://jabber.org/protocol/pubsub"
DATA_NS = "jabber:x:data"
NODE_CONFIG_FORM_TYPE = "http://jabber.org/protocol/pubsub#node_config"


def config_form(xmpp, config: dict[str, str]):
    form = xmpp.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=NODE_CONFIG_FORM_TYPE)
    for var, value in config.items():
        form.add_field(var=var, value=value)
    return form


def config_element(config: dict[str, str]) -> ET.Element:
    """The node configuration as a plain ``jabber:x:data`` submit form."""
    form = ET.Element(f"{{{DATA_NS}}}x", {"type": "submit"})
    for var, value, ftype in (("FORM_TYPE", NODE_CONFIG_FORM_TYPE, "hidden"),
                              *((var, value, None) for var, value in config.items())):
        field = ET.SubElement(form, f"{{{DATA_NS}}}field", {"var": var, **({"type": ftype} if ftype else {})})
        ET.SubElement(field, f"{{{DATA_NS}}}value").text = value
    return form


def create_request(xmpp, service: str, node: str, config: dict[str, str]):
    """``<create node=…/><configure>form</configure>`` as plain XML: what slixmpp's
    ``create_node`` sends, without walking its stanza plugins (which cost more than
    the rest of an entity's set-up; every entity sends one at each login)."""
    iq = xmpp.Iq(sto=service, stype="set")
    pubsub = ET.SubElement(iq.xml, f"{{{PUBSUB_NS}}}pubsub")
    ET.SubElement(pubsub, f"{{{PUBSUB_NS}}}create", {"node": node})
    ET.SubElement(pubsub, f"{{{PUBSUB_NS}}}configure").append(config_element(config))
    return iq


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


async def ensure_node(xmpp, service: str, node: str, config: dict[str, str], *, known_ours: bool = False) -> bool:
    """Create ``node`` with ``config``, or make sure an existing one is ours and configured so.

    A ``conflict`` is not success: the node may have been created by someone
    else (squatted, to publish fake pushes or read ours).  Only the owner may
    read a node's affiliations; if we may not, or are not listed as owner, the
    node is refused with an error naming its owner.  A node we own is
    reconfigured (an older agent created ``open`` nodes).  ``known_ours``: this
    process already checked and configured it (only an owner can delete a node,
    so it is still ours): a ``conflict`` is then success, and a reconnection
    costs one request instead of three.
    """
    me = xmpp.boundjid.bare
    pubsub = xmpp.plugin["xep_0060"]
    for delay in (*CREATE_RETRY_DELAYS, None):
        try:
            await create_request(xmpp, service, node, config).send(timeout=TIMEOUT)
            log.debug("created pubsub node %s", node)
            return True
        except IqError as exc:
            if exc.condition == "conflict":
                if known_ours:
                    return True
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
        self._checked = False  # ownership and configuration checked once by this process

    async def ensure(self) -> None:
        if self._published.matches(self.jid, "node", self._fingerprint):
            self.ready = self._checked = True  # made and checked by this agent, in this run or an earlier one
            return
        self.ready = await ensure_node(self.xmpp, self.service, self.node, NODE_CONFIG, known_ours=self._checked)
        self._checked = self._checked or self.ready
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
                self._checked = False  # checked in full again: whoever holds that name now
                self._published.forget(self.jid, "node")
                await self.ensure()
                if not self.ready:
                    return False
            except IqTimeout as exc:
                log.warning("push %s/%s on %s failed: %s", namespace, change, self.node, exc)
                return False
        return False
