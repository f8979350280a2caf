"""``archipel-admin class ...``: the teacher's class commands, as ACP requests to the hypervisor.

Like every other subcommand it sends ordinary requests (``archipel:hypervisor:classes``),
so the agent checks the sender's permissions and records each step in its audit log.
"""
from __future__ import annotations

from typing import Any

CLASSES_NS = "archipel:hypervisor:classes"
COLUMNS = {
    "provision": ("student", "status", "name", "jid", "hypervisor", "error"),
    "report": ("name", "student", "state", "changed", "expiry", "network", "hypervisor"),
    "bulk": ("name", "student", "status", "hypervisor", "error"),
}


def _rows(reply, columns) -> tuple[list[dict], list[tuple]]:
    items = [dict(el.attrib) for el in reply if el.tag.rsplit("}", 1)[-1] == "vm"]
    return items, [tuple(item.get(c, "") for c in columns) for item in items]


def _runner(action: str, shape: str):
    async def run(session, args) -> Any:
        from .cli import Output  # the CLI module imports this one
        attrs = {"name": args.name}
        for key in ("group", "golden", "role", "network", "expiry", "warn", "grace"):
            if getattr(args, key, None):
                attrs[key] = getattr(args, key)
        if getattr(args, "force", False):
            attrs["force"] = "yes"
        reply = await session.acp(CLASSES_NS, action, attrs, to=session.hypervisor, iq_type="set")
        if action == "lease":
            lease = next(iter(reply), None)
            data = dict(lease.attrib) if lease is not None else {}
            return Output(data=data, text=f"class {args.name}: lease until {data.get('expiry')}, warnings "
                                           f"{data.get('warn') or 'none'} before, trash {data.get('grace')} s after")
        data, rows = _rows(reply, COLUMNS[shape])
        return Output(data=data, columns=COLUMNS[shape], rows=rows)
    return run


def setup_class(sub) -> None:
    from .cli import _subparser
    p = _subparser(sub, "class", "teachers' classes: one VM per member of an LDAP group",
                   "A class gives each member of an LDAP group a VM <class>-<uid> made from a golden image; the "
                   "teacher owns them, each student gets a role on their own VM.  Re-running provision adds the "
                   "group's newcomers.")
    csub = p.add_subparsers(dest="class_command", metavar="ACTION", required=True)
    q = _subparser(csub, "provision", "create the class, or add the group's newcomers")
    q.add_argument("name", help="class name (VMs are named <name>-<uid>)")
    q.add_argument("--group", help="LDAP group cn (first run)")
    q.add_argument("--golden", help="golden image name (first run)")
    q.add_argument("--role", help="the role students get on their VM (first run)")
    q.add_argument("--network", help="the network of each VM's NIC (first run; you need 'use' on it)")
    q.set_defaults(run=_runner("provision", "provision"))
    q = _subparser(csub, "report", "each VM: its student, state, last change and lease")
    q.add_argument("name")
    q.set_defaults(run=_runner("report", "report"))
    for action, help_text in (("start", "start every VM"), ("stop", "power off every VM"),
                              ("reset", "back to the golden image (running VMs only with --force)"),
                              ("delete", "free every VM and forget the class")):
        q = _subparser(csub, action, help_text)
        q.add_argument("name")
        if action == "reset":
            q.add_argument("--force", action="store_true", help="reset running VMs too (they are powered off)")
        q.set_defaults(run=_runner(action, "bulk"))
    q = _subparser(csub, "lease", "set or extend the class's lease")
    q.add_argument("name")
    q.add_argument("expiry", help="+<duration> (30m, 2h, 7d) or a local ISO date")
    q.add_argument("--warn", help="warn this long before, comma list (default 24h,1h)")
    q.add_argument("--grace", help="trash the VMs this long after the expiry (default 7d)")
    q.set_defaults(run=_runner("lease", "lease"))
