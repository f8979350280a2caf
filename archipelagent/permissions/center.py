"""The one place that answers "may this JID do X on entity E?".

It follows Archipel's order (admin, ``all``, unknown permission, explicit row,
default) but applies defaults per permission: Archipel stopped applying any
default as soon as a user had a single grant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from archipelagent.errors import NotFound, PermissionDenied
from archipelagent.permissions.store import PermissionStore, bare

ALL = "all"


@dataclass(frozen=True)
class Permission:
    name: str
    description: str
    default: bool = False


# Every core permission defaults to False.  Archipel defaulted permission_get to
# True; we do not, because listing someone's rights on an entity tells a stranger
# who manages it and what they can do there.
CORE_PERMISSIONS: tuple[Permission, ...] = (
    Permission(ALL, "Everything on this entity, present and future"),
    Permission("presence", "See the entity's presence (roster subscription)"),
    Permission("message", "Send chat commands to the entity"),
    Permission("permission_get", "List the permissions of any user on the entity"),
    Permission("permission_getown", "List one's own permissions on the entity"),
    Permission("permission_list", "List the permissions that exist on the entity"),
    Permission("permission_set", "Grant and revoke permissions of any user on the entity"),
    Permission("permission_setown",
               "Change one's own permissions (revoke, or grant only what one holds)"),
    Permission("subscription_add", "Add a contact to the entity's roster"),
    Permission("subscription_remove", "Remove a contact from the entity's roster"),
)


class PermissionCenter:
    """Catalogue of permissions per entity kind, plus the checks against the store."""

    def __init__(self, store: PermissionStore, root_admins: Iterable[str]):
        self.store = store
        self.root_admins = frozenset(bare(jid) for jid in root_admins)
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

    # -- admins ----------------------------------------------------------------

    def is_root_admin(self, user: str) -> bool:
        return bare(user) in self.root_admins

    async def is_admin(self, user: str) -> bool:
        """Root admins from the config; override to add admin sources (LDAP groups)."""
        return self.is_root_admin(user)

    # -- checks ----------------------------------------------------------------

    async def check(self, entity: str, kind: str, user: str, permission: str) -> bool:
        if await self.is_admin(user):
            return True
        grants = await self.store.grants(entity, user)
        if grants.get(ALL) is True:
            return True
        declared = self.lookup(kind, permission)
        if declared is None:
            return False
        return grants.get(permission, declared.default)

    async def require(self, entity: str, kind: str, user: str, permission: str,
                      action: str | None = None) -> None:
        if not await self.check(entity, kind, user, permission):
            raise PermissionDenied(action or permission)

    async def effective(self, entity: str, kind: str, user: str) -> set[str]:
        """The names of the permissions ``user`` holds on ``entity``."""
        names = {permission.name for permission in self.catalogue(kind)}
        if await self.is_admin(user):
            return names
        grants = await self.store.grants(entity, user)
        if grants.get(ALL) is True:
            return names
        return {permission.name for permission in self.catalogue(kind)
                if grants.get(permission.name, permission.default)}

    async def explicit(self, entity: str, target: str) -> dict[str, bool]:
        """The explicit rows of ``target`` on ``entity`` (what ``get`` reports)."""
        return await self.store.grants(entity, target)

    # -- changes ---------------------------------------------------------------

    async def set_permission(self, entity: str, kind: str, target: str, permission: str,
                             value: bool) -> None:
        declared = self.lookup(kind, permission)
        if declared is None:
            raise NotFound(f"no permission named '{permission}' on a {kind}")
        if value or declared.default:
            await self.store.set_grant(entity, target, permission, bool(value))
        else:
            # False is what a missing row means already: keep the table small.
            await self.store.revoke(entity, target, permission)

    async def check_setown(self, entity: str, kind: str, sender: str,
                           changes: Iterable[tuple[str, str, bool]]) -> None:
        """Refuse a ``setown`` that touches someone else or escalates the sender."""
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
                held = await self.effective(entity, kind, sender)
            if permission not in held:
                raise PermissionDenied(
                    "setown", f"setown cannot grant '{permission}', which the sender lacks")
