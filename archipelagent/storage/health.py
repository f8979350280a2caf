"""Health of the VM storage (``vm_base_path``, the DRBD-replicated NFS mount).

A timer probes the mount every ``[STORAGE] storage_check_interval`` seconds:
does the folder exist (and is it a mount point, when
``storage_require_mountpoint`` says it must be), can a file be created,
written, fsync'ed and removed in ``<vm_base_path>/.health/``, how long the
fsync took, how much space is left.

Every filesystem call runs in one dedicated daemon thread: a hung NFS mount
blocks that thread, never the event loop.  A probe that has not answered
after ``2 × interval`` counts as failed ("not responding"); while it stays
stuck no second probe is queued behind it.

State is ``ok`` or ``degraded`` with reasons.  Transitions are pushed on the
hypervisor's events node (``archipel:push:hypervisor:storage``, change
``degraded`` / ``recovered``, one ``<reason>`` child per reason) and shown in
its presence.  While degraded, commands that write to the storage call
:meth:`StorageHealth.require_writable` and are refused with
:class:`StorageDegraded`; running VMs are never touched.  On recovery the
guests libvirt paused because of an I/O error (disks use
``error_policy='stop'``) are resumed — only those, never a guest a user paused.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import os
import queue
import re
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import libvirt

from ..config import ConfigError
from ..errors import ArchipelError, Unavailable
from ..xmlns import element

if TYPE_CHECKING:  # pragma: no cover
    from ..agent import Agent

log = logging.getLogger(__name__)

SECTION = "STORAGE"
PUSH_NS = "hypervisor:storage"          # archipel:push:hypervisor:storage
HEALTH_DIR = ".health"
PROBE_BYTES = 4096
SLOW_FSYNC_STRIKES = 3                  # consecutive slow fsyncs before it degrades
MAX_RESUME_ATTEMPTS = 3                 # per guest, between two recoveries

OK = "ok"
DEGRADED = "degraded"

# Reasons that say the storage cannot be written at all (vs. slow / nearly full).
NOT_WRITABLE = "not writable"
MISSING = "missing"
NOT_MOUNTED = "not mounted"
NOT_RESPONDING = "not responding"


class StorageDegraded(Unavailable):
    """A command that writes to the VM storage, refused while it is degraded (-48)."""

    def __init__(self, action: str, reasons: list[str]):
        why = ", ".join(reasons) or "degraded"
        super().__init__(f"storage degraded ({why}): '{action}' refused until it recovers")
        self.action = action
        self.reasons = list(reasons)


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class StorageSettings:
    check_interval: float = 10.0
    fsync_warning_ms: float = 500.0     # 0: fsync latency is not judged
    min_free_percent: float = 5.0       # 0: free space is not judged
    require_mountpoint: bool = False

    @property
    def probe_timeout(self) -> float:
        return 2 * self.check_interval

    @classmethod
    def from_config(cls, config) -> "StorageSettings":
        """The optional ``[STORAGE]`` keys, validated; errors name file, section and key."""
        parser, path = config.parser, config.path
        if parser is None or not parser.has_section(SECTION):
            return cls()

        def raw(key: str) -> str | None:
            value = parser.get(SECTION, key, fallback=None, raw=True)
            return None if value is None or not value.strip() else value.strip()

        def number(key: str, default: float, *, minimum: float, strict: bool, maximum: float | None = None) -> float:
            text = raw(key)
            if text is None:
                return default
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            bad = value != value or value in (float("inf"), float("-inf")) or value < minimum \
                or (strict and value == minimum) or (maximum is not None and value > maximum)
            if bad:
                bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
                if maximum is not None:
                    bound += f" and <= {maximum:g}"
                raise ConfigError(path, SECTION, key, f"expected a number {bound}, found {text!r}")
            return value

        require = raw("storage_require_mountpoint")
        if require is None:
            require_mountpoint = False
        elif require.lower() in parser.BOOLEAN_STATES:
            require_mountpoint = parser.BOOLEAN_STATES[require.lower()]
        else:
            raise ConfigError(path, SECTION, "storage_require_mountpoint",
                              f"expected a boolean (true/false, yes/no, on/off, 1/0), found {require!r}")
        return cls(
            check_interval=number("storage_check_interval", 10.0, minimum=0.1, strict=False, maximum=3600),
            fsync_warning_ms=number("storage_fsync_warning_ms", 500.0, minimum=0, strict=False),
            min_free_percent=number("storage_min_free_percent", 5.0, minimum=0, strict=False, maximum=100),
            require_mountpoint=require_mountpoint,
        )


# --------------------------------------------------------------------- probe
@dataclass
class ProbeResult:
    """What one probe saw; ``errors`` maps a blocking reason to the OS's words."""

    exists: bool = False
    mounted: bool = False
    writable: bool = False
    fsync_ms: float | None = None
    free_bytes: int | None = None
    total_bytes: int | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def free_percent(self) -> float | None:
        if not self.total_bytes or self.free_bytes is None:
            return None
        return 100.0 * self.free_bytes / self.total_bytes


