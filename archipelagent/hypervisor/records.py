"""The agent's own record of the VMs it manages (SQLite, WAL, mode 0600).

This database is the only place a VM account password lives: never in the
domain XML (Archipel put it in ``<description>``), never in a log line.
libvirt stays the truth for the domains themselves; this table says which of
them are entities of this agent, under which account.
"""
from __future__ import annotations

import datetime
import json
import secrets
import string
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from ..sqlite import open_private_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    uuid TEXT PRIMARY KEY,
    jid TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    orginfo TEXT NOT NULL DEFAULT '{}'
);
"""

ALPHABET = string.ascii_letters + string.digits


def new_password(size: int) -> str:
    """A random alphanumeric account password (Archipel's alphabet, a CSPRNG)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(size))


@dataclass
class VMRecord:
    uuid: str
    jid: str
    password: str = field(repr=False)
    name: str
    created: str
    owner: str = ""
    orginfo: dict = field(default_factory=dict)


class VMStore:
    def __init__(self, db: aiosqlite.Connection):
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> "VMStore":
        db = await open_private_db(path, [SCHEMA])
        db.row_factory = aiosqlite.Row
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def add(self, record: VMRecord) -> None:
        await self._db.execute(
            "INSERT INTO vms(uuid, jid, password, name, created, owner, orginfo) VALUES (?,?,?,?,?,?,?)",
            (record.uuid, record.jid, record.password, record.name, record.created, record.owner, json.dumps(record.orginfo)),
        )
        await self._db.commit()

    async def remove(self, uuid: str) -> None:
        await self._db.execute("DELETE FROM vms WHERE uuid = ?", (uuid,))
        await self._db.commit()

    async def update(self, uuid: str, *, name: str | None = None, orginfo: dict | None = None) -> None:
        if name is not None:
            await self._db.execute("UPDATE vms SET name = ? WHERE uuid = ?", (name, uuid))
        if orginfo is not None:
            await self._db.execute("UPDATE vms SET orginfo = ? WHERE uuid = ?", (json.dumps(orginfo), uuid))
        await self._db.commit()

    async def all(self) -> list[VMRecord]:
        async with self._db.execute("SELECT * FROM vms ORDER BY name") as cursor:
            rows = await cursor.fetchall()
        return [
            VMRecord(r["uuid"], r["jid"], r["password"], r["name"], r["created"], r["owner"], json.loads(r["orginfo"] or "{}"))
            for r in rows
        ]


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
