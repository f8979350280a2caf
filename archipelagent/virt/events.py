"""libvirt domain lifecycle events and domain states as pure tables.

Numbers are libvirt's (``VIR_DOMAIN_EVENT_*`` from ``virDomainEventType`` and
the per-event ``virDomainEvent*DetailType`` enums, ``VIR_DOMAIN_*`` from
``virDomainState``); they are part of libvirt's stable ABI, so they are spelled
out here and checked against the installed binding by the unit tests.

Event ids and state numbers are two *different* enums that overlap
numerically (event SHUTDOWN = 6 = state CRASHED, event STOPPED = 5 = state
SHUTOFF...).  Archipel compared event ids with state constants and therefore
pushed "crashed" when a guest shut down ([bug] in archipel-protocol.md §5).
Every function here takes an *event* id unless its name says "state".
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED",
    "SHUTDOWN", "PMSUSPENDED", "CRASHED",
    "EVENT_NAMES", "DETAIL_NAMES", "STATE_NAMES",
    "PUSH_NS_CONTROL", "PUSH_NS_DEFINITION", "Push",
    "event_name", "detail_name", "describe", "push_for_event",
    "state_name", "is_migration",
]

# --- virDomainEventType -------------------------------------------------------
DEFINED = 0
UNDEFINED = 1
STARTED = 2
SUSPENDED = 3
RESUMED = 4
STOPPED = 5
SHUTDOWN = 6
PMSUSPENDED = 7
CRASHED = 8

EVENT_NAMES: dict[int, str] = {
    DEFINED: "DEFINED",
    UNDEFINED: "UNDEFINED",
    STARTED: "STARTED",
    SUSPENDED: "SUSPENDED",
    RESUMED: "RESUMED",
    STOPPED: "STOPPED",
    SHUTDOWN: "SHUTDOWN",
    PMSUSPENDED: "PMSUSPENDED",
    CRASHED: "CRASHED",
}

# --- per-event detail enums ---------------------------------------------------
DETAIL_NAMES: dict[int, dict[int, str]] = {
    DEFINED: {0: "ADDED", 1: "UPDATED", 2: "RENAMED", 3: "FROM_SNAPSHOT"},
    UNDEFINED: {0: "REMOVED", 1: "RENAMED"},
    STARTED: {0: "BOOTED", 1: "MIGRATED", 2: "RESTORED", 3: "FROM_SNAPSHOT",
              4: "WAKEUP"},
    SUSPENDED: {0: "PAUSED", 1: "MIGRATED", 2: "IOERROR", 3: "WATCHDOG",
                4: "RESTORED", 5: "FROM_SNAPSHOT", 6: "API_ERROR",
                7: "POSTCOPY", 8: "POSTCOPY_FAILED"},
    RESUMED: {0: "UNPAUSED", 1: "MIGRATED", 2: "FROM_SNAPSHOT", 3: "POSTCOPY",
              4: "POSTCOPY_FAILED"},
    STOPPED: {0: "SHUTDOWN", 1: "DESTROYED", 2: "CRASHED", 3: "MIGRATED",
              4: "SAVED", 5: "FAILED", 6: "FROM_SNAPSHOT"},
    SHUTDOWN: {0: "FINISHED", 1: "GUEST", 2: "HOST"},
    PMSUSPENDED: {0: "MEMORY", 1: "DISK"},
    CRASHED: {0: "PANICKED", 1: "CRASHLOADED"},
}

# --- virDomainState (what virDomain.state()[0] returns) -----------------------
STATE_NOSTATE = 0
STATE_RUNNING = 1
STATE_BLOCKED = 2
STATE_PAUSED = 3
STATE_SHUTDOWN = 4   # being shut down
STATE_SHUTOFF = 5
STATE_CRASHED = 6
STATE_PMSUSPENDED = 7

STATE_NAMES: dict[int, str] = {
    STATE_NOSTATE: "NOSTATE",
    STATE_RUNNING: "RUNNING",
    STATE_BLOCKED: "BLOCKED",
    STATE_PAUSED: "PAUSED",
    STATE_SHUTDOWN: "SHUTDOWN",
    STATE_SHUTOFF: "SHUTOFF",
    STATE_CRASHED: "CRASHED",
    STATE_PMSUSPENDED: "PMSUSPENDED",
}

# --- Archipel pushes (archipel-protocol.md §5) --------------------------------
PUSH_NS_CONTROL = "archipel:push:virtualmachine:control"
PUSH_NS_DEFINITION = "archipel:push:virtualmachine:definition"


class Push(NamedTuple):
    """What to publish on the VM's events node: ``<push xmlns=ns change=change/>``."""
    namespace: str
    change: str


_PUSHES: dict[int, Push] = {
    DEFINED: Push(PUSH_NS_DEFINITION, "defined"),
    UNDEFINED: Push(PUSH_NS_DEFINITION, "undefined"),
    STARTED: Push(PUSH_NS_CONTROL, "created"),
    SUSPENDED: Push(PUSH_NS_CONTROL, "suspended"),
    RESUMED: Push(PUSH_NS_CONTROL, "resumed"),
    STOPPED: Push(PUSH_NS_CONTROL, "shutoff"),
    # The guest is shutting down / has finished shutting down (a STOPPED
    # event follows).  Archipel reported this as "crashed": fixed.
    SHUTDOWN: Push(PUSH_NS_CONTROL, "shutdown"),
    PMSUSPENDED: Push(PUSH_NS_CONTROL, "suspended"),
    CRASHED: Push(PUSH_NS_CONTROL, "crashed"),
}


def event_name(event: int) -> str:
    """``STARTED`` for 2; ``UNKNOWN(42)`` for ids newer than this table."""
    return EVENT_NAMES.get(event, f"UNKNOWN({event})")


def detail_name(event: int, detail: int) -> str:
    """Name of ``detail`` in the enum of ``event``: ``(STOPPED, 1)`` → ``DESTROYED``."""
    return DETAIL_NAMES.get(event, {}).get(detail, f"UNKNOWN({detail})")


def describe(event: int, detail: int) -> str:
    """Log-friendly ``STOPPED/DESTROYED``."""
    return f"{event_name(event)}/{detail_name(event, detail)}"


def push_for_event(event: int, detail: int = 0) -> Push | None:
    """The Archipel push for a lifecycle *event* (not a state!), or None.

    ``detail`` is accepted for callers' convenience and future nuance; the
    ``change`` word depends on the event only, as in Archipel:
    STOPPED/CRASHED still says "shutoff" (the domain *is* shut off; the
    preceding CRASHED event already said "crashed").
    """
    return _PUSHES.get(event)


def state_name(state: int) -> str:
    """Name of a ``virDomainState`` value (``virDomain.state()[0]``)."""
    return STATE_NAMES.get(state, f"UNKNOWN({state})")


def is_migration(event: int, detail: int) -> bool:
    """True for the events a live migration produces (source STOPPED/MIGRATED,
    SUSPENDED/MIGRATED; destination STARTED/MIGRATED, RESUMED/MIGRATED)."""
    return (event, detail) in {(STOPPED, 3), (SUSPENDED, 1), (STARTED, 1),
                               (RESUMED, 1)}
