"""``archipel:subscription`` add/remove on every entity (Archipel's §2.1).

* ``add jid``: grant ``presence`` to ``jid`` on this entity, put it in the
  entity's roster, ask for its presence (``subscribe``) and authorize it to see
  the entity's (``subscribed``).  Push ``subscription`` / ``added``.
* ``remove jid``: revoke ``presence``, ``unsubscribe`` and ``unsubscribed``,
  then delete the roster item.  Push ``subscription`` / ``removed``.

Whoever holds ``presence`` may also subscribe by themselves: the entity's
``_on_subscribe`` (xmpp/entity.py) asks :func:`decide_subscription` (handed to
it by the agent's wiring as ``Agent.subscription_policy``), which accepts them,
answers anyone else with ``unsubscribed`` and audits either way.
"""
from __future__ import annotations

import logging

from slixmpp.exceptions import IqError, IqTimeout

from ..commands import Arg, CommandSet, element
from ..audit import record_subscription
from ..errors import PermissionDenied, Unavailable
from ..jids import bare_jid_arg

log = logging.getLogger(__name__)

NS = "archipel:subscription"
PUSH = "subscription"

commands = CommandSet()


async def decide_subscription(entity, sender: str) -> bool | None:
    """May ``sender`` subscribe to ``entity``'s presence?  Only holders of ``presence``.

    ``None`` when it cannot be decided (LDAP unreachable): the request is left
    pending and decided when the client sends it again.  Every decision is audited.
    """
    try:
        allowed = await entity.agent.permissions.check(entity.jid, entity.kind, sender, "presence")
    except Unavailable as exc:
        log.warning("%s: subscription from %s left pending: %s", entity.jid, sender, exc.message)
        record_subscription(entity, sender, exc)  # error:-48
        return None
    record_subscription(entity, sender, None if allowed else PermissionDenied("presence"))
    return allowed


JID_ARG = (Arg("jid", parse=bare_jid_arg, help="the contact's bare JID"),)


async def _roster(entity, jid: str, **kwargs) -> None:
    try:
        await entity.xmpp.update_roster(jid, timeout=10, **kwargs)
    except IqError as exc:
        raise Unavailable(f"the server refused the roster change for {jid}: {exc.condition}") from None
    except IqTimeout:
        raise Unavailable(f"no answer from the server to the roster change for {jid}") from None


@commands.command(NS, "add", permission="subscription_add", args=JID_ARG, chat=("subscribe", "add contact"),
                  help="let a contact see this entity: grant presence, add to the roster, subscribe both ways")
async def add(ctx, jid):
    entity = ctx.entity
    await ctx.agent.permissions.set_permission(entity.jid, entity.kind, jid, "presence", True)
    await _roster(entity, jid, name=jid.split("@", 1)[0])
    entity.xmpp.send_presence(pto=jid, ptype="subscribed")
    entity.xmpp.send_presence(pto=jid, ptype="subscribe")
    log.info("%s: %s added %s to the roster", entity.jid, ctx.sender_bare, jid)
    await entity.push(PUSH, "added", [element("subscription", {"jid": jid})])


@commands.command(NS, "remove", permission="subscription_remove", args=JID_ARG,
                  chat=("unsubscribe", "remove contact"),
                  help="stop a contact seeing this entity: revoke presence, unsubscribe, remove from the roster")
async def remove(ctx, jid):
    entity = ctx.entity
    await ctx.agent.permissions.set_permission(entity.jid, entity.kind, jid, "presence", False)
    entity.xmpp.send_presence(pto=jid, ptype="unsubscribed")
    entity.xmpp.send_presence(pto=jid, ptype="unsubscribe")
    await _roster(entity, jid, subscription="remove")
    log.info("%s: %s removed %s from the roster", entity.jid, ctx.sender_bare, jid)
    await entity.push(PUSH, "removed", [element("subscription", {"jid": jid})])
