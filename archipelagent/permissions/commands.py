"""``archipel:permissions`` on every entity: list, get, getown, set, setown; roles on the hypervisor.

``permission_type`` says who a grant is for:

* ``user``  — ``permission_target`` is a bare JID, ``permission_name`` a permission;
* ``group`` — ``permission_target`` is an LDAP group cn, ``permission_name`` a permission;
* ``role``  — ``permission_name`` is a role name, granted to ``permission_target``:
  a bare JID (it contains ``@``) or else an LDAP group cn.

Roles themselves (``roles``, ``setrole``, ``delrole``) are global to the agent
and managed on the hypervisor only: a VM owner holds ``all`` on their VM, and
must not be able to redefine what a role grants elsewhere.
"""
from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from typing import NamedTuple

from ..commands import Arg, CommandSet, element
from ..commands.payload import local_name
from ..errors import InvalidArgument, MissingArgument, PermissionDenied
from .roles_node import publish_roles
from .store import GROUP, ROLE_GROUP, ROLE_USER, USER
from ..jids import bare_jid_arg
from ..values import parse_yes

log = logging.getLogger(__name__)

NS = "archipel:permissions"
TRUE_WORDS = {"1", "true", "yes", "y"}
SUPPORTED_TYPES = ("user", "group", "role")
MAX_GROUP_LENGTH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

commands = CommandSet()


class Change(NamedTuple):
    target_type: str  # the store's: user, group, role_user, role_group
    target: str
    name: str         # a permission, or a role for role_*
    value: bool


def _target_type(value: str) -> str:
    value = value.strip().lower()
    if value not in SUPPORTED_TYPES:
        raise ValueError(f"permission_type must be one of {', '.join(SUPPORTED_TYPES)}, got {value!r}")
    return value


def _group(value: str) -> str:
    name = value.strip().lower()
    if not name or len(name) > MAX_GROUP_LENGTH or _CONTROL.search(name):
        raise ValueError(f"not an LDAP group name: {value!r}")
    return name


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def resolve_target(wire_type: str, target: str) -> tuple[str, str]:
    """(store target type, normalised target) of a wire ``permission_type`` and target."""
    if wire_type == "user":
        return USER, bare_jid_arg(target)
    if wire_type == "group":
        return GROUP, _group(target)
    if "@" in target:
        return ROLE_USER, bare_jid_arg(target)
    return ROLE_GROUP, _group(target)


def _target_or_error(wire_type: str, target: str) -> tuple[str, str]:
    try:
        return resolve_target(wire_type, target)
    except ValueError as exc:
        raise InvalidArgument("permission_target", str(exc)) from None


TYPE_ARG = Arg("permission_type", parse=_target_type, required=False, default="user",
               help="user, group or role")
TARGET_ARGS = (Arg("permission_target", parse=_nonempty,
                   help="bare JID (user), group cn (group), JID or group cn (role)"), TYPE_ARG)
OWN_TARGET_ARGS = (
    Arg("permission_target", parse=bare_jid_arg, required=False, help="your own bare JID (default: you)"),
    TYPE_ARG,
)
GETOWN_ARGS = (*OWN_TARGET_ARGS,
               Arg("effective", parse=parse_yes, required=False, default=False,
                   help="yes: every permission you hold here, through groups, roles and admin rights too "
                        "(what a client may enable); only with permission_type=user"))
LIST_ARGS = (Arg("permission_type", parse=_target_type, required=False, default=None,
                 help="empty: the permissions that exist; user, group or role: who holds what here"),)


def parse_changes(children: list[ET.Element]) -> list[Change]:
    """``<permission permission_type permission_target permission_name permission_value/>*``."""
    changes = []
    for child in children or []:
        if local_name(child.tag) != "permission":
            continue
        for attr in ("permission_target", "permission_name", "permission_value"):
            if not (child.get(attr) or "").strip():
                raise MissingArgument(attr)
        try:
            wire_type = _target_type(child.get("permission_type", "user"))
            target_type, target = resolve_target(wire_type, child.get("permission_target"))
        except ValueError as exc:
            raise InvalidArgument("permission", str(exc)) from None
        value = child.get("permission_value").strip().lower() in TRUE_WORDS
        changes.append(Change(target_type, target, child.get("permission_name").strip(), value))
    if not changes:
        raise MissingArgument("permission")
    return changes


def _grants_payload(grants: dict[str, bool], wire_type: str = "user"):
    attrs = {} if wire_type == "user" else {"permission_type": wire_type}
    return [element("permission", {"name": name, **attrs})
            for name, value in sorted(grants.items()) if value]


_WIRE_TYPE = {USER: "user", GROUP: "group", ROLE_USER: "role", ROLE_GROUP: "role"}


@commands.command(NS, "list", permission="permission_list", args=LIST_ARGS, chat=("permissions",),
                  help="list the permissions this entity knows (or, with a type, who holds what)")
async def list_permissions(ctx, permission_type):
    center = ctx.agent.permissions
    if permission_type is None:
        return [
            element("permission", {"name": p.name, "default": str(p.default), "description": p.description})
            for p in center.catalogue(ctx.entity.kind)
        ]
    # Who holds what tells a lot: the same rule as reading someone's grants.
    await center.require(ctx.entity.jid, ctx.entity.kind, ctx.sender_bare, "permission_get", action="list")
    items = []
    for target_type, target, name, value in await center.store.targets(ctx.entity.jid):
        if not value or _WIRE_TYPE.get(target_type) != permission_type:
            continue
        attrs = {"permission_type": permission_type, "permission_target": target, "permission_name": name}
        if permission_type == "role":
            attrs["permission_target_type"] = "user" if target_type == ROLE_USER else "group"
        items.append(element("permission", attrs))
    return items


