"""Persistent permission grants, one SQLite (WAL) file for all entities.

The store only remembers explicit rows; what a missing row means (the
permission's default, admins, ``all``) is decided by the PermissionCenter.
Entities and targets are always stored as lowercased bare JIDs so that
``Alice@Example.org/laptop`` and ``alice@example.org`` are the same person.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiosqlite

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    entity      TEXT    NOT NULL,
    target_type TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    permission  TEXT    NOT NULL,
    value       INTEGER NOT NULL,
    PRIMARY KEY (entity, target_type, target, permission)
)
"""


def bare(jid: str) -> str:
    """The lowercased bare form of ``jid`` (resource stripped): the only form we compare."""
    value = jid.strip().split("/", 1)[0].lower()
    if not value:
        raise ValueError(f"empty JID: {jid!r}")
    return value


def _prepare_file(path: Path) -> None:
    """Create the parent folder and an owner-only database file (grants are sensitive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class PermissionStore:
    """Explicit grants: (entity, target_type, target, permission) -> bool."""

    def __init__(self, db: aiosqlite.Connection, path: Path):
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | os.PathLike) -> "PermissionStore":
        path = Path(path)
        await asyncio.to_thread(_prepare_file, path)
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute(_SCHEMA)
            await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    async def set_grant(self, entity: str, target: str, permission: str, value: bool,
                        target_type: str = "user") -> None:
        await self._db.execute(
            "INSERT INTO grants (entity, target_type, target, permission, value) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (entity, target_type, target, permission) "
            "DO UPDATE SET value = excluded.value",
            (bare(entity), target_type, bare(target), permission, int(bool(value))),
        )
        await self._db.commit()

    async def revoke(self, entity: str, target: str, permission: str,
                     target_type: str = "user") -> None:
        await self._db.execute(
            "DELETE FROM grants WHERE entity = ? AND target_type = ? AND target = ? "
            "AND permission = ?",
            (bare(entity), target_type, bare(target), permission),
        )
        await self._db.commit()

    async def grants(self, entity: str, target: str,
                     target_type: str = "user") -> dict[str, bool]:
        async with self._db.execute(
            "SELECT permission, value FROM grants "
            "WHERE entity = ? AND target_type = ? AND target = ?",
            (bare(entity), target_type, bare(target)),
        ) as cursor:
            return {permission: bool(value) async for permission, value in cursor}

    async def targets(self, entity: str) -> list[tuple[str, str, str, bool]]:
        """Every explicit row of ``entity``: (target_type, target, permission, value)."""
        async with self._db.execute(
            "SELECT target_type, target, permission, value FROM grants WHERE entity = ? "
            "ORDER BY target_type, target, permission",
            (bare(entity),),
        ) as cursor:
            return [(kind, target, permission, bool(value))
                    async for kind, target, permission, value in cursor]

    async def delete_entity(self, entity: str) -> None:
        """Forget every grant on ``entity`` (it was freed; its JID may be reused)."""
        await self._db.execute("DELETE FROM grants WHERE entity = ?", (bare(entity),))
        await self._db.commit()
