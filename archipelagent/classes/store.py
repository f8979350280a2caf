"""The classes database of a hypervisor: classes (group, golden image, role, teacher, network, lease)
and their members (student uid, VM uuid, the definition made at provisioning, last change, and the
peer hypervisor holding the VM when it is not this one).
``classes.sqlite3``, 0600, WAL (``archipelagent/sqlite.py``)."""
from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

from ..sqlite import open_private_db

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS classes (name TEXT PRIMARY KEY, grp TEXT NOT NULL, golden TEXT NOT NULL, "
    "role TEXT NOT NULL, teacher TEXT NOT NULL, created TEXT NOT NULL, expiry REAL, warn TEXT, grace REAL, "
    "network TEXT)",
    "CREATE TABLE IF NOT EXISTS members (class TEXT NOT NULL, uid TEXT NOT NULL, uuid TEXT NOT NULL, "
    "definition TEXT NOT NULL, changed TEXT NOT NULL, hypervisor TEXT, PRIMARY KEY (class, uid))",
)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Classes:
    """The classes database of this hypervisor."""

    def __init__(self, database: Path):
        self.database = database
        self.db = None
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, name: str) -> asyncio.Lock:
        """One class action at a time per class: two provisions at once would both see a newcomer."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def open(self) -> None:
        self.db = await open_private_db(self.database, SCHEMA)
        async with self.db.execute("PRAGMA table_info(classes)") as cur:
            columns = {row[1] for row in await cur.fetchall()}
        if "network" not in columns:  # a database of before the class network
            await self.db.execute("ALTER TABLE classes ADD COLUMN network TEXT")
        async with self.db.execute("PRAGMA table_info(members)") as cur:
            if "hypervisor" not in {row[1] for row in await cur.fetchall()}:  # of before placement on peers
                await self.db.execute("ALTER TABLE members ADD COLUMN hypervisor TEXT")
        await self.db.commit()

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
            self.db = None

    async def get(self, name: str) -> dict | None:
        async with self.db.execute("SELECT name, grp, golden, role, teacher, created, expiry, warn, grace, network "
                                   "FROM classes WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        keys = ("name", "group", "golden", "role", "teacher", "created", "expiry", "warn", "grace", "network")
        return dict(zip(keys, row)) if row else None

    async def add(self, name, group, golden, role, teacher, network: str | None = None) -> None:
        await self.db.execute("INSERT INTO classes (name, grp, golden, role, teacher, created, network) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)", (name, group, golden, role, teacher, _now(), network))
        await self.db.commit()

    async def set_lease(self, name, expiry: float, warn: str, grace: float) -> None:
        await self.db.execute("UPDATE classes SET expiry = ?, warn = ?, grace = ? WHERE name = ?", (expiry, warn, grace, name))
        await self.db.commit()

    async def remove(self, name: str) -> None:
        await self.db.execute("DELETE FROM members WHERE class = ?", (name,))
        await self.db.execute("DELETE FROM classes WHERE name = ?", (name,))
        await self.db.commit()

    async def members(self, name: str) -> list[dict]:
        async with self.db.execute("SELECT uid, uuid, definition, changed, hypervisor FROM members WHERE class = ? "
                                   "ORDER BY uid", (name,)) as cur:
            return [dict(zip(("uid", "uuid", "definition", "changed", "hypervisor"), r)) for r in await cur.fetchall()]

    async def member_of_vm(self, uuid: str) -> tuple[dict, dict] | None:
        async with self.db.execute("SELECT class, uid, uuid, definition, changed, hypervisor FROM members "
                                   "WHERE uuid = ? AND hypervisor IS NULL", (uuid,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        member = dict(zip(("class", "uid", "uuid", "definition", "changed", "hypervisor"), row))
        return await self.get(member["class"]), member

    async def add_member(self, name, uid, uuid, definition, hypervisor: str | None = None) -> None:
        """``hypervisor``: the peer's bare JID for a VM made there (its definition is kept there)."""
        await self.db.execute("INSERT OR REPLACE INTO members (class, uid, uuid, definition, changed, hypervisor) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (name, uid, uuid, definition, _now(), hypervisor))
        await self.db.commit()

    async def touch(self, uuid: str) -> None:
        await self.db.execute("UPDATE members SET changed = ? WHERE uuid = ?", (_now(), uuid))
        await self.db.commit()

    async def remove_member(self, name, uid) -> None:
        await self.db.execute("DELETE FROM members WHERE class = ? AND uid = ?", (name, uid))
        await self.db.commit()
