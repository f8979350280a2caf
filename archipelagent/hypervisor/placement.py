"""Where an evacuated VM goes: a pure function of what the peers said (no I/O).

Maintenance empties a host by live migration.  Each VM needs a peer that is online, not in
maintenance itself, below its VM limit (``[HYPERVISOR] hypervisor_max_vms``, 0 = none) and
with room for the VM's memory; among those the one with the most free memory wins (ties: the
lowest JID, so the plan is deterministic), and the plan counts what it already placed.
Largest VMs are placed first, so a big one is not left without room by small ones.  A VM that
fits nowhere is refused with the reason, and the rest of the plan stands.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Host:
    jid: str              # full JID (migration destination)
    free_kib: int         # free memory now
    vms: int              # VMs it manages now
    max_vms: int = 0      # 0: no limit
    maintenance: bool = False
    online: bool = True


@dataclass(frozen=True)
class VM:
    uuid: str
    memory_kib: int
    running: bool = True  # a shut-off VM needs no memory on arrival, only a place in the count


@dataclass(frozen=True)
class Plan:
    moves: dict[str, str]    # uuid -> destination full JID
    refused: dict[str, str]  # uuid -> why it fits nowhere


def _why_not(host: Host, vm: VM) -> str | None:
    if not host.online:
        return "offline"
    if host.maintenance:
        return "in maintenance"
    if host.max_vms and host.vms >= host.max_vms:
        return f"at its limit of {host.max_vms} VMs"
    if vm.running and host.free_kib < vm.memory_kib:
        return f"{host.free_kib // 1024} MiB free, {vm.memory_kib // 1024} MiB needed"
    return None


def place(vms: list[VM], hosts: list[Host]) -> Plan:
    """The destination of each VM, or why it has none."""
    pool = {h.jid: h for h in hosts}
    moves: dict[str, str] = {}
    refused: dict[str, str] = {}
    for vm in sorted(vms, key=lambda v: (not v.running, -v.memory_kib, v.uuid)):
        fits = [h for h in pool.values() if _why_not(h, vm) is None]
        if not fits:
            reasons = "; ".join(f"{h.jid.split('/')[0]}: {_why_not(h, vm)}" for h in sorted(pool.values(),
                                                                                          key=lambda h: h.jid))
            refused[vm.uuid] = f"no hypervisor can take it ({reasons or 'no peer hypervisor'})"
            continue
        best = min(fits, key=lambda h: (-h.free_kib, h.jid))
        moves[vm.uuid] = best.jid
        pool[best.jid] = replace(best, vms=best.vms + 1,
                                 free_kib=best.free_kib - (vm.memory_kib if vm.running else 0))
    return Plan(moves, refused)
