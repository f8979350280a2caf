"""The one place that answers "may this JID do X on entity E?".

It follows Archipel's order (admin, ``all``, unknown permission, explicit row,
default) but applies defaults per permission (Archipel stopped applying any
default as soon as a user had a single grant), and adds grants to LDAP groups
and through roles:

1. a root admin (config), or a member of an ``ldap_admin_groups`` group → allowed;
2. ``all`` granted to the user, to one of their groups, or in one of the roles
   granted to the user or their groups → allowed;
3. a permission unknown to this kind of entity → denied;
4. an explicit row of the user decides (true or false);
5. a role granted to the user, a row of one of their groups or a role granted
   to one of their groups that contains the permission → allowed;
6. the permission's default.

Groups can only add rights, so the answer is first computed without them; LDAP
is asked only when that answer is "no" and groups could change it (admin
groups are configured or the entity has group grants).  If LDAP is then
unreachable the check raises :class:`DirectoryUnavailable` — a decision that
needs LDAP is never silently made without it.  Grants are read from the store
on every check (never cached): a revocation applies to the next request.
Only LDAP group membership is cached, by the directory, for ``ldap_cache_ttl``.
"""
from __future__ import annotations

from dataclasses import dataclass
import re
from typing import Iterable, Mapping, Protocol

from archipelagent.errors import InvalidArgument, NotFound, PermissionDenied
from archipelagent.permissions.store import (
    GROUP,
    ROLE_GROUP,
    ROLE_USER,
    USER,
    EntityRows,
    PermissionStore,
    Role,
    bare,
    name_key,
)

ALL = "all"


@dataclass(frozen=True)
class Permission:
    name: str
    description: str
    default: bool = False
    # Held by default by whoever holds one of these (an explicit row still decides).
    implied_by: tuple[str, ...] = ()


# Every core permission defaults to False.  Archipel defaulted permission_get to
# True; we do not, because listing someone's rights on an entity tells a stranger
# who manages it and what they can do there.
CORE_PERMISSIONS: tuple[Permission, ...] = (
    Permission(ALL, "Everything on this entity, present and future"),
    Permission("presence", "See the entity's presence (roster subscription)"),
    Permission("message", "Send chat commands to the entity"),
    Permission("permission_get", "List the permissions of any user on the entity"),
    # Reading one's own rights is for those who see the entity (``presence``), not strangers.
    Permission("permission_getown", "List one's own permissions on the entity (default: holders of presence)",
               implied_by=("presence",)),
    Permission("permission_list", "List the permissions that exist on the entity"),
    Permission("permission_set", "Grant and revoke permissions of any user on the entity"),
    Permission("permission_setown",
               "Change one's own permissions (revoke, or grant only what one holds)"),
    Permission("subscription_add", "Add a contact to the entity's roster"),
    Permission("subscription_remove", "Remove a contact from the entity's roster"),
)

ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class GroupDirectory(Protocol):
    """What the center needs from the directory (``archipelagent.directory.Directory``)."""

    async def groups(self, jid: str) -> frozenset[str]: ...


def _decide(declared: Permission | None, permission: str, rows: EntityRows,
            role_perms: Mapping[str, frozenset[str]], groups: frozenset[str],
            implied: Iterable[Permission] = ()) -> bool:
    """Steps 2-6 of the check order for a user in ``groups`` (admins are handled before)."""
    group_rows = [rows.groups[group] for group in groups if group in rows.groups]
    group_roles = set()
    for group in groups:
        group_roles.update(rows.group_roles.get(group, ()))

    def in_roles(names, name: str) -> bool:
        return any(name in role_perms.get(role, ()) for role in names)

    if rows.user.get(ALL) is True or in_roles(rows.user_roles, ALL):
        return True
    if any(row.get(ALL) is True for row in group_rows) or in_roles(group_roles, ALL):
        return True
    if declared is None:
        return False
    explicit = rows.user.get(permission)
    if explicit is not None:
        return explicit
    if in_roles(rows.user_roles, permission):
        return True
    if any(row.get(permission) is True for row in group_rows) or in_roles(group_roles, permission):
        return True
    return declared.default or any(_decide(other, other.name, rows, role_perms, groups) for other in implied)


