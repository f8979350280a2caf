"""The other hypervisors, known through XMPP itself: a shared roster group.

The ejabberd admin puts the hypervisors that may exchange VMs in one shared roster group
(mod_shared_roster; its name is ``[HYPERVISOR] hypervisor_peers_group``).  ejabberd then
gives every member the others as roster items with mutual presence, so each agent sees who
is online (and its presence: ``dnd`` while its libvirt or storage is down) and sees a host
that vanishes go ``unavailable`` -- no registry of our own.  Membership is decided by the
server's admin, not by an account's name: a peer is trusted to speak for the user on whose
behalf it asks to migrate a VM here; a stranger is not.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    jid: str                  # bare JID
    resources: tuple[str, ...]  # online resources (empty: gone)
    show: str                 # of the first online resource: "" (available), "dnd", "away"...
    status: str

    @property
    def online(self) -> bool:
        return bool(self.resources)


def peers_from_roster(roster, own_jid: str, group: str) -> list[Peer]:
    """The members of ``group`` in a slixmpp roster node (``client_roster``), ourselves excluded."""
    found = []
    for jid in list(roster):
        item = roster[jid]
        if jid == own_jid or group not in (item["groups"] or []):
            continue
        resources = tuple(sorted(item.resources))
        first = item.resources[resources[0]] if resources else {}
        found.append(Peer(jid, resources, first.get("show", "") or "", first.get("status", "") or ""))
    return sorted(found, key=lambda p: p.jid)


def peers(entity) -> list[Peer]:
    """The hypervisor entity's peers, now."""
    if entity.xmpp is None:
        return []
    return peers_from_roster(entity.xmpp.client_roster, entity.jid, entity.agent.config.hypervisor.peers_group)


def is_peer(entity, jid: str) -> bool:
    """``jid`` (bare or full) is a member of the peers group, online now."""
    bare = str(jid).split("/", 1)[0]
    return any(p.jid == bare and p.online for p in peers(entity))
