"""``archipel:tags`` settags: an entity's tags, published in the pubsub node ``/archipel/tags``.

Archipel's shape (reference §2.1, §5): ``settags tags="a,b"`` on the hypervisor
or a VM (permission ``settags``), an empty reply, and one item per entity in
``/archipel/tags``: ``<tag jid="<bare jid>" tags="a,b"/>``, which the web
client reads for its "Étiquettes".  Differences on purpose:

* the node is created by the hypervisor entity (``xmpp/pubsub.ensure_node``:
  access model ``presence``, only the owner publishes), not by an admin tool
  with an open model; the hypervisor publishes for its VMs too;
* the item id is the entity's bare JID, so a new publication replaces the old
  one (Archipel retracted the old item and published a new random id);
  ``tags=""`` retracts it;
* tags are checked: at most 32, each 1-64 characters without control
  characters, duplicates dropped; anything else is refused with -46.

The node is the store: ejabberd persists its items (``max_items`` 1000).  A VM
freed or unmanaged here loses its item (``VMManager.add_gone_listener``): freed
VMs' items would otherwise pile up to ``max_items`` and push live ones out, and a
domain managed again later would show the tags of its former life.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
import xml.etree.ElementTree as ET

from slixmpp.exceptions import IqError, IqTimeout

from archipelagent.commands import Arg, CommandSet
from archipelagent.errors import Unavailable
from archipelagent.xmpp.pubsub import ensure_node

log = logging.getLogger(__name__)

NS = "archipel:tags"
TAGS_NODE = "/archipel/tags"
MAX_TAGS, MAX_TAG_LENGTH = 32, 64
TIMEOUT = 10
NODE_CONFIG = {
    "pubsub#access_model": "presence",  # those who see the hypervisor (holders of its presence permission)
    "pubsub#publish_model": "publishers",
    "pubsub#deliver_notifications": "1",
    "pubsub#deliver_payloads": "1",
    "pubsub#persist_items": "1",
    "pubsub#max_items": "1000",
    "pubsub#send_last_published_item": "never",
}


def parse_tags(raw: str) -> tuple[str, ...]:
    """``"a, b,,a"`` → ``("a", "b")``; ValueError names what is wrong."""
    tags: dict[str, None] = {}
    for part in raw.split(","):
        tag = part.strip()
        if not tag:
            continue
        if len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"a tag has at most {MAX_TAG_LENGTH} characters, {tag[:16]!r}… has {len(tag)}")
        if any(ord(c) < 32 or ord(c) == 127 for c in tag):
            raise ValueError("a tag cannot hold control characters")
        tags.setdefault(tag)
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    return tuple(tags)


_ENSURED: "weakref.WeakKeyDictionary[object, bool]" = weakref.WeakKeyDictionary()  # per hypervisor client
_LOCKS: "weakref.WeakKeyDictionary[object, asyncio.Lock]" = weakref.WeakKeyDictionary()


async def publish_tags(hypervisor, jid: str, tags: tuple[str, ...]) -> None:
    """Make ``/archipel/tags`` hold ``tags`` for ``jid`` (published by the online hypervisor entity)."""
    if hypervisor is None or not hypervisor.online.is_set():
        raise Unavailable("the hypervisor is not connected to the XMPP server")
    xmpp = hypervisor.xmpp
    service = hypervisor.agent.config.pubsub_server
    pubsub = xmpp.plugin["xep_0060"]
    lock = _LOCKS.setdefault(xmpp, asyncio.Lock())
    async with lock:
        for attempt in (1, 2):
            if not _ENSURED.get(xmpp):
                if not await ensure_node(xmpp, service, TAGS_NODE, NODE_CONFIG):
                    raise Unavailable(f"the pubsub node {TAGS_NODE} cannot be used (see the agent's log)")
                _ENSURED[xmpp] = True
            try:
                if tags:
                    await pubsub.publish(service, TAGS_NODE, id=jid,
                                         payload=ET.Element("tag", {"jid": jid, "tags": ",".join(tags)}),
                                         timeout=TIMEOUT)
                else:
                    await pubsub.retract(service, TAGS_NODE, jid, notify=True, timeout=TIMEOUT)
                return
            except IqError as exc:
                if not tags and exc.condition == "item-not-found":
                    return  # no tags before, none now
                if exc.condition == "item-not-found" and attempt == 1:
                    _ENSURED[xmpp] = False  # the node was deleted meanwhile: create it again
                    continue
                raise Unavailable(f"pubsub refused the tags: {exc.condition}") from None
            except IqTimeout:
                raise Unavailable("pubsub did not answer in time") from None


async def retract_tags(hypervisor, jid: str) -> None:
    """``jid`` left for good: its item goes (none to retract is no error)."""
    if hypervisor is None or not hypervisor.online.is_set():
        log.warning("tags of %s not retracted: the hypervisor is not connected", jid)
        return
    xmpp = hypervisor.xmpp
    async with _LOCKS.setdefault(xmpp, asyncio.Lock()):
        try:
            await xmpp.plugin["xep_0060"].retract(hypervisor.agent.config.pubsub_server, TAGS_NODE, jid,
                                                  notify=True, timeout=TIMEOUT)
        except IqError as exc:
            if exc.condition == "item-not-found":  # no tags (or no node yet): nothing to do
                return
            # forbidden: another hypervisor owns the node (an item it published for a VM that migrated here stays)
            log.log(logging.INFO if exc.condition == "forbidden" else logging.WARNING,
                    "tags of %s not retracted: %s", jid, exc.condition)
        except IqTimeout:
            log.warning("tags of %s not retracted: pubsub did not answer in time", jid)


async def setup(agent) -> None:
    async def forget(_uuid: str, jid: str) -> None:
        await retract_tags(agent.hypervisor, jid)
    agent.module_services["tags"] = forget
    agent.vms.add_gone_listener(forget)


async def teardown(agent) -> None:
    forget = agent.module_services.pop("tags", None)
    if forget is not None:
        agent.vms.remove_gone_listener(forget)


commands = CommandSet()


@commands.command(NS, "settags", kinds=("hypervisor", "vm"), permission="settags",
                  permission_description="Set the tags of this entity",
                  args=(Arg("tags", parse=parse_tags, required=False, default=(), rest=True,
                            help=f"comma-separated tags (at most {MAX_TAGS}); empty clears them"),),
                  chat=("settags", "tags"), help="set this entity's tags (comma-separated), shown by the web client")
async def settags(ctx, tags):
    await publish_tags(ctx.agent.hypervisor, ctx.entity.jid, tags)
    return None