def probe_name() -> str:
    """One probe file per agent: hypervisors share the mount."""
    return f"probe-{socket.gethostname()}-{os.getpid()}"


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def is_mount_point(path: Path) -> bool:
    """``os.path.ismount`` misses bind mounts of the same filesystem: also ask the kernel's list."""
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return any(len(fields) > 4 and _unescape_mountinfo(fields[4]) == real
                       for fields in (line.split() for line in f))
    except OSError:
        return False


def probe(path: Path) -> ProbeResult:
    """Blocking: look at ``path`` and write+fsync+unlink a probe file in it."""
    result = ProbeResult()
    try:
        st = os.stat(path)
    except OSError as exc:
        result.errors[MISSING] = exc.strerror or str(exc)
        return result
    if not stat.S_ISDIR(st.st_mode):
        result.errors[MISSING] = "not a directory"
        return result
    result.exists = True
    result.mounted = is_mount_point(path)
    try:
        sv = os.statvfs(path)
        result.total_bytes = sv.f_blocks * sv.f_frsize
        result.free_bytes = sv.f_bavail * sv.f_frsize
    except OSError as exc:
        result.errors[NOT_WRITABLE] = f"statvfs: {exc.strerror or exc}"
    health = Path(path) / HEALTH_DIR
    target = health / probe_name()
    try:
        try:
            os.mkdir(health, 0o700)
        except FileExistsError:
            pass
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            start = time.perf_counter()
            os.fsync(fd)
            result.fsync_ms = (time.perf_counter() - start) * 1000
        finally:
            os.close(fd)
        os.unlink(target)
        result.writable = True
    except OSError as exc:
        result.errors[NOT_WRITABLE] = exc.strerror or str(exc)
    return result


def judge(result: ProbeResult, settings: StorageSettings, slow_strikes: int) -> list[str]:
    """The reasons ``result`` is degraded (empty: healthy).  ``slow_strikes``
    counts consecutive slow fsyncs including this one."""
    reasons = []
    if MISSING in result.errors:
        return [MISSING]
    if settings.require_mountpoint and not result.mounted:
        reasons.append(NOT_MOUNTED)
    if NOT_WRITABLE in result.errors:
        reasons.append(NOT_WRITABLE)
    if settings.fsync_warning_ms and result.fsync_ms is not None and result.fsync_ms > settings.fsync_warning_ms \
            and slow_strikes >= SLOW_FSYNC_STRIKES:
        reasons.append(f"slow fsync ({result.fsync_ms:.0f} ms > {settings.fsync_warning_ms:g} ms)")
    free = result.free_percent
    if settings.min_free_percent and free is not None and free < settings.min_free_percent:
        reasons.append(f"low free space ({free:.1f}% < {settings.min_free_percent:g}%)")
    return reasons


