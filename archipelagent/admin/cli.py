"""``archipel-admin``: manage a running agent over XMPP, as an admin.

It never touches the agent's databases: every change is an ACP request the
agent checks and records in its audit log like any other.

Exit codes: 0 ok, 1 the agent answered an error, 2 usage or configuration
error, 3 connection or authentication failure.

Adding a subcommand group: write ``setup_<group>(sub)``
that adds its parsers with ``set_defaults(run=<coroutine>)``, where the
coroutine takes ``(session, args)`` and returns an :class:`Output`, and add it
to :data:`GROUPS`.  ``session.acp(...)`` sends a request to the target entity.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .. import __version__
from .client import AdminClient, AdminError, AgentError

EXIT_OK, EXIT_AGENT_ERROR, EXIT_USAGE, EXIT_CONNECTION = 0, 1, 2, 3
PASSWORD_ENV = "ARCHIPEL_ADMIN_PASSWORD"
PERMS_NS = "archipel:permissions"
AUDIT_NS = "archipel:audit"

PROG = "archipel-admin"


class UsageError(Exception):
    """Bad options or configuration (exit 2)."""


# --------------------------------------------------------------------- output
@dataclass
class Output:
    """What a subcommand produced: ``data`` for --json, ``text`` or a table for humans."""

    data: Any = None
    text: str | None = None
    columns: tuple[str, ...] = ()
    rows: list[tuple] = field(default_factory=list)

    def render(self) -> str:
        if self.text is not None:
            return self.text
        return table(self.columns, self.rows)


def table(columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    columns = list(columns)
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    if not rows:
        return "(nothing)"
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def element_to_dict(el: ET.Element) -> dict:
    out: dict[str, Any] = {"tag": el.tag.rsplit("}", 1)[-1], "attrs": dict(el.attrib)}
    if el.text and el.text.strip():
        out["text"] = el.text.strip()
    if len(el):
        out["children"] = [element_to_dict(child) for child in el]
    return out


def pretty_xml(el: ET.Element) -> str:
    """The reply indented, its own namespace written once (as ``xmlns`` on the root)."""
    namespace = el.tag[1:].split("}", 1)[0] if el.tag.startswith("{") else None

    def plain(node: ET.Element) -> ET.Element:
        tag = node.tag
        if namespace and isinstance(tag, str) and tag.startswith(f"{{{namespace}}}"):
            tag = tag[len(namespace) + 2:]
        out = ET.Element(tag, node.attrib)
        out.text, out.tail = node.text, node.tail
        out.extend(plain(child) for child in node)
        return out

    root = plain(el)
    if namespace:
        root.set("xmlns", namespace)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


# -------------------------------------------------------------------- session
@dataclass
class Session:
    """A connected admin client and the entity the command targets."""

    client: AdminClient
    hypervisor: str
    target: str

    async def acp(self, namespace: str, action: str, attrs: dict | None = None,
                  children: Iterable[ET.Element] = (), *, to: str | None = None,
                  iq_type: str = "get") -> ET.Element:
        return await self.client.acp(to or self.target, namespace, action, attrs, children, iq_type=iq_type)


def _children(query: ET.Element, tag: str) -> list[ET.Element]:
    return [el for el in query.iter() if el.tag.rsplit("}", 1)[-1] == tag]


# ------------------------------------------------------------- subcommands
async def run_ping(session: Session, args) -> Output:
    rtt = await session.client.ping(session.target)
    return Output(data={"jid": session.target, "rtt_ms": round(rtt * 1000, 3)},
                  text=f"{session.target}: pong in {rtt * 1000:.1f} ms")


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    attrs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {pair!r}")
        attrs[key] = value
    return attrs


def parse_xml_children(fragments: list[str]) -> list[ET.Element]:
    """Each ``--xml`` is one or more elements; ``@file`` reads them from a file."""
    out: list[ET.Element] = []
    for fragment in fragments or []:
        if fragment.startswith("@"):
            try:
                fragment = Path(fragment[1:]).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"--xml {fragment}: {exc}") from None
        try:
            wrapper = ET.fromstring(f"<wrapper>{fragment}</wrapper>")
        except ET.ParseError as exc:
            raise UsageError(f"--xml: not well-formed XML: {exc}") from None
        out.extend(list(wrapper))
    return out


async def run_acp(session: Session, args) -> Output:
    attrs = parse_pairs(args.pairs)
    children = parse_xml_children(args.xml)
    reply = await session.acp(args.namespace, args.action, attrs, children, iq_type=args.iq_type)
    return Output(data=[element_to_dict(el) for el in reply], text=pretty_xml(reply))


async def run_permissions_list(session: Session, args) -> Output:
    reply = await session.acp(PERMS_NS, "list")
    rows = [(el.get("name"), el.get("default"), el.get("description")) for el in _children(reply, "permission")]
    return Output(data=[{"name": n, "default": d == "True", "description": t} for n, d, t in rows],
                  columns=("permission", "default", "description"), rows=rows)


async def run_permissions_get(session: Session, args) -> Output:
    group, roles = getattr(args, "group", None), getattr(args, "roles", False)
    if not group and not args.user:
        raise UsageError("expected a JID (or --group CN)")
    target = group or args.user
    ptype = "role" if roles else ("group" if group else "user")
    reply = await session.acp(PERMS_NS, "get", {"permission_target": target, "permission_type": ptype})
    names = [el.get("name") for el in _children(reply, "permission")]
    what = "roles" if roles else "permissions"
    text = f"{'group ' if group else ''}{target} on {session.target}: " + (
        ", ".join(names) if names else ("no role" if roles else "no explicit grant"))
    return Output(data={"entity": session.target, "group" if group else "jid": target, what: names}, text=text)


def _changes(jid: str, names: list[str], value: bool, ptype: str = "user") -> list[ET.Element]:
    return [ET.Element("permission", {"permission_type": ptype, "permission_target": jid,
                                      "permission_name": name, "permission_value": "true" if value else "false"})
            for name in names]


class _Words(argparse.Action):
    """``grant JID PERM...``, ``grant --group CN PERM...`` or ``grant --role NAME TARGET...``:
    the words are read once every option is known (see :func:`_grant_plan`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.words = list(values)
        namespace.user = values[0] if values else None
        namespace.permissions = list(values[1:])


def _grant_plan(args) -> tuple[str, list[tuple[str, str]], str]:
    """(permission_type, [(target, name)], who) of a grant/revoke command line."""
    words = getattr(args, "words", None)
    if words is None:
        words = [args.user, *args.permissions]
    words = [word for word in words if word]
    role, group = getattr(args, "role", None), getattr(args, "group", None)
    if role:
        targets = ([group] if group else []) + words
        if not targets:
            raise UsageError("--role NAME needs the JIDs or group cns to give it to (or --group CN)")
        return "role", [(target, role) for target in targets], f"role {role}"
    if group:
        if not words:
            raise UsageError("--group CN needs permission names")
        return "group", [(group, name) for name in words], f"group {group}"
    if len(words) < 2:
        raise UsageError("expected a JID and at least one permission (or --group CN / --role NAME)")
    return "user", [(words[0], name) for name in words[1:]], words[0]


def _validate_after_parse(parser: argparse.ArgumentParser, check: Callable[[Any], Any]) -> None:
    """Run ``check(namespace)`` once the subcommand's options are all parsed; a UsageError is a parse error."""
    parse_known_args = parser.parse_known_args

    def checked(args=None, namespace=None):
        namespace, extras = parse_known_args(args, namespace)
        try:
            check(namespace)
        except UsageError as exc:
            parser.error(str(exc))
        return namespace, extras

    parser.parse_known_args = checked


async def _set_permissions(session: Session, args, value: bool) -> Output:
    ptype, pairs, who = _grant_plan(args)
    children = [child for target, name in pairs for child in _changes(target, [name], value, ptype)]
    await session.acp(PERMS_NS, "set", children=children, iq_type="set")
    verb = "granted" if value else "revoked"
    if ptype == "role":
        targets = [target for target, _ in pairs]
        return Output(data={"entity": session.target, "role": pairs[0][1], verb: targets},
                      text=f"{verb} {who} {'to' if value else 'from'} {', '.join(targets)} on {session.target}")
    names = [name for _, name in pairs]
    key = "group" if ptype == "group" else "jid"
    return Output(data={"entity": session.target, key: pairs[0][0], verb: names},
                  text=f"{verb} {', '.join(names)} {'to' if value else 'from'} {who} on {session.target}")


async def run_permissions_grant(session: Session, args) -> Output:
    return await _set_permissions(session, args, True)


async def run_permissions_revoke(session: Session, args) -> Output:
    return await _set_permissions(session, args, False)


AUDIT_FILTERS = ("entity", "sender", "action", "outcome", "since", "limit")


async def run_audit(session: Session, args) -> Output:
    # ``action`` is the ACP envelope's own attribute: the filter travels as ``audit_action``.
    attrs = {("audit_action" if key == "action" else key): getattr(args, key)
             for key in AUDIT_FILTERS if getattr(args, key) not in (None, "")}
    reply = await session.acp(AUDIT_NS, "get", attrs, to=session.hypervisor)
    entries = []
    for el in _children(reply, "entry"):
        entry = dict(el.attrib)
        entry["duration"] = float(entry.get("duration") or 0)
        entry["args"] = {a.get("name"): a.get("value") for a in el if a.tag.rsplit("}", 1)[-1] == "arg"}
        entries.append(entry)
    rows = [(e.get("date", "")[:23].replace("T", " "), e.get("sender"), e.get("entity"), e.get("transport"),
             f"{e.get('namespace')} {e.get('action')}".strip(), e.get("outcome"), f"{e['duration']:.1f}",
             " ".join(f"{k}={v}" for k, v in sorted(e["args"].items())))
            for e in entries]
    return Output(data=entries, columns=("date (UTC)", "sender", "entity", "via", "command", "outcome", "ms", "arguments"),
                  rows=rows)


# --------------------------------------------------------------------- parser
def add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Connection options, accepted before or after the subcommand."""
    d = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_argument_group("connection (also read from --summary)")
    group.add_argument("--summary", metavar="FILE", help="the rig's demo.json: server, port, CA file, "
                       "admin user and hypervisor in one file", **d)
    group.add_argument("--jid", help="your bare JID (an admin of the agent)", **d)
    group.add_argument("--password", help=f"your password (visible to other local users; prefer "
                       f"--password-file or ${PASSWORD_ENV})", **d)
    group.add_argument("--password-file", metavar="FILE", help="read the password from the first line of FILE", **d)
    group.add_argument("--server", metavar="HOST", help="XMPP server to connect to (default: the JID's domain)", **d)
    group.add_argument("--port", type=int, help="XMPP c2s port (default: 5222)", **d)
    group.add_argument("--ca-file", metavar="PEM", help="CA bundle that signed the server certificate "
                       "(default: the system CAs)", **d)
    group.add_argument("--hypervisor", metavar="FULLJID", help="the hypervisor entity, with its resource "
                       "(user@domain/resource)", **d)
    group.add_argument("--timeout", type=float, help="seconds to wait for the server and each answer (default: 20)", **d)
    group.add_argument("--json", action="store_true", help="machine-readable output (JSON on stdout)", **d)
    group.add_argument("-v", "--verbose", action="store_true", help="log the XMPP conversation to stderr", **d)


def _subparser(sub, name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=description or help_text)
    add_connection_options(parser, suppress=True)
    return parser


def setup_ping(sub) -> None:
    p = _subparser(sub, "ping", "XMPP ping (XEP-0199) the hypervisor (or --entity) and print the round trip")
    p.add_argument("--entity", metavar="FULLJID", help="ping this entity instead of the hypervisor")
    p.set_defaults(run=run_ping)


def setup_acp(sub) -> None:
    p = _subparser(sub, "acp", "send a raw ACP request and print the reply XML",
                   "Send <query xmlns=NS><archipel action=ACTION key=value…>CHILDREN</archipel></query> "
                   "to the hypervisor (or --entity) and print the reply's <query>, like Archipel's "
                   "archipel-command.  Example: archipel-admin acp archipel:permissions get "
                   "permission_target=alice@example.org")
    p.add_argument("namespace", metavar="NS", help="the query namespace, e.g. archipel:hypervisor:control")
    p.add_argument("action", metavar="ACTION", help="the action attribute, e.g. capabilities")
    p.add_argument("pairs", nargs="*", metavar="key=value", help="attributes of <archipel>")
    p.add_argument("--xml", action="append", default=[], metavar="CHILDXML",
                   help="child element(s) of <archipel>, as XML text or @FILE (repeatable)")
    p.add_argument("--iq-type", choices=("get", "set"), default="get", help="IQ type (default: get)")
    p.add_argument("--entity", metavar="FULLJID", help="send to this entity instead of the hypervisor")
    p.set_defaults(run=run_acp)


def setup_permissions(sub) -> None:
    p = _subparser(sub, "permissions", "list, read, grant and revoke permissions on an entity",
                   "Permissions of users on the hypervisor (default) or on the entity given by --entity.")
    psub = p.add_subparsers(dest="permissions_command", metavar="ACTION", required=True)

    def leaf(name, help_text, run):
        q = _subparser(psub, name, help_text)
        q.add_argument("--entity", metavar="FULLJID", help="the entity (default: the hypervisor)")
        q.set_defaults(run=run)
        return q

    leaf("list", "the permissions that exist on the entity, with their defaults", run_permissions_list)
    q = leaf("get", "the explicit grants of a user (or --group) on the entity", run_permissions_get)
    q.add_argument("user", metavar="JID", nargs="?", help="the user's bare JID (not yours: --jid is the admin)")
    q.add_argument("--group", metavar="CN", help="an LDAP group's grants instead of a user's")
    q.add_argument("--roles", action="store_true", help="the roles granted (to the user or --group) instead")
    for name, verb, run in (("grant", "give", run_permissions_grant), ("revoke", "take away", run_permissions_revoke)):
        q = leaf(name, f"{verb} permissions to a user, an LDAP group (--group) or a role (--role) on the entity", run)
        q.description = (f"{name} JID PERM...: a user's own grant.  {name} --group CN PERM...: to every member of "
                         f"an LDAP group.  {name} --role NAME JID|CN...: a role (see 'roles') to users or groups.")
        q.add_argument("words", nargs="*", action=_Words, metavar="WORD",
                       help="a bare JID then permission names; with --group permission names; "
                            "with --role bare JIDs or group cns")
        q.add_argument("--group", metavar="CN", help="grant to this LDAP group (with --role: the role's target)")
        q.add_argument("--role", metavar="NAME", help="grant this role instead of permissions")
        _validate_after_parse(q, _grant_plan)


def setup_audit(sub) -> None:
    p = _subparser(sub, "audit", "show the agent's audit log (newest first)",
                   "Every command any entity of the agent answered, refusals included, newest first. "
                   "Needs the 'audit' permission on the hypervisor (admins have it).")
    p.add_argument("--entity", help="only requests to this entity (bare JID)")
    p.add_argument("--sender", help="only requests by this user (bare JID)")
    p.add_argument("--action", help="only this action, e.g. set")
    p.add_argument("--outcome", help="ok, denied, error (any error) or error:<code>")
    p.add_argument("--since", help="ISO date/time in UTC (2024-05-01T08:00) or an age: 30m, 2h, 7d")
    p.add_argument("--limit", type=int, default=None, help="at most this many entries (1-1000, default 100)")
    p.set_defaults(run=run_audit)


# ------------------------------------------------------------------ roles
async def run_roles_list(session: Session, args) -> Output:
    reply = await session.acp(PERMS_NS, "roles", to=session.hypervisor)
    roles = [{"name": el.get("name"), "description": el.get("description") or "", "creator": el.get("creator") or "",
              "permissions": sorted(p.get("permission_name") for p in el if p.get("permission_name"))}
             for el in _children(reply, "role")]
    rows = [(r["name"], ", ".join(r["permissions"]), r["description"], r["creator"]) for r in roles]
    return Output(data=roles, columns=("role", "permissions", "description", "creator"), rows=rows)


async def run_roles_set(session: Session, args) -> Output:
    children = [ET.Element("permission", {"name": name}) for name in args.permissions]
    await session.acp(PERMS_NS, "setrole", {"name": args.name, "description": args.description or ""},
                      children, to=session.hypervisor, iq_type="set")
    return Output(data={"role": args.name.lower(), "permissions": sorted(set(args.permissions))},
                  text=f"role {args.name.lower()}: {', '.join(sorted(set(args.permissions))) or 'no permission'}")


async def run_roles_delete(session: Session, args) -> Output:
    await session.acp(PERMS_NS, "delrole", {"name": args.name}, to=session.hypervisor, iq_type="set")
    return Output(data={"deleted": args.name.lower()}, text=f"deleted role {args.name.lower()} and its grants")


def setup_roles(sub) -> None:
    p = _subparser(sub, "roles", "list, create/replace and delete roles (named sets of permissions)",
                   "Roles are global to the agent and managed on the hypervisor; grant one with "
                   "'permissions grant --role NAME JID|CN'.")
    rsub = p.add_subparsers(dest="roles_command", metavar="ACTION", required=True)
    _subparser(rsub, "list", "every role and its permissions").set_defaults(run=run_roles_list)
    q = _subparser(rsub, "set", "create or replace a role (its grants are kept)")
    q.add_argument("name", metavar="NAME", help="role name (letters, digits, '.', '_', '-')")
    q.add_argument("permissions", nargs="*", metavar="PERM", help="the permissions of the role")
    q.add_argument("--description", help="what the role is for")
    q.set_defaults(run=run_roles_set)
    q = _subparser(rsub, "delete", "delete a role and every grant of it")
    q.add_argument("name", metavar="NAME", help="role name")
    q.set_defaults(run=run_roles_delete)


# ----------------------------------------------------------------- quotas
QUOTA_NS = "archipel:quota"
QUOTA_RESOURCES = ("vms", "vcpus", "memory", "disk")
QUOTA_UNITS = {"vms": "", "vcpus": "", "memory": " KiB", "disk": " bytes"}


def _quota_target(args) -> tuple[str, str]:
    if bool(args.user) == bool(args.group):
        raise UsageError("give exactly one of --user JID or --group CN")
    return ("user", args.user) if args.user else ("group", args.group)


def _quota_output(el: ET.Element) -> Output:
    limits = {name: int(el.get(name)) for name in QUOTA_RESOURCES if el.get(name) is not None}
    who = f"{el.get('target_type')} {el.get('target')}"
    text = f"quota of {who}: " + ", ".join(
        f"{name} {limits[name]}{QUOTA_UNITS[name]}" if name in limits else f"{name} unlimited" for name in QUOTA_RESOURCES)
    return Output(data={"target_type": el.get("target_type"), "target": el.get("target"), "limits": limits}, text=text)


async def run_quota_set(session: Session, args) -> Output:
    target_type, target = _quota_target(args)
    attrs = {"target_type": target_type, "target": target}
    attrs.update({name: getattr(args, name) for name in QUOTA_RESOURCES if getattr(args, name) is not None})
    if len(attrs) == 2:
        raise UsageError("nothing to set: give --vms, --vcpus, --memory and/or --disk (empty value: unlimited)")
    reply = await session.acp(QUOTA_NS, "set", attrs, to=session.hypervisor, iq_type="set")
    return _quota_output(_children(reply, "quota")[0])


async def run_quota_get(session: Session, args) -> Output:
    target_type, target = _quota_target(args)
    reply = await session.acp(QUOTA_NS, "get", {"target_type": target_type, "target": target}, to=session.hypervisor)
    return _quota_output(_children(reply, "quota")[0])


def setup_quota(sub) -> None:
    p = _subparser(sub, "quota", "set and read quotas of users and LDAP groups",
                   "Quotas limit the VMs a user owns: number of VMs, vCPUs, memory and disk.  A user's own quota "
                   "and each of their groups' quotas all apply; the most restrictive wins.  Admins are not limited.")
    qsub = p.add_subparsers(dest="quota_command", metavar="ACTION", required=True)
    for name, help_text, run in (("set", "change limits (only those given; an empty value makes it unlimited)",
                                  run_quota_set), ("get", "the limits of a user or group", run_quota_get)):
        q = _subparser(qsub, name, help_text)
        q.add_argument("--user", metavar="JID", help="a user's bare JID")
        q.add_argument("--group", metavar="CN", help="an LDAP group cn")
        if name == "set":
            q.add_argument("--vms", metavar="N", help="number of VMs")
            q.add_argument("--vcpus", metavar="N", help="vCPUs in all")
            q.add_argument("--memory", metavar="SIZE", help="memory in KiB, or with a unit: 512M, 4G")
            q.add_argument("--disk", metavar="SIZE", help="disk in bytes, or with a unit: 10G")
        q.set_defaults(run=run)


async def run_usage(session: Session, args) -> Output:
    attrs = {"target": args.user} if args.user else {}
    if args.all:
        attrs["all"] = "1"
    reply = await session.acp(QUOTA_NS, "usage", attrs, to=session.hypervisor)
    data, rows = [], []
    for el in _children(reply, "usage"):
        resources = {}
        for res in el:
            if res.tag.rsplit("}", 1)[-1] != "resource":
                continue
            limit = res.get("limit")
            resources[res.get("name")] = {
                "used": int(res.get("used")), "limit": int(limit) if limit is not None else None,
                "limited_by": f"{res.get('target_type')} {res.get('target')}" if limit is not None else None}
        vms = [dict(vm.attrib) for vm in el if vm.tag.rsplit("}", 1)[-1] == "vm"]
        data.append({"user": el.get("user"), "admin": el.get("admin") == "yes", "usage": resources, "vms": vms})
        for name in QUOTA_RESOURCES:
            r = resources.get(name, {"used": 0, "limit": None, "limited_by": None})
            limit = "unlimited (admin)" if el.get("admin") == "yes" else (
                "unlimited" if r["limit"] is None else f"{r['limit']}{QUOTA_UNITS[name]}")
            rows.append((el.get("user"), name, f"{r['used']}{QUOTA_UNITS[name]}", limit, r["limited_by"] or ""))
    return Output(data=data, columns=("user", "resource", "used", "limit", "limited by"), rows=rows)


def setup_usage(sub) -> None:
    p = _subparser(sub, "usage", "what a user's VMs use, and their effective limits",
                   "Without JID: your own usage.  Another user's (or --all) needs the quota_usage permission "
                   "on the hypervisor (admins have it).")
    p.add_argument("user", metavar="JID", nargs="?", help="the user's bare JID (default: you)")
    p.add_argument("--all", action="store_true", help="every VM owner")
    p.set_defaults(run=run_usage)


async def run_maintenance(session: Session, args) -> Output:
    reply = await session.acp("archipel:hypervisor:control", "maintenance", {"mode": args.mode},
                              to=session.hypervisor, iq_type="set" if args.mode != "status" else "get")
    el = _children(reply, "maintenance")[0]
    refused = {r.get("jid"): r.get("reason") for r in el if r.tag.rsplit("}", 1)[-1] == "refused"}
    data = {k: el.get(k) for k in ("mode", "evacuating", "total", "moved", "failed", "remaining")}
    data["refused"] = refused
    text = (f"maintenance {el.get('mode')}{' (evacuating)' if el.get('evacuating') == 'yes' else ''}: "
            f"{el.get('moved')} of {el.get('total')} VMs moved, {el.get('remaining')} still here"
            + "".join(f"\n  {jid} stays: {reason}" for jid, reason in refused.items()))
    return Output(data=data, text=text)


def setup_maintenance(sub) -> None:
    p = _subparser(sub, "maintenance", "put the hypervisor in maintenance (evacuate its VMs), back, or show progress",
                   "on: the hypervisor refuses new VMs and incoming migrations and migrates every VM it has to "
                   "its peers (placement by free memory and [HYPERVISOR] hypervisor_max_vms); off: it takes VMs "
                   "again; status: the progress and the VMs that fit nowhere, with the reason.")
    p.add_argument("mode", choices=("on", "off", "status"), nargs="?", default="status")
    p.set_defaults(run=run_maintenance)


from .ha import setup_ha  # noqa: E402 - offline (local_run), no agent
from .net import setup_net  # noqa: E402 - offline (local_run), no agent
from .doctor import setup_doctor  # noqa: E402 - local (local_run), from the agent's configuration
from .classes import setup_class  # noqa: E402 - archipel:hypervisor:classes requests

GROUPS: list[Callable[[Any], None]] = [setup_ping, setup_acp, setup_permissions, setup_audit,
                                       setup_roles, setup_quota, setup_usage, setup_class, setup_maintenance, setup_ha,
                                       setup_net,
                                       setup_doctor]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage a running Archipel agent over XMPP, as one of its admins.",
        epilog="Exit codes: 0 ok, 1 the agent answered an error, 2 usage/configuration error, "
               "3 connection or authentication failure.  Connection options may come before or "
               "after the subcommand.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for setup in GROUPS:
        setup(sub)
    return parser


# ----------------------------------------------------------- configuration
@dataclass
class Connection:
    jid: str
    password: str = field(repr=False)
    host: str
    port: int
    ca_file: str | None
    hypervisor: str
    timeout: float


def _read_summary(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--summary {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--summary {path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--summary {path}: expected a JSON object")
    return data


def resolve_connection(args, environ=os.environ) -> Connection:
    """Options first, then the summary file, then the environment (password only)."""
    summary = _read_summary(args.summary) if getattr(args, "summary", None) else {}
    users = summary.get("users") or []
    jid = getattr(args, "jid", None)
    password = getattr(args, "password", None)
    if not jid and users:
        admin = next((u for u in users if u.get("role") == "admin"), None)
        if admin:
            jid = admin.get("jid")
            password = password or admin.get("password")
    elif jid and not password and users:
        password = next((u.get("password") for u in users if u.get("jid") == jid), None)
    if getattr(args, "password_file", None):
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise UsageError(f"--password-file {args.password_file}: {getattr(exc, 'strerror', None) or 'empty file'}") from None
        if getattr(args, "password", None):
            raise UsageError("give --password or --password-file, not both")
    if not password:
        password = environ.get(PASSWORD_ENV)
    if not jid:
        raise UsageError("no JID: give --jid (or --summary)")
    node, at, domain = jid.partition("@")
    if not node or not at or not domain or "/" in domain:
        raise UsageError(f"--jid: expected a bare JID user@domain, got {jid!r}")
    if not password:
        raise UsageError(f"no password: give --password-file, ${PASSWORD_ENV} or --password")
    host = getattr(args, "server", None) or summary.get("xmpp_host") or domain
    port = getattr(args, "port", None) or summary.get("xmpp_port") or 5222
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise UsageError(f"--port: expected a number, got {port!r}") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"--port: expected 1-65535, got {port}")
    ca_file = getattr(args, "ca_file", None) or summary.get("ca_file")
    if ca_file and not os.access(ca_file, os.R_OK):
        raise UsageError(f"--ca-file: cannot read {ca_file!r}")
    hypervisor = getattr(args, "hypervisor", None) or summary.get("hypervisor_full_jid")
    if not hypervisor:
        raise UsageError("no hypervisor: give --hypervisor user@domain/resource (or --summary)")
    if "/" not in hypervisor:
        raise UsageError(f"--hypervisor: expected a full JID with its resource (user@domain/resource), got {hypervisor!r}")
    timeout = getattr(args, "timeout", None) or 20.0
    return Connection(jid=jid, password=password, host=host, port=port, ca_file=ca_file,
                      hypervisor=hypervisor, timeout=timeout)


# ---------------------------------------------------------------------- main
async def execute(args, connection: Connection) -> Output:
    target = getattr(args, "entity", None) or connection.hypervisor
    client = AdminClient(connection.jid, connection.password, host=connection.host, port=connection.port,
                         ca_file=connection.ca_file, timeout=connection.timeout)
    await client.connect()
    try:
        return await args.run(Session(client, connection.hypervisor, target), args)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "local_run", None):  # offline subcommands (ha, net): no connection
        return args.local_run(args)
    as_json = getattr(args, "json", False)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.CRITICAL,
                        format="%(levelname)s %(name)s: %(message)s")

    def fail(code: int, message: str, extra: dict | None = None) -> int:
        print(f"{PROG}: {message}", file=sys.stderr)
        if as_json:
            print(json.dumps({"ok": False, "exit": code, "error": extra or {"text": message}}))
        return code

    try:
        connection = resolve_connection(args)
        if getattr(args, "entity", None) and args.command != "audit" and "/" not in args.entity:
            raise UsageError(f"--entity: expected a full JID with its resource, got {args.entity!r}")
        output = asyncio.run(execute(args, connection))
    except UsageError as exc:
        return fail(EXIT_USAGE, f"error: {exc}")
    except AgentError as exc:
        code = f" ({exc.code})" if exc.code is not None else ""
        return fail(EXIT_AGENT_ERROR, f"the agent refused{code}: {exc.text}", exc.as_dict())
    except AdminError as exc:
        return fail(exc.exit_code, str(exc))
    except KeyboardInterrupt:
        return fail(130, "interrupted")
    if as_json:
        print(json.dumps(output.data, indent=2, ensure_ascii=False))
    else:
        print(output.render())
    return EXIT_OK


if __name__ == "__main__":  # python -m archipelagent.admin.cli
    sys.exit(main())
