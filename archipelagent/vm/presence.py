"""libvirt domain state → Archipel's presence (show, status); a pure table.

The Archipel client compares some of these strings (``Not defined``), so they
are kept verbatim.
"""
from __future__ import annotations

import libvirt

STATE_PRESENCE: dict[int, tuple[str, str]] = {
    libvirt.VIR_DOMAIN_NOSTATE: ("", "No state"),
    libvirt.VIR_DOMAIN_RUNNING: ("", "Running"),
    libvirt.VIR_DOMAIN_BLOCKED: ("", "Running"),
    libvirt.VIR_DOMAIN_PAUSED: ("away", "Paused"),
    libvirt.VIR_DOMAIN_SHUTDOWN: ("", "Shutting down..."),
    libvirt.VIR_DOMAIN_SHUTOFF: ("xa", "Off"),
    libvirt.VIR_DOMAIN_CRASHED: ("xa", "Crashed"),
    libvirt.VIR_DOMAIN_PMSUSPENDED: ("away", "Paused"),
}
NOT_DEFINED = ("xa", "Not defined")

HUMAN_STATE: dict[int, str] = {
    libvirt.VIR_DOMAIN_NOSTATE: "in no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running (blocked)",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended by the guest",
}


def human_state(state: int) -> str:
    return HUMAN_STATE.get(state, f"in state {state}")
LIBVIRT_LOST = ("dnd", "Libvirt connection lost")


def presence_for_state(state: int | None) -> tuple[str, str]:
    """``None`` means the domain does not exist in libvirt."""
    if state is None:
        return NOT_DEFINED
    return STATE_PRESENCE.get(state, ("", "Unknown state"))
