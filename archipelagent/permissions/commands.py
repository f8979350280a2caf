"""``archipel:permissions`` on every entity: list, get, getown, set, setown."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ..commands import Arg, CommandSet, element
from ..commands.payload import local_name
from ..errors import InvalidArgument, MissingArgument, PermissionDenied
from .store import bare

NS = "archipel:permissions"
TRUE_WORDS = {"1", "true", "yes", "y"}
SUPPORTED_TYPES = ("user",)

commands = CommandSet()


def _target_type(value: str) -> str:
    if value not in SUPPORTED_TYPES:
        raise ValueError(f"permission_type must be one of {', '.join(SUPPORTED_TYPES)}, got {value!r}")
    return value


def _jid(value: str) -> str:
    jid = bare(value)
    node, _, domain = jid.partition("@")
    if not node or not domain or " " in jid:
        raise ValueError(f"not a bare JID: {value!r}")
    return jid


TYPE_ARG = Arg("permission_type", parse=_target_type, required=False, default="user", help="user")
TARGET_ARGS = (Arg("permission_target", parse=_jid, help="bare JID whose permissions to read"), TYPE_ARG)
OWN_TARGET_ARGS = (
    Arg("permission_target", parse=_jid, required=False, help="your own bare JID (default: you)"),
    TYPE_ARG,
)


def parse_changes(children: list[ET.Element]) -> list[tuple[str, str, bool]]:
    """``<permission permission_type permission_target permission_name permission_value/>*``."""
    changes = []
    for child in children or []:
        if local_name(child.tag) != "permission":
            continue
        for attr in ("permission_target", "permission_name", "permission_value"):
            if not child.get(attr):
                raise MissingArgument(attr)
        try:
            _target_type(child.get("permission_type", "user"))
            target = _jid(child.get("permission_target"))
        except ValueError as exc:
            raise InvalidArgument("permission", str(exc)) from None
        value = child.get("permission_value").strip().lower() in TRUE_WORDS
        changes.append((target, child.get("permission_name"), value))
    if not changes:
        raise MissingArgument("permission")
    return changes


def _grants_payload(grants: dict[str, bool]):
    return [element("permission", {"name": name}) for name, value in sorted(grants.items()) if value]


@commands.command(NS, "list", permission="permission_list", chat=("permissions",), help="list the permissions this entity knows")
async def list_permissions(ctx):
    center = ctx.agent.permissions
    return [
        element("permission", {"name": p.name, "default": str(p.default), "description": p.description})
        for p in center.catalogue(ctx.entity.kind)
    ]


@commands.command(NS, "get", permission="permission_get", args=TARGET_ARGS, help="the explicit grants of a user")
async def get_permissions(ctx, permission_target, permission_type):
    return _grants_payload(await ctx.agent.permissions.explicit(ctx.entity.jid, permission_target))


@commands.command(
    NS, "getown", permission=None, args=OWN_TARGET_ARGS, chat=("my permissions",),
    help="your own explicit grants (the target must be you)",
)
async def get_own_permissions(ctx, permission_target, permission_type):
    permission_target = permission_target or ctx.sender_bare
    if permission_target != ctx.sender_bare:
        raise PermissionDenied("getown", "you may only read your own permissions")
    return _grants_payload(await ctx.agent.permissions.explicit(ctx.entity.jid, permission_target))


async def _apply(ctx, changes) -> None:
    center = ctx.agent.permissions
    entity = ctx.entity
    for target, name, value in changes:
        await center.set_permission(entity.jid, entity.kind, target, name, value)
        if name == "presence":
            entity.xmpp.send_presence(pto=target, ptype="subscribed" if value else "unsubscribed")
    for target in sorted({t for t, _, _ in changes}):
        await entity.push("permissions", target)


CHANGE_ARGS = (Arg("changes", parse=lambda v: v, source="children", help="<permission .../> elements"),)


@commands.command(NS, "set", permission="permission_set", args=CHANGE_ARGS, adhoc=False, help="grant or revoke permissions")
async def set_permissions(ctx, changes):
    await _apply(ctx, parse_changes(changes))


@commands.command(NS, "setown", permission="permission_setown", args=CHANGE_ARGS, adhoc=False, help="change your own permissions (never escalates)")
async def set_own_permissions(ctx, changes):
    parsed = parse_changes(changes)
    await ctx.agent.permissions.check_setown(ctx.entity.jid, ctx.entity.kind, ctx.sender_bare, parsed)
    await _apply(ctx, parsed)