def should_resume(state: int, reason: int) -> bool:
    """A guest libvirt paused because of an I/O error (never one a user paused)."""
    return state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR


# -------------------------------------------------------------------- worker
class _Worker:
    """One daemon thread running blocking calls in order (a hung NFS call hangs it, not us,
    and does not keep the process alive at exit)."""

    def __init__(self, name: str = "storage-health"):
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                future.set_exception(exc)

    def submit(self, fn: Callable) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future

    def close(self) -> None:
        self._queue.put(None)


# ------------------------------------------------------------------- monitor
def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StorageHealth:
    """The storage monitor of one agent (``agent.storage_health``)."""

    def __init__(self, agent: "Agent", path: Path, settings: StorageSettings, *,
                 probe_fn: Callable[[Path], ProbeResult] = probe):
        self.agent = agent
        self.path = Path(path)
        self.settings = settings
        self._probe_fn = probe_fn
        self.state = OK
        self.reasons: list[str] = []
        self.last: ProbeResult | None = None
        self.checked_at: str | None = None
        self._slow = 0
        self._inflight: concurrent.futures.Future | None = None
        self._inflight_since = 0.0
        self._worker: _Worker | None = None
        self._task: asyncio.Task | None = None
        self._io_error_pending: set[str] = set()   # uuids paused by an I/O error event
        self._resume_attempts: dict[str, int] = {}
        self.checks = 0

    # ---------------------------------------------------------------- API
    @property
    def ok(self) -> bool:
        return self.state == OK

    def require_writable(self, action: str) -> None:
        """Raise :class:`StorageDegraded` while the storage is degraded."""
        if not self.ok:
            raise StorageDegraded(action, self.reasons)

    def presence(self) -> tuple[str, str] | None:
        """(status, show) for the hypervisor while degraded, else None."""
        if self.ok:
            return None
        return f"Storage degraded: {', '.join(self.reasons)}", "dnd"

    # ------------------------------------------------------------ running
    def start(self) -> None:
        self._worker = _Worker()
        self._task = self.agent.spawn(self._run(), name="storage-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the monitor must survive anything
                log.exception("storage health check failed")
            await asyncio.sleep(self.settings.check_interval)

    async def _probe(self) -> ProbeResult | None:
        """One probe in the worker thread; None when it did not answer in time."""
        if self._worker is None:
            self._worker = _Worker()
        loop = asyncio.get_running_loop()
        if self._inflight is None or self._inflight.done():
            self._inflight = self._worker.submit(lambda: self._probe_fn(self.path))
            self._inflight_since = loop.time()
        future = self._inflight
        remaining = self._inflight_since + self.settings.probe_timeout - loop.time()
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), max(0.0, remaining))
        except asyncio.TimeoutError:
            return None
        self._inflight = None
        return result

    async def check(self) -> list[str]:
        """Probe once (bounded by the timeout), update the state; the reasons."""
        result = await self._probe()
        self.checks += 1
        self.checked_at = _now_iso()
        if result is None:
            reasons = [NOT_RESPONDING]
            log.warning("storage %s: probe did not answer for %.1f s", self.path, self.settings.probe_timeout)
        else:
            self.last = result
            slow = (self.settings.fsync_warning_ms and result.fsync_ms is not None
                    and result.fsync_ms > self.settings.fsync_warning_ms)
            self._slow = self._slow + 1 if slow else 0
            if slow:
                log.warning("storage %s: fsync took %.0f ms (> %g ms, %d in a row)", self.path,
                            result.fsync_ms, self.settings.fsync_warning_ms, self._slow)
            reasons = judge(result, self.settings, self._slow)
            level = logging.WARNING if reasons != self.reasons else logging.DEBUG  # once per change
            for reason, detail in result.errors.items():
                log.log(level, "storage %s: %s: %s", self.path, reason, detail)
        await self._apply(reasons)
        return reasons

    async def _apply(self, reasons: list[str]) -> None:
        previous = self.reasons
        self.reasons = list(reasons)
        if reasons:
            self.state = DEGRADED
            if reasons != previous:
                log.warning("storage %s degraded: %s", self.path, ", ".join(reasons))
                await self._announce("degraded", reasons)
        else:
            self.state = OK
            if previous:
                log.info("storage %s recovered", self.path)
                self._resume_attempts.clear()
                await self._announce("recovered", [])
                await self.resume_paused_guests()
            elif self._io_error_pending:
                await self.resume_paused_guests(only=set(self._io_error_pending))

    async def _announce(self, change: str, reasons: list[str]) -> None:
        hv = self.agent.hypervisor
        if hv is None:
            return
        hv.refresh_presence()
        children = [element("reason", text=r) for r in reasons]
        try:
            if not await hv.push(PUSH_NS, change, children):
                log.info("storage push %s not delivered (hypervisor not online)", change)
        except Exception as exc:  # noqa: BLE001 - a push never breaks the monitor
            log.warning("storage push %s failed: %s", change, exc)

    # ------------------------------------------------------ paused guests
    def on_lifecycle(self, uuid: str, event: int, detail: int) -> None:
        """libvirt lifecycle listener: note guests suspended by an I/O error."""
        if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED and detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR:
            log.warning("VM %s paused by an I/O error (storage %s)", uuid, self.state)
            self._io_error_pending.add(uuid)

    async def resume_paused_guests(self, only: set[str] | None = None) -> list[str]:
        """Resume the managed guests libvirt paused for an I/O error; their uuids."""
        conn = self.agent.libvirt
        if not conn.connected:
            return []
        managed = set(self.agent.vms.entities)
        wanted = managed if only is None else managed & only

        def paused_by_io(c: libvirt.virConnect) -> list[str]:
            found = []
            for dom, stats in c.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE,
                                                  libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PAUSED):
                if should_resume(stats.get("state.state", -1), stats.get("state.reason", -1)):
                    found.append(dom.UUIDString().lower())
            return found

        try:
            candidates = [u for u in await conn.call(paused_by_io, conn.raw) if u in wanted]
        except ArchipelError as exc:
            log.warning("cannot list guests paused by I/O errors: %s", exc.message)
            return []
        if only is None:
            self._io_error_pending.clear()
        else:
            self._io_error_pending.difference_update(only)
        resumed = []
        for uuid in candidates:
            attempts = self._resume_attempts.get(uuid, 0)
            if attempts >= MAX_RESUME_ATTEMPTS:
                log.warning("VM %s: paused by I/O errors again after %d resumes; left paused", uuid, attempts)
                continue
            self._resume_attempts[uuid] = attempts + 1
            try:
                dom = await conn.lookup(uuid)
                state, reason = await conn.call(dom.state)
                if not should_resume(state, reason):   # changed meanwhile (e.g. a user acted)
                    continue
                await conn.call(dom.resume)
                resumed.append(uuid)
                log.info("VM %s resumed after the storage recovered", uuid)
            except ArchipelError as exc:
                log.warning("VM %s: resume after I/O error failed: %s", uuid, exc.message)
        return resumed

    # ------------------------------------------------------------ report
    def element(self):
        last = self.last
        attrs = {"path": str(self.path), "state": self.state, "checked_at": self.checked_at or ""}
        if last is not None:
            attrs["mounted"] = "true" if last.mounted else "false"
            if last.free_bytes is not None:
                attrs["free_bytes"] = last.free_bytes
            if last.total_bytes is not None:
                attrs["total_bytes"] = last.total_bytes
            if last.fsync_ms is not None:
                attrs["fsync_ms"] = f"{last.fsync_ms:.1f}"
        return element("storage", attrs, children=[element("reason", text=r) for r in self.reasons])


def require_writable(agent, action: str) -> None:
    """For every command that writes to the storage (no-op without a monitor)."""
    health = agent.storage_health
    if health is not None:
        health.require_writable(action)
