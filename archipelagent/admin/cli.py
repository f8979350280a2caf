"""``archipel-admin``: manage a running agent over XMPP, as an admin.

It never touches the agent's databases: every change is an ACP request the
agent checks and records in its audit log like any other.

Exit codes: 0 ok, 1 the agent answered an error, 2 usage or configuration
error, 3 connection or authentication failure.

Adding a subcommand group (roles, quotas…): write ``setup_<group>(sub)``
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
from typing import Any, Awaitable, Callable, Iterable

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
    reply = await session.acp(PERMS_NS, "get", {"permission_target": args.user, "permission_type": "user"})
    names = [el.get("name") for el in _children(reply, "permission")]
    text = f"{args.user} on {session.target}: " + (", ".join(names) if names else "no explicit grant")
    return Output(data={"entity": session.target, "jid": args.user, "permissions": names}, text=text)


def _changes(jid: str, names: list[str], value: bool) -> list[ET.Element]:
    return [ET.Element("permission", {"permission_type": "user", "permission_target": jid,
                                      "permission_name": name, "permission_value": "true" if value else "false"})
            for name in names]


async def _set_permissions(session: Session, args, value: bool) -> Output:
    await session.acp(PERMS_NS, "set", children=_changes(args.user, args.permissions, value), iq_type="set")
    verb = "granted" if value else "revoked"
    return Output(data={"entity": session.target, "jid": args.user, verb: args.permissions},
                  text=f"{verb} {', '.join(args.permissions)} {'to' if value else 'from'} {args.user} on {session.target}")


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
    q = leaf("get", "the explicit grants of a user on the entity", run_permissions_get)
    q.add_argument("user", metavar="JID", help="the user's bare JID (not yours: --jid is the admin)")
    for name, verb, run in (("grant", "give", run_permissions_grant), ("revoke", "take away", run_permissions_revoke)):
        q = leaf(name, f"{verb} permissions to a user on the entity", run)
        q.add_argument("user", metavar="JID", help="the user's bare JID (not yours: --jid is the admin)")
        q.add_argument("permissions", nargs="+", metavar="PERM", help="permission names (see 'permissions list')")


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


GROUPS: list[Callable[[Any], None]] = [setup_ping, setup_acp, setup_permissions, setup_audit]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage a running Archipel agent over XMPP, as one of its admins.",
        epilog="Exit codes: 0 ok, 1 the agent answered an error, 2 usage/configuration error, "
               "3 connection or authentication failure.  Connection options may come before or "
               "after the subcommand.",
    )
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
