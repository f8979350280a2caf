"""Class leases as scheduler jobs owned by the teacher: ``lease-warn`` (VM action
``archipel:vm:classes leasewarn``) before the expiry, ``lease-shutoff`` (``destroy``) at it,
and on the hypervisor ``lease-trash`` (``free`` of the VM) after the grace; planning again
replaces them.  Also the parsers of the lease's durations and expiry."""
from __future__ import annotations

import datetime
import re
import time

from ..errors import Unavailable
from ..scheduler import spec_at

VM_NS = "archipel:vm:classes"
HV_CONTROL = "archipel:hypervisor:control"
VM_CONTROL = "archipel:vm:control"


LEASE_JOBS = {"lease-warn", "lease-shutoff"}  # on the VM
TRASH_JOB = "lease-trash"                     # on the hypervisor: free of the VM
DURATION = re.compile(r"^(\d{1,6})([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: str) -> float:
    m = DURATION.match((value or "").strip())
    if not m:
        raise ValueError(f"expected a duration such as 30m, 2h or 7d, got {value!r}")
    return float(int(m.group(1)) * UNITS[m.group(2)])


def durations(value: str) -> str:
    parts = [p.strip() for p in (value or "").split(",") if p.strip()]
    if len(parts) > 5:
        raise ValueError("at most 5 warnings")
    for p in parts:
        duration(p)
    return ",".join(parts)


def parse_expiry(value: str) -> float:
    """``+2h``-style from now, or a local ISO date (``2026-12-24T18:00``)."""
    value = (value or "").strip()
    if value.startswith("+"):
        return time.time() + duration(value[1:])
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(f"expected +<duration> or an ISO date, got {value!r}") from None


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def scheduler_of(agent):
    found = agent.module_services.get("scheduler")
    if found is None:
        raise Unavailable("leases need the scheduler module")
    return found


async def drop_lease(agent, vm_jid: str) -> None:
    sched = scheduler_of(agent)
    await sched.remove_named(vm_jid, LEASE_JOBS)
    await sched.remove_named(agent.hypervisor.jid, {TRASH_JOB}, {"jid": vm_jid})


async def plan_lease(agent, cls: dict, vm_jid: str) -> None:
    """The lease's jobs for one VM, as the teacher: warnings, shut-off at expiry, trash after the grace."""
    sched, now, teacher = scheduler_of(agent), time.time(), cls["teacher"]
    await drop_lease(agent, vm_jid)
    expiry, grace = cls["expiry"], cls["grace"]
    note = f"lease of class {cls['name']} until {iso(expiry)}"
    for before in (cls.get("warn") or "").split(","):
        when = expiry - duration(before) if before else None
        if when is not None and when > now + 1:
            await sched.add(entity=vm_jid, job="lease-warn", namespace=VM_NS, action="leasewarn",
                            args={"expiry": iso(expiry)}, owner=teacher, spec=spec_at(when), comment=note)
    if expiry > now + 1:
        await sched.add(entity=vm_jid, job="lease-shutoff", namespace=VM_CONTROL, action="destroy", args={},
                        owner=teacher, spec=spec_at(expiry), comment=note)
    if expiry + grace > now + 1:
        await sched.add(entity=agent.hypervisor.jid, job=TRASH_JOB, namespace=HV_CONTROL, action="free",
                        args={"jid": vm_jid}, owner=teacher, spec=spec_at(expiry + grace), comment=note)