@commands.command(NS, "get", permission="permission_get", args=TARGET_ARGS,
                  help="the explicit grants of a user or group, or the roles granted to one")
async def get_permissions(ctx, permission_target, permission_type):
    target_type, target = _target_or_error(permission_type, permission_target)
    grants = await ctx.agent.permissions.explicit(ctx.entity.jid, target, target_type)
    return _grants_payload(grants, permission_type)


@commands.command(
    NS, "getown", permission="permission_getown", args=GETOWN_ARGS, chat=("my permissions",),
    help="your own explicit grants, or with permission_type=role your own roles, or with effective=yes "
         "every permission you hold (the target must be you; held by default by those who see the entity)",
)
async def get_own_permissions(ctx, permission_target, permission_type, effective=False):
    permission_target = permission_target or ctx.sender_bare
    if permission_target != ctx.sender_bare:
        raise PermissionDenied("getown", "you may only read your own permissions")
    if permission_type == "group":
        raise PermissionDenied("getown", "getown reads your own grants, not a group's")
    if effective:
        if permission_type != "user":
            raise InvalidArgument("effective", "only with permission_type=user")
        held = await ctx.agent.permissions.effective(ctx.entity.jid, ctx.entity.kind, ctx.sender_bare)
        return [element("permission", {"name": name}) for name in sorted(held)]
    target_type = ROLE_USER if permission_type == "role" else USER
    grants = await ctx.agent.permissions.explicit(ctx.entity.jid, permission_target, target_type)
    return _grants_payload(grants, permission_type)


async def _apply(ctx, changes: list[Change]) -> None:
    center = ctx.agent.permissions
    entity = ctx.entity
    for change in changes:
        await center.set_permission(entity.jid, entity.kind, change.target, change.name, change.value,
                                    change.target_type)
        if change.target_type == USER and change.name == "presence":
            entity.xmpp.send_presence(pto=change.target, ptype="subscribed" if change.value else "unsubscribed")
    for target in sorted({change.target for change in changes}):
        await entity.push("permissions", target)


CHANGE_ARGS = (Arg("changes", parse=lambda v: v, source="children", help="<permission .../> elements"),)


@commands.command(NS, "set", permission="permission_set", args=CHANGE_ARGS, adhoc=False,
                  help="grant or revoke permissions of users or groups, or roles")
async def set_permissions(ctx, changes):
    await _apply(ctx, parse_changes(changes))


@commands.command(NS, "setown", permission="permission_setown", args=CHANGE_ARGS, adhoc=False,
                  help="change your own permissions (never escalates)")
async def set_own_permissions(ctx, changes):
    parsed = parse_changes(changes)
    if any(change.target_type != USER for change in parsed):
        raise PermissionDenied("setown", "setown only changes your own user permissions, "
                                         "not group or role grants")
    await ctx.agent.permissions.check_setown(
        ctx.entity.jid, ctx.entity.kind, ctx.sender_bare,
        [(change.target, change.name, change.value) for change in parsed])
    await _apply(ctx, parsed)


# -- roles (global, managed on the hypervisor) ----------------------------------

def role_element(role) -> ET.Element:
    """``<role name description creator><permission permission_name/>*</role>`` (the client's shape)."""
    return element("role", {"name": role.name, "description": role.description, "creator": role.creator},
                   children=[element("permission", {"permission_name": name})
                             for name in sorted(role.permissions)])


def _role_permissions(children: list[ET.Element]) -> list[str]:
    names = []
    for child in children or []:
        if local_name(child.tag) != "permission":
            continue
        name = (child.get("name") or child.get("permission_name") or "").strip()
        if not name:
            raise MissingArgument("permission name")
        names.append(name)
    return names


async def _publish(ctx) -> None:
    entity = getattr(ctx.agent, "hypervisor", None) or ctx.entity
    if not await publish_roles(entity):
        log.warning("roles changed but /archipel/roles could not be updated (see above)")


@commands.command(NS, "roles", permission="permission_roles", kinds=("hypervisor",), chat=("roles",),
                  help="list the roles and their permissions")
async def list_roles(ctx):
    return [role_element(role) for role in await ctx.agent.permissions.roles()]


ROLE_ARGS = (
    Arg("name", help="role name"),
    Arg("description", required=False, default="", help="what the role is for"),
    Arg("permissions", parse=lambda v: v, source="children", required=False, default=[],
        help="<permission name/> elements"),
)


@commands.command(NS, "setrole", permission="permission_setrole", kinds=("hypervisor",), args=ROLE_ARGS,
                  adhoc=False, help="create or replace a role (its grants are kept)")
async def set_role(ctx, name, description, permissions):
    role = await ctx.agent.permissions.set_role(name, _role_permissions(permissions), description,
                                                creator=ctx.sender_bare)
    await _publish(ctx)
    return [role_element(role)]


@commands.command(NS, "delrole", permission="permission_delrole", kinds=("hypervisor",),
                  args=(Arg("name", help="role name"),), help="delete a role and every grant of it")
async def delete_role(ctx, name):
    await ctx.agent.permissions.delete_role(name)
    await _publish(ctx)
