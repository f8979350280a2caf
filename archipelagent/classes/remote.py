"""Classes over several hypervisors: where each new VM goes, and asking a peer to act on one.

When this hypervisor has online peers (``hypervisor/peers.py``), the new VMs of a provisioning
run are placed by :func:`archipelagent.hypervisor.placement.place` over this host and the peers
(their ``peerinfo``: free memory, VM count and limit, maintenance), each VM counted at the
memory ``alloc`` gives.  A VM placed on a peer is made *by the peer*: this hypervisor sends it
``archipel:hypervisor:classes member`` (``op=provision``) naming the teacher.  The peer serves
that to peers only and checks everything itself, as the teacher: ``class_<op>`` on itself, the
class's network ``use``, then each step through its own dispatch (``alloc``, the disk, the
definition policy, the quota) -- it never relies on this hypervisor having checked.  The peer
keeps its own class row and member (with the definition a reset restores); this hypervisor
records the member with the peer's JID and forwards ``report`` (``op=state``), ``start``,
``stop``, ``reset``, ``delete`` and ``lease`` of that VM the same way.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import slixmpp

from ..errors import ArchipelError, Unavailable
from ..hypervisor.peers import peers
from ..hypervisor.placement import VM, Host, place

NS = "archipel:hypervisor:classes"
VM_MEMORY_KIB = 131072  # what alloc gives a VM (virt/domainxml.py), the placement's estimate
PEER_TIMEOUT = 300      # a peer's provisioning runs alloc, qemu-img and define


class PeerRefused(ArchipelError):
    """A peer hypervisor answered an error: its code and text, prefixed with its JID."""


def online_peers(agent) -> list:
    return [p for p in peers(agent.hypervisor) if p.online]


def peer_full_jid(agent, bare: str) -> str:
    """The online resource of the peer ``bare``, or Unavailable."""
    for peer in online_peers(agent):
        if peer.jid == bare:
            return f"{peer.jid}/{peer.resources[0]}"
    raise Unavailable(f"hypervisor {bare} (which holds this VM) is offline")


async def hosts(agent) -> list[Host]:
    """This host and the online peers, as the placement sees them (an HA take-over asks the same)."""
    return await agent.maintenance.placement_hosts()


async def plan(agent, uids: list[str]) -> tuple[dict[str, str | None], dict[str, str]]:
    """``uid -> None`` (this host) or a peer's full JID, and ``uid -> why it fits nowhere``.
    Without online peers every VM is made here, as on a single hypervisor."""
    if not uids or not online_peers(agent):
        return {uid: None for uid in uids}, {}
    result = place([VM(uid, VM_MEMORY_KIB) for uid in uids], await hosts(agent))
    me = agent.hypervisor.full_jid
    return {uid: None if jid == me else jid for uid, jid in result.moves.items()}, dict(result.refused)


async def ask(agent, peer: str, attrs: dict) -> list[ET.Element]:
    """``member`` on the peer (full JID) with ``attrs``; its reply's children, or PeerRefused."""
    iq = agent.hypervisor.xmpp.make_iq_set(ito=peer)
    query = ET.Element(f"{{{NS}}}query")
    ET.SubElement(query, f"{{{NS}}}archipel",
                  {"action": "member", **{k: str(v) for k, v in attrs.items() if v is not None and v != ""}})
    iq.append(query)
    try:
        reply = await iq.send(timeout=PEER_TIMEOUT)
    except slixmpp.exceptions.IqError as exc:
        error = exc.iq.xml.find("{jabber:client}error")
        raw = error.get("code") if error is not None else None
        code = int(raw) if raw and raw.lstrip("-").isdigit() else -1
        text = exc.iq["error"]["text"] or exc.iq["error"]["condition"]
        raise PeerRefused(f"{peer.split('/')[0]}: {text}", code=code) from None
    except slixmpp.exceptions.IqTimeout:
        raise Unavailable(f"{peer} did not answer") from None
    found = reply.xml.find(f"{{{NS}}}query")
    return list(found) if found is not None else []
