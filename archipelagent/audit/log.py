"""The audit log: every command any entity serves, whatever the transport.

One row per request — IQ, chat or ad-hoc — including the refusals that happen
before a command is even found (malformed ACP, unknown action, the chat
``message`` gate).  Rows are written to their own SQLite (WAL, mode 0600)
file in batches by one background task, so recording costs the command path
a list append; :meth:`AuditLog.close` flushes whatever is pending.

Secrets never reach the file: arguments declared ``Arg(secret=True)`` and any
argument, attribute or element whose name contains one of
:data:`SECRET_WORDS` are replaced by :data:`REDACTED`.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import aiosqlite

from ..sqlite import open_private_db

from ..errors import ArchipelError, PermissionDenied
from ..values import SECRET_WORDS, is_secret_name  # noqa: F401 - SECRET_WORDS re-exported

if TYPE_CHECKING:  # pragma: no cover
    from ..commands.registry import Command

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REDACTED = "***"
MAX_VALUE_CHARS = 2000
MAX_PENDING = 50_000  # rows kept in memory while the file cannot be written
QUERY_MAX_LIMIT = 1000
TRANSPORTS = ("iq", "chat", "adhoc")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        date        TEXT    NOT NULL,
        sender      TEXT    NOT NULL,
        entity      TEXT    NOT NULL,
        transport   TEXT    NOT NULL,
        namespace   TEXT    NOT NULL,
        action      TEXT    NOT NULL,
        args        TEXT    NOT NULL,
        outcome     TEXT    NOT NULL,
        duration_ms REAL    NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS audit_date ON audit (date)",
    "CREATE INDEX IF NOT EXISTS audit_entity ON audit (entity, id)",
    "CREATE INDEX IF NOT EXISTS audit_sender ON audit (sender, id)",
)

_COLUMNS = ("date", "sender", "entity", "transport", "namespace", "action", "args", "outcome", "duration_ms")


# --------------------------------------------------------------------- values
def utc_now() -> str:
    """The current time as fixed-width UTC ISO 8601 (sorts as text)."""
    return format_date(datetime.now(timezone.utc))


def format_date(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str | datetime | None, *, now: datetime | None = None) -> str | None:
    """``since`` as stored text: an ISO date/time (UTC if no zone) or an age like ``15m``, ``2h``, ``7d``."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return format_date(value)
    match = _DURATION.match(value)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        return format_date((now or datetime.now(timezone.utc)) - timedelta(seconds=seconds))
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return format_date(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(f"expected an ISO date/time (2024-05-01T12:00) or an age (30m, 2h, 7d), got {value!r}") from None


def outcome_of(error: BaseException | None) -> str:
    """``ok``, ``denied`` (permission), ``error:<code>`` (typed errors) or ``error:internal``."""
    if error is None:
        return "ok"
    if isinstance(error, PermissionDenied):
        return "denied"
    if isinstance(error, ArchipelError):
        return f"error:{error.code}"
    if isinstance(error, asyncio.CancelledError):
        return "error:cancelled"
    return "error:internal"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _redact_element(el: ET.Element) -> ET.Element:
    """A copy of ``el`` whose secret-named attributes and elements are blanked."""
    el = copy.deepcopy(el)
    for node in el.iter():
        for key in list(node.attrib):
            if is_secret_name(_local(key)):
                node.set(key, REDACTED)
        if is_secret_name(_local(node.tag)):
            for child in list(node):
                node.remove(child)
            node.text = REDACTED
    return el


def _truncate(text: str) -> str:
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return text[:MAX_VALUE_CHARS] + f"… ({len(text) - MAX_VALUE_CHARS} more characters)"


def _render(value: Any) -> str:
    if isinstance(value, ET.Element):
        return _truncate(ET.tostring(_redact_element(value), encoding="unicode"))
    if isinstance(value, (list, tuple)):
        return _truncate("".join(_render(v) for v in value))
    return _truncate(str(value))


def audit_arguments(raw: Mapping[str, Any] | None, command: "Command | None" = None) -> dict[str, str]:
    """The request's arguments as text, secrets redacted.

    Attribute values are kept as given; XML arguments are serialised once
    (ACP child elements appear both by name and in ``__children__``: a
    command's ``children`` argument gets them all, an ``element`` argument
    its own element, and without a command they are recorded as ``children``).
    """
    if not raw:
        return {}
    args = {a.name: a for a in command.args} if command is not None else {}
    children_arg = next((a.name for a in args.values() if a.source == "children"), None)
    out: dict[str, str] = {}
    for key, value in raw.items():
        name = key
        if key == "__children__":
            if not value:
                continue
            if command is None:
                name = "children"
            elif children_arg:
                name = children_arg
            else:
                continue
        elif isinstance(value, ET.Element) and "__children__" in raw:
            declared = args.get(key)
            if declared is None or declared.source != "element":
                continue  # an ACP child by name: recorded with the children
        declared = args.get(name)
        if (declared is not None and declared.secret) or is_secret_name(name):
            out[name] = REDACTED
        elif value is None:
            continue
        else:
            out[name] = _render(value)
    return out


# ---------------------------------------------------------------------- store
class AuditLog:
    """Batched, pruned audit rows in one SQLite file."""

    def __init__(self, db: aiosqlite.Connection, path: Path, *, max_rows: int = 100_000,
                 max_days: int = 90, flush_interval: float = 0.2, batch_size: int = 100,
                 prune_interval: float = 600.0):
        self._db = db
        self.path = path
        self.max_rows = max_rows
        self.max_days = max_days
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.prune_interval = prune_interval
        self._pending: list[tuple] = []
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._closing = False
        self._closed = False
        self._dropped = 0
        self._last_prune = time.monotonic()
        self._task: asyncio.Task | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike, **options) -> "AuditLog":
        path = Path(path)
        db = await open_private_db(path, _SCHEMA, version=SCHEMA_VERSION)  # the log says who did what: 0600
        audit = cls(db, path, **options)
        await audit.prune()
        audit._task = asyncio.get_running_loop().create_task(audit._run(), name="audit-writer")
        return audit

    # -- recording --------------------------------------------------------------
    def record(self, *, sender: str, entity: str, transport: str, namespace: str | None,
               action: str | None, args: Mapping[str, str] | None = None, outcome: str = "ok",
               duration_ms: float = 0.0, date: str | None = None) -> None:
        """Queue one row; never blocks, never raises into the command path."""
        if self._closed:
            log.warning("audit log closed, not recording %s %s by %s", namespace, action, sender)
            return
        row = (
            date or utc_now(), str(sender), str(entity), transport, namespace or "", action or "",
            json.dumps(dict(args or {}), ensure_ascii=False, sort_keys=True), outcome,
            round(float(duration_ms), 3),
        )
        self._pending.append(row)
        if len(self._pending) > MAX_PENDING:
            excess = len(self._pending) - MAX_PENDING
            del self._pending[:excess]
            self._dropped += excess
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        """Write every queued row now."""
        async with self._write_lock:
            if not self._pending:
                return
            rows, self._pending = self._pending, []
            try:
                await self._db.executemany(
                    f"INSERT INTO audit ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
                await self._db.commit()
            except Exception:
                self._pending[:0] = rows  # keep them for the next attempt
                raise
            if self._dropped:
                log.error("audit log: %d rows were dropped while the database was failing", self._dropped)
                self._dropped = 0

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                if time.monotonic() - self._last_prune >= self.prune_interval:
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the writer must survive a bad moment
                log.exception("audit log: cannot write %s", self.path)
                await asyncio.sleep(min(5.0, self.flush_interval * 10))

    async def close(self) -> None:
        """Flush what is pending, stop the writer, close the file."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:  # noqa: BLE001
                log.exception("audit writer failed")
        try:
            await self.flush()
        except Exception:  # noqa: BLE001
            log.exception("audit log: %d rows could not be written on close", len(self._pending))
        self._closed = True
        await self._db.close()

    # -- rotation ---------------------------------------------------------------
    async def prune(self) -> int:
        """Drop rows older than ``max_days`` and beyond the newest ``max_rows`` (0 disables a bound)."""
        self._last_prune = time.monotonic()
        removed = 0
        async with self._write_lock:
            if self.max_days > 0:
                cutoff = format_date(datetime.now(timezone.utc) - timedelta(days=self.max_days))
                cursor = await self._db.execute("DELETE FROM audit WHERE date < ?", (cutoff,))
                removed += max(cursor.rowcount, 0)
            if self.max_rows > 0:
                cursor = await self._db.execute(
                    "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (self.max_rows,))
                removed += max(cursor.rowcount, 0)
            await self._db.commit()
        if removed:
            log.info("audit log: pruned %d rows", removed)
        return removed

    # -- reading ----------------------------------------------------------------
    async def query(self, *, entity: str | None = None, sender: str | None = None,
                    action: str | None = None, outcome: str | None = None,
                    since: str | datetime | None = None, namespace: str | None = None,
                    limit: int = 100) -> list[dict]:
        """The newest rows first, filtered; pending rows are flushed first.

        ``entity``/``sender`` compare bare JIDs (case-insensitive); ``outcome``
        ``error`` matches every ``error:<code>``; ``since`` is an ISO date/time
        or an age (``30m``, ``2h``, ``7d``).
        """
        await self.flush()
        where, params = [], []
        for column, value in (("entity", entity), ("sender", sender)):
            if value:
                where.append(f"{column} = ?")
                params.append(str(value).split("/", 1)[0].strip().lower())
        if action:
            where.append("action = ?")
            params.append(action)
        if namespace:
            where.append("namespace = ?")
            params.append(namespace)
        if outcome:
            if outcome == "error":
                where.append("outcome LIKE 'error:%'")
            else:
                where.append("outcome = ?")
                params.append(outcome)
        since_text = parse_since(since)
        if since_text:
            where.append("date >= ?")
            params.append(since_text)
        limit = max(1, min(int(limit), QUERY_MAX_LIMIT))
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        async with self._db.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
        out = []
        for row in rows:
            entry = dict(zip(("id", *_COLUMNS), row))
            entry["args"] = json.loads(entry["args"])
            out.append(entry)
        return out

    async def count(self) -> int:
        await self.flush()
        async with self._db.execute("SELECT COUNT(*) FROM audit") as cursor:
            (total,) = await cursor.fetchone()
        return total


# ------------------------------------------------------------ transport hooks
def record_request(entity, *, sender: Any, transport: str, namespace: str | None, action: str | None,
                   raw: Mapping[str, Any] | None = None, command: "Command | None" = None,
                   error: BaseException | None = None, started: float | None = None,
                   outcome: str | None = None) -> None:
    """What every transport calls (through dispatch) once a request is answered.

    ``entity`` is the serving entity; its agent's ``audit`` may be missing in
    tests that build entities by hand, and recording must never break a reply.
    """
    audit: AuditLog | None = getattr(getattr(entity, "agent", None), "audit", None)
    if audit is None:
        return
    try:
        duration = (time.perf_counter() - started) * 1000 if started is not None else 0.0
        audit.record(
            sender=str(sender).split("/", 1)[0].lower(), entity=entity.jid, transport=transport,
            namespace=namespace, action=action, args=audit_arguments(raw, command),
            outcome=outcome or outcome_of(error), duration_ms=duration,
        )
    except Exception:  # noqa: BLE001
        log.exception("audit: cannot record %s %s", namespace, action)



SUBSCRIPTION = ("presence", "subscribe")  # transport and action of a subscription decision's row


def record_subscription(entity, sender: Any, error: BaseException | None, *, started: float | None = None) -> None:
    """Audit an inbound presence subscription: accepted (``ok``), refused (``denied``), or left
    pending because the decision could not be made (e.g. ``error:-48``, LDAP unreachable)."""
    transport, action = SUBSCRIPTION
    record_request(entity, sender=sender, transport=transport, namespace="", action=action,
                   error=error, started=started)
