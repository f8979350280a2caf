"""``archipel:audit`` on the hypervisor: read the audit log (permission ``audit``)."""
from __future__ import annotations

from .log import QUERY_MAX_LIMIT, parse_since
from ..commands import Arg, CommandSet, element
from ..errors import Unavailable
from ..jids import bare_jid_arg
from ..values import bounded_int

NS = "archipel:audit"
CHAT_LIMIT = 3000
OUTCOMES = "ok, denied, error (any error) or error:<code>"

commands = CommandSet()


_limit = bounded_int(1, QUERY_MAX_LIMIT)


def _since(value: str) -> str:
    parse_since(value)  # validates; the store parses again at query time (ages are relative)
    return value


def _outcome(value: str) -> str:
    if value in ("ok", "denied", "error") or (value.startswith("error:") and len(value) > 6):
        return value
    raise ValueError(f"expected {OUTCOMES}, got {value!r}")


# Order matters for chat, where arguments are positional: `audit 20 alice@example.org`.
QUERY_ARGS = (
    Arg("limit", parse=_limit, required=False, default=100, help=f"how many entries, newest first (1-{QUERY_MAX_LIMIT})"),
    Arg("sender", parse=bare_jid_arg, required=False, help="only requests by this bare JID"),
    # ``action`` is taken by the ACP envelope itself: the filter is ``audit_action``.
    Arg("audit_action", required=False, help="only this action (e.g. set)"),
    Arg("outcome", parse=_outcome, required=False, help=OUTCOMES),
    Arg("entity", parse=bare_jid_arg, required=False, help="only requests to this entity (bare JID)"),
    Arg("since", parse=_since, required=False, help="ISO date/time (UTC) or an age: 30m, 2h, 7d"),
)


def entry_element(entry: dict):
    return element(
        "entry",
        {
            "date": entry["date"], "sender": entry["sender"], "entity": entry["entity"],
            "transport": entry["transport"], "namespace": entry["namespace"], "action": entry["action"],
            "outcome": entry["outcome"], "duration": f"{entry['duration_ms']:.3f}",
        },
        children=[element("arg", {"name": name, "value": value}) for name, value in sorted(entry["args"].items())],
    )


def render_entries(payload) -> str:
    """One short line per entry, newest first."""
    if not payload:
        return "No audit entries match."
    lines = []
    for el in payload:
        args = " ".join(f"{a.get('name')}={a.get('value')}" for a in el)
        what = f"{el.get('namespace')} {el.get('action')}".strip()
        lines.append(f"{el.get('date')[:19].replace('T', ' ')} {el.get('sender')} → {el.get('entity')}: "
                     f"{what} via {el.get('transport')}: {el.get('outcome')}" + (f" [{args}]" if args else ""))
    text = "\n".join(lines)
    if len(text) > CHAT_LIMIT:
        text = text[:CHAT_LIMIT] + "\n… (more entries: ask for fewer, e.g. 'audit 10', or use the admin CLI)"
    return text


@commands.command(
    NS, "get", permission="audit", kinds=("hypervisor",), args=QUERY_ARGS, chat=("audit",),
    help="the audit log of this agent's entities, newest first", chat_render=render_entries,
    permission_description="Read the audit log of every entity of this agent",
)
async def get_audit(ctx, limit, sender, audit_action, outcome, entity, since):
    audit = getattr(ctx.agent, "audit", None)
    if audit is None:
        raise Unavailable("the audit log is not open")
    entries = await audit.query(entity=entity, sender=sender, action=audit_action, outcome=outcome,
                                since=since, limit=limit)
    return [entry_element(entry) for entry in entries]


__all__ = ["NS", "commands", "entry_element", "render_entries"]
