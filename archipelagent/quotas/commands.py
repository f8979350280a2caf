"""``archipel:quota`` on the hypervisor: ``set`` / ``get`` (permissions ``quota_set`` /
``quota_get``) and ``usage`` (``quota_usage``, except that anyone may read their own usage;
the others' VMs a user started and that still run are listed with ``started="yes"``)."""
from __future__ import annotations

import logging
import re

from ..commands import Arg, CommandSet, element
from ..errors import InvalidArgument, MissingArgument
from ..permissions.center import Permission
from ..permissions.store import USER, bare, name_key
from .center import NS, RESOURCES, TARGET_TYPES, UNITS, ZERO, Quota, QuotaCenter, Usage, effective_limits  # noqa: F401

log = logging.getLogger(__name__)

commands = CommandSet()

# ``usage`` checks quota_usage itself (anyone may read their own), so the
# permission is declared here rather than by a command (see agent.declare_permissions).
EXTRA_PERMISSIONS = (("hypervisor", Permission("quota_usage", "Read the quota usage of any user")),)

CLEAR_WORDS = {"", "none", "unlimited", "-"}
_SIZE = re.compile(r"^\s*(\d{1,20})\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_SCALE = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


class _Clear:
    """A limit given empty: remove it."""

    def __repr__(self) -> str:
        return "CLEAR"


CLEAR = _Clear()


def parse_count(value: str):
    if value.strip().lower() in CLEAR_WORDS:
        return CLEAR
    if not value.strip().isdigit():
        raise ValueError(f"expected a whole number (or empty to clear), got {value!r}")
    return int(value)


def parse_size(base: int):
    """Sizes: a number in the base unit, or with a K/M/G/T/P suffix (powers of 1024)."""
    def parse(value: str):
        if value.strip().lower() in CLEAR_WORDS:
            return CLEAR
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"expected a size such as 262144 or 2G (or empty to clear), got {value!r}")
        number, scale = int(match.group(1)), _SCALE[match.group(2).lower()]
        return max(0, number * 1024 ** scale // base) if scale else number
    return parse


def _target(target_type: str, target: str) -> str:
    target = target.strip()
    if target_type == USER:
        jid = bare(target) if target else ""
        node, _, domain = jid.partition("@")
        if not node or not domain or " " in jid:
            raise InvalidArgument("target", f"not a bare JID: {target!r}")
        return jid
    try:
        return name_key(target)
    except ValueError:
        raise InvalidArgument("target", "empty group name") from None


def quota_element(target_type: str, target: str, limits: dict):
    return element("quota", {"target_type": target_type, "target": target,
                             **{name: limits[name] for name in RESOURCES if name in limits}})


TYPE_ARG = Arg("target_type", choices=TARGET_TYPES, required=False, default=USER, help="user or group")
TARGET_ARG = Arg("target", help="bare JID (user) or LDAP group cn (group)")
LIMIT_ARGS = (
    Arg("vms", parse=parse_count, required=False, help="number of VMs (empty: unlimited)"),
    Arg("vcpus", parse=parse_count, required=False, help="vCPUs in all (empty: unlimited)"),
    Arg("memory", parse=parse_size(1024), required=False, help="memory in KiB, or 512M, 4G (empty: unlimited)"),
    Arg("disk", parse=parse_size(1), required=False, help="disk in bytes, or 10G (empty: unlimited)"),
)


@commands.command(NS, "set", permission="quota_set", kinds=("hypervisor",), args=(TYPE_ARG, TARGET_ARG, *LIMIT_ARGS),
                  help="set the quota of a user or LDAP group (an empty value makes it unlimited)")
async def set_quota(ctx, target_type, target, vms, vcpus, memory, disk):
    target = _target(target_type, target)
    given = {name: value for name, value in (("vms", vms), ("vcpus", vcpus), ("memory", memory), ("disk", disk))
             if value is not None}
    if not given:
        raise MissingArgument("vms, vcpus, memory or disk")
    limits = await ctx.agent.permissions.store.set_quota(
        target_type, target, {name: None if value is CLEAR else value for name, value in given.items()})
    log.info("quota of %s %s set by %s: %s", target_type, target, ctx.sender_bare, limits or "unlimited")
    return quota_element(target_type, target, limits)


@commands.command(NS, "get", permission="quota_get", kinds=("hypervisor",), args=(TYPE_ARG, TARGET_ARG),
                  help="the quota of a user or LDAP group (absent limits are unlimited)")
async def get_quota(ctx, target_type, target):
    target = _target(target_type, target)
    return quota_element(target_type, target, await ctx.agent.permissions.store.quota(target_type, target))


async def usage_element(center: QuotaCenter, user: str, *, with_vms: bool = True):
    admin = await center.exempt(user)
    limits = {} if admin else await center.limits_for(user)
    per_vm = [(entity, await center.vm_usage(entity), {}) for entity in center.owned(user)]
    per_vm += [(entity, await center.vm_usage(entity, disk=False), {"started": "yes"})  # others' VMs it runs
               for entity in await center.started(user)]
    total = sum((u for _, u, _ in per_vm), ZERO)
    children = []
    for resource in RESOURCES:
        attrs = {"name": resource, "used": total.get(resource)}
        limit = limits.get(resource)
        if limit is not None:
            attrs.update(limit=limit.value, target_type=limit.quota.target_type, target=limit.quota.target)
        children.append(element("resource", attrs))
    if with_vms:
        children += [element("vm", {"jid": entity.jid, "name": entity.name, **u.as_dict(), **extra})
                     for entity, u, extra in per_vm]
    return element("usage", {"user": user, "admin": "yes" if admin else "no"}, children=children)


def _render_usage(payload) -> str:
    lines = []
    for usage in payload:
        parts = []
        for res in usage.findall("resource"):
            limit = res.get("limit")
            unit = UNITS[res.get("name")]
            parts.append(f"{res.get('name')} {res.get('used')}{unit}" + (f" of {limit}{unit}" if limit else ""))
        extra = " (admin: unlimited)" if usage.get("admin") == "yes" else ""
        lines.append(f"{usage.get('user')}{extra}: " + ", ".join(parts))
    return "\n".join(lines) or "No usage."


@commands.command(
    NS, "usage", permission=None, kinds=("hypervisor",), chat=("usage", "my usage", "quota"),
    chat_render=_render_usage,
    args=(Arg("target", required=False, help="a user's bare JID (default: you)"),
          Arg("all", parse=lambda v: v.strip().lower() in ("1", "true", "yes", "y"), required=False, default=False,
              help="1: every VM owner's usage")),
    help="your usage and effective limits (another user's, or all, needs quota_usage)",
)
async def usage(ctx, target, all):  # noqa: A002 - the wire attribute's name
    center = ctx.agent.quotas
    user = _target(USER, target) if target else ctx.sender_bare
    if all or user != ctx.sender_bare:
        await ctx.agent.permissions.require(ctx.entity.jid, ctx.entity.kind, ctx.sender_bare, "quota_usage",
                                            action="usage")
    if not all:
        return [await usage_element(center, user)]
    owners = sorted({bare(e.record.owner) for e in ctx.agent.vms.entities.values() if e.record.owner}
                    | set((await center.starters()).values()))
    return [await usage_element(center, owner, with_vms=False) for owner in owners]