class PermissionCenter:
    """Catalogue of permissions per entity kind, plus the checks against the store."""

    def __init__(self, store: PermissionStore, root_admins: Iterable[str],
                 directory: GroupDirectory | None = None,
                 admin_groups: Iterable[str] | None = None):
        self.store = store
        self.root_admins = frozenset(bare(jid) for jid in root_admins)
        self.directory = directory
        if admin_groups is None:
            config = getattr(directory, "config", None)
            admin_groups = getattr(config, "admin_groups", ())
        self.admin_groups = frozenset(name_key(group) for group in admin_groups)
        self._catalogues: dict[str, dict[str, Permission]] = {}

    # -- catalogue -------------------------------------------------------------

    def _catalogue(self, kind: str) -> dict[str, Permission]:
        catalogue = self._catalogues.get(kind)
        if catalogue is None:
            catalogue = {permission.name: permission for permission in CORE_PERMISSIONS}
            self._catalogues[kind] = catalogue
        return catalogue

    def declare(self, kind: str, permission: Permission) -> None:
        """Make ``permission`` exist on entities of ``kind``; the first declaration wins."""
        self._catalogue(kind).setdefault(permission.name, permission)

    def catalogue(self, kind: str) -> list[Permission]:
        return sorted(self._catalogue(kind).values(), key=lambda permission: permission.name)

    def lookup(self, kind: str, permission: str) -> Permission | None:
        return self._catalogue(kind).get(permission)

    def known_anywhere(self, permission: str) -> bool:
        """True when some kind of entity (or the core set) declares ``permission``."""
        if any(p.name == permission for p in CORE_PERMISSIONS):
            return True
        return any(permission in catalogue for catalogue in self._catalogues.values())

    # -- admins and groups -----------------------------------------------------

    def is_root_admin(self, user: str) -> bool:
        return bare(user) in self.root_admins

    async def user_groups(self, user: str) -> frozenset[str]:
        """The user's LDAP group cn's (empty without a directory); may raise DirectoryUnavailable."""
        if self.directory is None:
            return frozenset()
        return frozenset(name_key(group) for group in await self.directory.groups(bare(user)))

    async def is_admin(self, user: str) -> bool:
        """Root admins from the config, or members of an admin group (asks LDAP)."""
        if self.is_root_admin(user):
            return True
        if self.directory is None or not self.admin_groups:
            return False
        return bool(self.admin_groups & await self.user_groups(user))

    # -- checks ----------------------------------------------------------------

    async def _rows(self, entity: str, user: str) -> tuple[EntityRows, dict[str, frozenset[str]]]:
        rows = await self.store.rows_for(entity, user)
        names = set(rows.user_roles)
        for roles in rows.group_roles.values():
            names.update(roles)
        return rows, await self.store.role_permissions(names)

    async def _groups_for(self, user: str, rows: EntityRows) -> frozenset[str]:
        if not rows.groups and not rows.group_roles:
            return frozenset()  # no group grants here: membership cannot matter
        return await self.user_groups(user)

    async def check(self, entity: str, kind: str, user: str, permission: str) -> bool:
        if self.is_root_admin(user):
            return True
        rows, role_perms = await self._rows(entity, user)
        declared = self.lookup(kind, permission)
        implied = self._implied(kind, declared)
        if _decide(declared, permission, rows, role_perms, frozenset(), implied):
            return True  # groups only add rights: no need to ask LDAP
        if await self.is_admin(user):
            return True
        groups = await self._groups_for(user, rows)
        return bool(groups) and _decide(declared, permission, rows, role_perms, groups, implied)

    def _implied(self, kind: str, declared: Permission | None) -> list[Permission]:
        if declared is None:
            return []
        return [p for p in (self.lookup(kind, name) for name in declared.implied_by) if p is not None]

    async def require(self, entity: str, kind: str, user: str, permission: str,
                      action: str | None = None) -> None:
        if not await self.check(entity, kind, user, permission):
            raise PermissionDenied(action or permission)

    async def effective(self, entity: str, kind: str, user: str) -> set[str]:
        """The names of the permissions ``user`` holds on ``entity`` (groups and roles included)."""
        catalogue = self.catalogue(kind)
        names = {permission.name for permission in catalogue}
        if self.is_root_admin(user):
            return names
        rows, role_perms = await self._rows(entity, user)
        held = {p.name for p in catalogue
                if _decide(p, p.name, rows, role_perms, frozenset(), self._implied(kind, p))}
        if held == names:
            return names
        if await self.is_admin(user):
            return names
        groups = await self._groups_for(user, rows)
        if not groups:
            return held
        return {p.name for p in catalogue if _decide(p, p.name, rows, role_perms, groups, self._implied(kind, p))}

    async def own_effective(self, entity: str, kind: str, user: str) -> set[str]:
        """What ``user`` holds by their own user rows and defaults (no groups, no roles)."""
        catalogue = self.catalogue(kind)
        if self.is_root_admin(user):
            return {permission.name for permission in catalogue}
        grants = await self.store.grants(entity, user)
        if grants.get(ALL) is True:
            return {permission.name for permission in catalogue}
        return {permission.name for permission in catalogue
                if grants.get(permission.name, permission.default
                              or any(grants.get(other) is True for other in permission.implied_by))}

    async def explicit(self, entity: str, target: str, target_type: str = USER) -> dict[str, bool]:
        """The explicit rows of ``target`` on ``entity`` (what ``get`` reports).

        For ``role_user``/``role_group`` the keys are role names.
        """
        return await self.store.grants(entity, target, target_type)

    # -- changes ---------------------------------------------------------------

    async def set_permission(self, entity: str, kind: str, target: str, permission: str,
                             value: bool, target_type: str = USER) -> None:
        """Grant or revoke ``permission`` for a user or group, or a role (``role_*``: the name)."""
        if target_type in (ROLE_USER, ROLE_GROUP):
            role = name_key(permission)
            if value:
                if not await self.store.role_permissions([role]):
                    raise NotFound(f"no role named '{role}'")
                await self.store.set_grant(entity, target, role, True, target_type)
            else:
                await self.store.revoke(entity, target, role, target_type)
            return
        declared = self.lookup(kind, permission)
        if declared is None:
            raise NotFound(f"no permission named '{permission}' on a {kind}")
        if target_type == GROUP:
            # A group row only ever adds a right: false is the absence of a row.
            if value:
                await self.store.set_grant(entity, target, permission, True, GROUP)
            else:
                await self.store.revoke(entity, target, permission, GROUP)
            return
        if target_type != USER:
            raise ValueError(f"unknown target type {target_type!r}")
        if value or declared.default or declared.implied_by:
            await self.store.set_grant(entity, target, permission, bool(value))
        else:
            # False is what a missing row means already: keep the table small.
            await self.store.revoke(entity, target, permission)

    async def check_setown(self, entity: str, kind: str, sender: str,
                           changes: Iterable[tuple[str, str, bool]]) -> None:
        """Refuse a ``setown`` that touches someone else or escalates the sender.

        Only what the sender holds by their own rows or defaults counts: a right
        held through a group or a role must not be copied into a personal row
        that would outlive the group's or role's revocation.
        """
        sender = bare(sender)
        held: set[str] | None = None
        for target, permission, value in changes:
            if bare(target) != sender:
                raise PermissionDenied("setown", f"'{bare(target)}' is not the sender")
            if not value:
                continue  # giving up one's own permission is always allowed
            if permission == ALL:
                raise PermissionDenied("setown", "setown cannot grant 'all'")
            if held is None:
                held = await self.own_effective(entity, kind, sender)
            if permission not in held:
                raise PermissionDenied(
                    "setown", f"setown cannot grant '{permission}', which the sender lacks")

    # -- roles -----------------------------------------------------------------

    async def roles(self) -> list[Role]:
        return sorted((await self.store.roles()).values(), key=lambda role: role.name)

    async def set_role(self, name: str, permissions: Iterable[str], description: str = "",
                       creator: str = "") -> Role:
        """Create or replace a role; every permission must exist on some kind of entity."""
        key = name.strip().lower()
        if not ROLE_NAME.match(key):
            raise InvalidArgument("name", "a role name is 1-64 letters, digits, '.', '_' or '-', "
                                          f"starting with a letter or digit, got {name!r}")
        permissions = sorted(set(permissions))
        for permission in permissions:
            if not self.known_anywhere(permission):
                raise NotFound(f"no permission named '{permission}'")
        await self.store.set_role(key, permissions, description, bare(creator) if creator else "")
        return Role(key, frozenset(permissions), description, bare(creator) if creator else "")

    async def delete_role(self, name: str) -> None:
        if not await self.store.delete_role(name):
            raise NotFound(f"no role named '{name.strip().lower()}'")
