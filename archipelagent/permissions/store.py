"""Persistent permission grants and roles, one SQLite (WAL) file for all entities.

The store only remembers explicit rows; what a missing row means (the
permission's default, admins, ``all``) is decided by the PermissionCenter.

``grants(entity, target_type, target, permission, value)`` holds, per entity:

* ``user``       — target a bare JID, permission a permission name;
* ``group``      — target an LDAP group cn, permission a permission name;
* ``role_user``  — target a bare JID, permission a *role* name (value 1);
* ``role_group`` — target an LDAP group cn, permission a *role* name (value 1).

Roles are global: ``roles(name, description, creator)`` and
``role_permissions(role, permission)``.  Quotas (see ``archipelagent.quotas``)
live here too, global as well: ``quotas(target_type, target, vms, vcpus,
memory, disk)`` with ``target_type`` ``user`` (a bare JID) or ``group`` (an
LDAP group cn); NULL means unlimited.  Entities and user targets are stored
as lowercased bare JIDs so that ``Alice@Example.org/laptop`` and
``alice@example.org`` are the same person; group and role names are
lowercased.  Nothing here is cached: every check reads the database, so a
revocation takes effect on the next request.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from ..jids import bare_jid
from ..sqlite import open_private_db

SCHEMA_VERSION = 3

USER, GROUP, ROLE_USER, ROLE_GROUP = "user", "group", "role_user", "role_group"
TARGET_TYPES = (USER, GROUP, ROLE_USER, ROLE_GROUP)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS grants (
        entity      TEXT    NOT NULL,
        target_type TEXT    NOT NULL,
        target      TEXT    NOT NULL,
        permission  TEXT    NOT NULL,
        value       INTEGER NOT NULL,
        PRIMARY KEY (entity, target_type, target, permission)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS roles (
        name        TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        creator     TEXT NOT NULL DEFAULT ''
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS role_permissions (
        role        TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
        permission  TEXT NOT NULL,
        PRIMARY KEY (role, permission)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS quotas (
        target_type TEXT    NOT NULL,
        target      TEXT    NOT NULL,
        vms         INTEGER,
        vcpus       INTEGER,
        memory      INTEGER,
        disk        INTEGER,
        PRIMARY KEY (target_type, target)
    )
    """,
)

QUOTA_RESOURCES = ("vms", "vcpus", "memory", "disk")


@dataclass(frozen=True)
class Role:
    name: str
    permissions: frozenset[str]
    description: str = ""
    creator: str = ""


@dataclass(frozen=True)
class EntityRows:
    """Everything stored on one entity that may matter for one user's decision."""

    user: dict[str, bool]                  # the user's own rows
    user_roles: frozenset[str]             # roles granted to the user
    groups: dict[str, dict[str, bool]]     # group cn -> rows
    group_roles: dict[str, frozenset[str]]  # group cn -> roles granted to the group


def name_key(name: str) -> str:
    """The stored form of a group or role name."""
    value = name.strip().lower()
    if not value:
        raise ValueError(f"empty name: {name!r}")
    return value


def normalise_target(target: str, target_type: str) -> str:
    if target_type not in TARGET_TYPES:
        raise ValueError(f"unknown target type {target_type!r}")
    return bare(target) if target_type in (USER, ROLE_USER) else name_key(target)


def bare(jid: str) -> str:
    """The lowercased bare form of ``jid`` (resource stripped): the only form we compare."""
    value = bare_jid(jid)
    if not value:
        raise ValueError(f"empty JID: {jid!r}")
    return value


