"""Live migration policy: pure functions, no I/O (nova's libvirt/migration.py is the model).

The agent asks libvirt for facts (domain states on both hosts, job info, disk paths) and
these functions say what they mean: whether a request may start, which libvirt flags it
uses, what progress to show, and -- after any failure -- which host keeps the VM.  The
outcome rule of issue 12: the VM runs on exactly one host, and whatever is left on the
other host (a paused incoming copy, a stale definition) is removed.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass

# libvirt's virDomainMigrateFlags (kept here so the policy needs no libvirt import)
VIR_MIGRATE_LIVE = 1
VIR_MIGRATE_PEER2PEER = 2
VIR_MIGRATE_PERSIST_DEST = 8
VIR_MIGRATE_UNDEFINE_SOURCE = 16
VIR_MIGRATE_UNSAFE = 512
VIR_MIGRATE_OFFLINE = 1024
# virDomainState / virDomainShutoffReason values the source's view after a job needs
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_SHUTOFF = 5
VIR_DOMAIN_SHUTOFF_MIGRATED = 4


class Side(enum.Enum):
    """What one host has of the VM."""
    ABSENT = "absent"    # not defined there
    SHUTOFF = "shutoff"  # defined, no QEMU
    PAUSED = "paused"    # a QEMU, paused (incoming copy not resumed, or source in its last phase)
    RUNNING = "running"  # a QEMU, running


class Keep(enum.Enum):
    """Which host keeps the VM after a migration ended (well or not)."""
    SOURCE = "source"
    DESTINATION = "destination"
    CONFLICT = "conflict"  # both run it: never decided automatically, an admin must look
    LOST = "lost"          # neither host has it


@dataclass(frozen=True)
class Outcome:
    keep: Keep
    resume: bool = False           # the kept side is paused and must be resumed
    clean_other: bool = False      # destroy/undefine what the other side still has
    reason: str = ""


def decide_outcome(source: Side, destination: Side) -> Outcome:
    """Which host keeps the VM, from libvirt's view of both after a migration attempt.

    A running destination has the guest (libvirt resumes it only after the memory moved):
    it wins over a paused or stopped source.  A destination that never resumed loses to
    any source that still has a QEMU or a definition.  With no QEMU on either side, the
    definition decides, the source first.  Two running copies is a conflict for a human.
    """
    qemu = (Side.PAUSED, Side.RUNNING)
    if source is Side.RUNNING and destination is Side.RUNNING:
        return Outcome(Keep.CONFLICT, reason="the VM runs on both hosts")
    if destination is Side.RUNNING:
        return Outcome(Keep.DESTINATION, clean_other=source is not Side.ABSENT,
                       reason="the destination runs the VM")
    if source in qemu:
        return Outcome(Keep.SOURCE, resume=source is Side.PAUSED, clean_other=destination is not Side.ABSENT,
                       reason="the migration did not complete: the source keeps its QEMU")
    if destination is Side.PAUSED:  # the source's QEMU is gone: the only copy of the memory is here
        return Outcome(Keep.DESTINATION, resume=True, clean_other=source is not Side.ABSENT,
                       reason="only the destination has a QEMU")
    if source is Side.SHUTOFF:
        return Outcome(Keep.SOURCE, clean_other=destination is not Side.ABSENT,
                       reason="no QEMU anywhere: the source's definition stays")
    if destination is Side.SHUTOFF:
        return Outcome(Keep.DESTINATION, reason="no QEMU anywhere: only the destination has a definition")
    return Outcome(Keep.LOST, reason="neither host has the VM")


def source_after_job(state: int | None, reason: int | None) -> bool | None:
    """Did the VM leave, judging from the source's domain once libvirt's job is over?

    True: gone (``state`` None: not defined any more) or shut off *because* it migrated (libvirt
    undefines it a moment later: the job ends before the source is torn down); False: running
    here (the migration failed, the source resumed it) or shut off for another reason; None:
    not settled yet (paused: the switch-over or a failure's pause), look again.
    """
    if state is None:
        return True
    if state == VIR_DOMAIN_SHUTOFF:
        return reason == VIR_DOMAIN_SHUTOFF_MIGRATED
    if state == VIR_DOMAIN_RUNNING:
        return False
    return None


def migration_flags(running: bool, *, unsafe: bool = False) -> int:
    """libvirt flags: peer-to-peer (the source libvirtd talks to the destination's, the
    agent never needs a connection there), definition moved, source undefined; live for a
    running VM, offline (definition only) for a shut-off one.  ``unsafe`` for a shared
    folder libvirt does not recognise as shared (the rig's bind mount; not NFS/GFS2)."""
    flags = VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_PERSIST_DEST | VIR_MIGRATE_UNDEFINE_SOURCE
    flags |= VIR_MIGRATE_LIVE if running else VIR_MIGRATE_OFFLINE
    if unsafe:
        flags |= VIR_MIGRATE_UNSAFE
    return flags


def progress_percent(job_info: list[int] | tuple[int, ...]) -> int | None:
    """Percent done from ``virDomain.jobInfo()`` ([type, elapsed, remaining, dataTotal,
    dataProcessed, dataRemaining, ...]); None when no job runs or nothing is known yet.
    Never 100 while the job runs: RAM dirtied again can make it go back."""
    if not job_info or len(job_info) < 6 or job_info[0] == 0:
        return None
    total, processed = job_info[3], job_info[4]
    if total <= 0:
        return None
    return max(0, min(99, int(processed * 100 // total)))


def status_text(percent: int | None) -> str:
    """The presence status shown while migrating (Archipel's words)."""
    return "Migrating" if percent is None else f"Migrating - {percent}%"


def refusal(source_jid: str, destination_jid: str, *, migrating: bool, domain_type: str,
            disk_paths: list[str], base_path: str) -> str | None:
    """Why a migration request must be refused before anything starts, or None.

    Disks must lie in the VM storage (the shared folder every hypervisor mounts at the
    same path), or the destination's QEMU could not open them."""
    if migrating:
        return "the VM is already migrating"
    if source_jid.split("/")[0] == destination_jid.split("/")[0]:
        return "the destination is the VM's own hypervisor"
    if domain_type not in ("kvm", "qemu"):
        return f"domain type {domain_type!r} cannot migrate (QEMU/KVM only)"
    base = os.path.normpath(base_path) + os.sep
    for path in disk_paths:
        if not os.path.normpath(path).startswith(base):
            return f"disk {path} is not on the shared VM storage ({base_path})"
    return None
