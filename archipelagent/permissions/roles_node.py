"""Publish the agent's roles to the pubsub node ``/archipel/roles`` (reference §5).

Archipel's client reads its role templates from that node: one item per role,
``<role name description creator><permission permission_name/>*</role>``.  Our
roles are server-side (``archipel:permissions`` ``setrole``), and this module
mirrors them there: the item id is the role name, roles that no longer exist
are retracted.  The hypervisor entity calls :func:`publish_roles` after every
session start and after every role change; failures are logged, never raised
(the node is a convenience for clients, the store is the truth).
"""
from __future__ import annotations

import asyncio
import logging
import weakref
import xml.etree.ElementTree as ET

from slixmpp.exceptions import IqError, IqTimeout

from ..xmpp.pubsub import ensure_node

log = logging.getLogger(__name__)

ROLES_NODE = "/archipel/roles"
# Readable by those who see the hypervisor (its presence); only the hypervisor publishes.
NODE_CONFIG = {
    "pubsub#access_model": "presence",
    "pubsub#publish_model": "publishers",
    "pubsub#deliver_notifications": "1",
    "pubsub#deliver_payloads": "1",
    "pubsub#persist_items": "1",
    "pubsub#max_items": "1000",
    "pubsub#send_last_published_item": "never",
}
TIMEOUT = 10


def role_item(role) -> ET.Element:
    el = ET.Element("role", {"name": role.name, "description": role.description or "",
                             "creator": role.creator or ""})
    for name in sorted(role.permissions):
        ET.SubElement(el, "permission", {"permission_name": name})
    return el


_LOCKS: "weakref.WeakKeyDictionary[object, asyncio.Lock]" = weakref.WeakKeyDictionary()


def _lock(entity) -> asyncio.Lock:
    """One publication at a time per hypervisor entity (kept here, not planted on the entity)."""
    lock = _LOCKS.get(entity)
    if lock is None:
        lock = _LOCKS[entity] = asyncio.Lock()
    return lock


async def publish_roles(entity) -> bool:
    """Make ``/archipel/roles`` on the agent's pubsub service hold exactly the stored roles.

    ``entity`` is the (online) hypervisor entity: it owns the node and publishes.
    Returns True when the node is in sync.
    """
    if not entity.online.is_set():
        return False  # on_online will publish
    service = entity.agent.config.pubsub_server
    pubsub = entity.xmpp.plugin["xep_0060"]
    async with _lock(entity):
        if not await ensure_node(entity.xmpp, service, ROLES_NODE, NODE_CONFIG):
            return False  # not ours (logged), or the service refused
        roles = await entity.agent.permissions.roles()
        try:
            existing = await pubsub.get_items(service, ROLES_NODE, timeout=TIMEOUT)
            present = {item["id"] for item in existing["pubsub"]["items"]}
            for role in roles:
                await pubsub.publish(service, ROLES_NODE, id=role.name, payload=role_item(role),
                                     timeout=TIMEOUT)
            for stale in sorted(present - {role.name for role in roles}):
                await pubsub.retract(service, ROLES_NODE, stale, notify=True, timeout=TIMEOUT)
        except IqError as exc:
            log.warning("cannot update pubsub node %s: %s %s", ROLES_NODE, exc.condition, exc.text)
            return False
        except IqTimeout:
            log.warning("timeout updating pubsub node %s", ROLES_NODE)
            return False
        log.debug("pubsub node %s: %d role(s)", ROLES_NODE, len(roles))
        return True
