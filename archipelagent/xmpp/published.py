"""What this agent last published on the XMPP server for each entity, to skip repeating it.

Why: after an agent restart each entity used to publish its vCard and check its
events node (three requests the first time a process saw the node) before its
presence, although the server kept both from the previous run.  At campus size
(1,000 entities per agent, issue 16) those requests were most of the agent's
work and a good share of the server's.  A digest of what was published is kept
in a small SQLite file next to the agent's other databases; a session whose
vCard digest matches skips the publish, and a node whose configuration digest
matches is trusted without a request (only an owner can delete a node; one
found missing at a push is made again, pubsub.py).

What the server holds is tied to the account: when an account is created (the
server lost it, or it is new) or removed, the entity's digests are forgotten, so
the next session publishes everything again.  An administrator who deletes
vCards on the server by hand also deletes this file (``published.sqlite3`` in
the agent's ``lib_dir``): the next start publishes everything again.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

import aiosqlite

from ..sqlite import open_private_db

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS published (
    jid TEXT NOT NULL,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (jid, kind)
);
"""
# Writes are gathered for this long: 1,000 entities logging in make one transaction, not 1,000.
FLUSH_DELAY = 1.0


def digest(value) -> str:
    """A stable digest of a JSON-able value (dict keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class PublishedMemory:
    """Digests by (entity JID, kind); in memory, written behind to SQLite when a path is given."""

    def __init__(self, db: aiosqlite.Connection | None = None, rows: dict | None = None):
        self._db = db
        self._rows: dict[tuple[str, str], str] = dict(rows or {})
        self._pending: dict[tuple[str, str], str | None] = {}  # None: delete
        self._flush_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> "PublishedMemory":
        db = await open_private_db(path, [SCHEMA])
        async with db.execute("SELECT jid, kind, digest FROM published") as cursor:
            rows = {(jid, kind): value async for jid, kind, value in cursor}
        return cls(db, rows)

    def matches(self, jid: str, kind: str, value: str) -> bool:
        return self._rows.get((jid, kind)) == value

    def remember(self, jid: str, kind: str, value: str) -> None:
        if self._rows.get((jid, kind)) == value:
            return
        self._rows[(jid, kind)] = value
        self._write((jid, kind), value)

    def forget(self, jid: str, kind: str | None = None) -> None:
        """The server no longer holds what ``jid`` published (its account was created or removed),
        or the ``kind`` given."""
        for key in [k for k in self._rows if k[0] == jid and kind in (None, k[1])]:
            del self._rows[key]
            self._write(key, None)

    def _write(self, key: tuple[str, str], value: str | None) -> None:
        if self._db is None:
            return
        self._pending[key] = value
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_DELAY)
        await asyncio.shield(self.flush())  # a stop during the write does not lose it (close waits)

    async def flush(self) -> None:
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending or self._db is None:
            return
        try:
            await self._db.executemany(
                "INSERT INTO published(jid, kind, digest) VALUES (?,?,?) "
                "ON CONFLICT(jid, kind) DO UPDATE SET digest = excluded.digest",
                [(jid, kind, value) for (jid, kind), value in pending.items() if value is not None])
            await self._db.executemany(
                "DELETE FROM published WHERE jid = ? AND kind = ?",
                [key for key, value in pending.items() if value is None])
            await self._db.commit()
        except Exception:  # noqa: BLE001 - a lost digest only costs a republish at the next start
            log.exception("cannot record what was published (%d entries)", len(pending))

    async def close(self) -> None:
        if self._flush_task and not self._flush_task.done():
            self._flush_task.cancel()
        await self.flush()
        if self._db is not None:
            await self._db.close()
            self._db = None