class PermissionStore:
    """Explicit grants: (entity, target_type, target, permission) -> bool."""

    def __init__(self, db: aiosqlite.Connection, path: Path):
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | os.PathLike) -> "PermissionStore":
        path = Path(path)
        db = await open_private_db(path, _SCHEMA, version=SCHEMA_VERSION, pragmas=("foreign_keys=ON",))
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
            (bare(entity), target_type, normalise_target(target, target_type), permission,
             int(bool(value))),
        )
        await self._db.commit()

    async def revoke(self, entity: str, target: str, permission: str,
                     target_type: str = "user") -> None:
        await self._db.execute(
            "DELETE FROM grants WHERE entity = ? AND target_type = ? AND target = ? "
            "AND permission = ?",
            (bare(entity), target_type, normalise_target(target, target_type), permission),
        )
        await self._db.commit()

    async def grants(self, entity: str, target: str,
                     target_type: str = "user") -> dict[str, bool]:
        async with self._db.execute(
            "SELECT permission, value FROM grants "
            "WHERE entity = ? AND target_type = ? AND target = ?",
            (bare(entity), target_type, normalise_target(target, target_type)),
        ) as cursor:
            return {permission: bool(value) async for permission, value in cursor}

    async def rows_for(self, entity: str, user: str) -> EntityRows:
        """The user's rows and roles plus every group's rows and roles on ``entity``, in one query."""
        user_rows: dict[str, bool] = {}
        user_roles: set[str] = set()
        groups: dict[str, dict[str, bool]] = {}
        group_roles: dict[str, set[str]] = {}
        async with self._db.execute(
            "SELECT target_type, target, permission, value FROM grants "
            "WHERE entity = ? AND (target_type IN ('group', 'role_group') "
            "OR (target_type IN ('user', 'role_user') AND target = ?))",
            (bare(entity), bare(user)),
        ) as cursor:
            async for target_type, target, permission, value in cursor:
                if target_type == USER:
                    user_rows[permission] = bool(value)
                elif target_type == ROLE_USER:
                    if value:
                        user_roles.add(permission)
                elif target_type == GROUP:
                    groups.setdefault(target, {})[permission] = bool(value)
                elif value:
                    group_roles.setdefault(target, set()).add(permission)
        return EntityRows(user_rows, frozenset(user_roles), groups,
                          {group: frozenset(names) for group, names in group_roles.items()})

    # -- roles -----------------------------------------------------------------

    async def roles(self) -> dict[str, Role]:
        found: dict[str, tuple[str, str, set[str]]] = {}
        async with self._db.execute(
            "SELECT r.name, r.description, r.creator, p.permission FROM roles r "
            "LEFT JOIN role_permissions p ON p.role = r.name ORDER BY r.name, p.permission",
        ) as cursor:
            async for name, description, creator, permission in cursor:
                entry = found.setdefault(name, (description, creator, set()))
                if permission is not None:
                    entry[2].add(permission)
        return {name: Role(name, frozenset(perms), description, creator)
                for name, (description, creator, perms) in found.items()}

    async def role_permissions(self, names) -> dict[str, frozenset[str]]:
        """Permissions of each existing role among ``names`` (missing roles are absent)."""
        names = sorted({name_key(name) for name in names})
        if not names:
            return {}
        marks = ", ".join("?" for _ in names)
        found: dict[str, set[str]] = {}
        async with self._db.execute(
            f"SELECT r.name, p.permission FROM roles r "
            f"LEFT JOIN role_permissions p ON p.role = r.name WHERE r.name IN ({marks})",
            names,
        ) as cursor:
            async for name, permission in cursor:
                perms = found.setdefault(name, set())
                if permission is not None:
                    perms.add(permission)
        return {name: frozenset(perms) for name, perms in found.items()}

    async def set_role(self, name: str, permissions, description: str = "",
                       creator: str = "") -> None:
        """Create or replace the role ``name`` (its grants on entities are kept)."""
        name = name_key(name)
        await self._db.execute(
            "INSERT INTO roles (name, description, creator) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET description = excluded.description, "
            "creator = excluded.creator",
            (name, description, creator),
        )
        await self._db.execute("DELETE FROM role_permissions WHERE role = ?", (name,))
        await self._db.executemany(
            "INSERT INTO role_permissions (role, permission) VALUES (?, ?)",
            [(name, permission) for permission in sorted(set(permissions))],
        )
        await self._db.commit()

    async def delete_role(self, name: str) -> bool:
        """Delete the role and every grant of it; False when it did not exist."""
        name = name_key(name)
        cursor = await self._db.execute("DELETE FROM roles WHERE name = ?", (name,))
        existed = cursor.rowcount > 0
        await self._db.execute("DELETE FROM role_permissions WHERE role = ?", (name,))
        await self._db.execute(
            "DELETE FROM grants WHERE target_type IN ('role_user', 'role_group') "
            "AND permission = ?", (name,))
        await self._db.commit()
        return existed

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

    # -- quotas (global) -------------------------------------------------------

    async def quotas(self) -> list[tuple[str, str, dict[str, int]]]:
        """Every quota row: (target_type, target, {resource: limit}) — unset resources are absent."""
        columns = ", ".join(QUOTA_RESOURCES)
        async with self._db.execute(
            f"SELECT target_type, target, {columns} FROM quotas ORDER BY target_type DESC, target",
        ) as cursor:
            return [(row[0], row[1], {name: value for name, value in zip(QUOTA_RESOURCES, row[2:])
                                      if value is not None})
                    async for row in cursor]

    async def quota(self, target_type: str, target: str) -> dict[str, int]:
        """The limits of one user or group (empty: unlimited everywhere)."""
        columns = ", ".join(QUOTA_RESOURCES)
        async with self._db.execute(
            f"SELECT {columns} FROM quotas WHERE target_type = ? AND target = ?",
            (target_type, normalise_target(target, target_type)),
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return {}
        return {name: value for name, value in zip(QUOTA_RESOURCES, row) if value is not None}

    async def set_quota(self, target_type: str, target: str, changes: dict[str, int | None]) -> dict[str, int]:
        """Merge ``changes`` (None clears a limit) into the row; a row left empty is deleted."""
        unknown = set(changes) - set(QUOTA_RESOURCES)
        if unknown:
            raise ValueError(f"unknown quota resource(s) {sorted(unknown)}")
        target = normalise_target(target, target_type)
        limits = await self.quota(target_type, target)
        for name, value in changes.items():
            if value is None:
                limits.pop(name, None)
            else:
                limits[name] = int(value)
        if limits:
            values = [limits.get(name) for name in QUOTA_RESOURCES]
            await self._db.execute(
                f"INSERT INTO quotas (target_type, target, {', '.join(QUOTA_RESOURCES)}) "
                f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (target_type, target) DO UPDATE SET "
                + ", ".join(f"{name} = excluded.{name}" for name in QUOTA_RESOURCES),
                (target_type, target, *values),
            )
        else:
            await self._db.execute("DELETE FROM quotas WHERE target_type = ? AND target = ?",
                                   (target_type, target))
        await self._db.commit()
        return limits
