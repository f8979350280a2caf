"""``archipel:entity:scheduler``: Archipel's action scheduler ("Plannification"), on every entity.

``schedule job year month day hour minute second comment [param]`` plans one
of the entity's actions (``actions`` lists them) once, at a date, or
periodically (cron-like fields, see ``archipelagent/scheduler/spec.py``);
``jobs`` lists them (``<job action uid date comment/>``), ``unschedule uid``
removes one.  Pushes ``scheduler`` ``scheduled``/``unscheduled``/
``jobexecuted``/``jobmissed``.  The job runs with the rights of who scheduled
it, checked at run time through the same dispatch as a request; scheduling
also needs that right now, so nobody plans what they may not do.
Configuration: ``[SCHEDULER] scheduler_database_path`` (default
``<lib_dir>/scheduler.sqlite3``), ``scheduler_misfire_grace`` (seconds a job
may be late and still run, default 3600).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from archipelagent.commands import Arg, CommandSet
from archipelagent.commands.dispatch import parse_arguments
from archipelagent.config import ConfigError
from archipelagent.errors import InvalidArgument, Unavailable
from archipelagent.scheduler import FIELDS, Scheduler, parse_spec
from archipelagent.scheduler.service import _push

log = logging.getLogger(__name__)

NS = "archipel:entity:scheduler"
SECTION = "SCHEDULER"
VM_CONTROL = "archipel:vm:control"
HV_CONTROL = "archipel:hypervisor:control"

# What a job may do, per entity kind: job name -> (namespace, action, argument `param` fills or None, required).
ACTIONS = {
    "vm": {**{name: (VM_CONTROL, name, None, False) for name in ("create", "destroy", "reboot", "suspend", "resume")},
           "shutdown": (VM_CONTROL, "shutdown", "timeout", False)},  # param: destroy after that many seconds
    "hypervisor": {"free": (HV_CONTROL, "free", "jid", True)},
}


def read_config(config) -> tuple[Path, float]:
    parser, path = config.parser, config.path
    raw_db = raw_grace = ""
    if parser is not None and parser.has_section(SECTION):
        raw_db = (parser.get(SECTION, "scheduler_database_path", fallback="") or "").strip()
        raw_grace = (parser.get(SECTION, "scheduler_misfire_grace", fallback="") or "").strip()
    if raw_db and not os.path.isabs(raw_db):
        raise ConfigError(path, SECTION, "scheduler_database_path", f"expected an absolute path, found {raw_db!r}")
    grace = 3600.0
    if raw_grace:
        try:
            grace = float(raw_grace)
        except ValueError:
            raise ConfigError(path, SECTION, "scheduler_misfire_grace", f"expected seconds, found {raw_grace!r}") from None
        if not 0 <= grace <= 30 * 86400:
            raise ConfigError(path, SECTION, "scheduler_misfire_grace", f"expected 0 to 2592000, found {raw_grace}")
    return (Path(raw_db) if raw_db else Path(config.lib_dir) / "scheduler.sqlite3"), grace


def service(agent) -> Scheduler:
    found = agent.module_services.get("scheduler")
    if found is None:
        raise Unavailable("the scheduler module is not set up")
    return found


async def setup(agent) -> None:
    database, grace = read_config(agent.config)
    svc = Scheduler(agent, database, grace)
    await svc.open()
    agent.module_services["scheduler"] = svc
    agent.vms.add_gone_listener(svc.on_vm_gone)  # a freed VM's jobs go with it


async def ready(agent) -> None:
    """The entities are loaded: jobs can find them, the loop starts (due jobs run now, by the grace rule)."""
    service(agent).start()


async def teardown(agent) -> None:
    svc = agent.module_services.pop("scheduler", None)
    if svc is not None:
        agent.vms.remove_gone_listener(svc.on_vm_gone)
        await svc.close()


# ------------------------------------------------------------------ commands
commands = CommandSet()
KINDS = ("hypervisor", "vm")


def _render_jobs(payload) -> str:
    if not payload:
        return "No scheduled jobs."
    return "\n".join(f"{j.get('uid')}: {j.get('action')} at {j.get('date')} (next {j.get('next')})"
                     f"{' - ' + j.get('comment') if j.get('comment') else ''}" for j in payload)


def _date_arg(name: str) -> Arg:
    required = name != "second"
    return Arg(name, required=required, default="0", help=f"{name}: a number, or *, */n, a-b, a-b/n, a,b")


@commands.command(NS, "schedule", kinds=KINDS, permission="scheduler_schedule",
                  permission_description="Schedule actions on this entity",
                  args=(Arg("job", help="the action to run (see scheduler actions)"),
                        *(_date_arg(n) for n in FIELDS),
                        Arg("comment", required=False, default="", rest=True, help="a note shown in the job list"),
                        Arg("param", required=False, default=None, help="the action's argument (hypervisor free: a VM JID)")),
                  chat=("schedule",), help="run an action of this entity at a date, or periodically",
                  chat_render=lambda p: f"Scheduled job {p[0].get('uid')}.")
async def schedule(ctx, job, year, month, day, hour, minute, second, comment, param):
    entity = ctx.entity
    table = ACTIONS.get(entity.kind, {})
    if job not in table:
        raise InvalidArgument("job", f"{job!r} is not one of {', '.join(sorted(table)) or 'nothing on this entity'}")
    namespace, action, param_name, param_required = table[job]
    if param_name is None and param:
        raise InvalidArgument("param", f"{job} takes no parameter")
    if param_required and not param:
        raise InvalidArgument("param", f"{job} needs a parameter ({param_name})")
    if len(comment or "") > 1024:
        raise InvalidArgument("comment", "at most 1024 characters")
    spec = parse_spec(dict(zip(FIELDS, (year, month, day, hour, minute, second))), time.time())
    command = ctx.agent.registry.lookup(entity.kind, namespace, action)
    if command is not None and command.permission:  # the right to plan it is the right to do it (checked again then)
        await ctx.agent.permissions.require(entity.jid, entity.kind, ctx.sender_bare, command.permission, action=action)
    args = {param_name: param} if param_name and param else {}
    if command is not None:  # the parameter is checked now, as the action will parse it
        try:
            parse_arguments(command, args)
        except InvalidArgument as exc:
            raise InvalidArgument("param", exc.message) from None
    record = await service(ctx.agent).add(entity=entity.jid, job=job, namespace=namespace, action=action, args=args,
                                          owner=ctx.sender_bare, spec=spec, comment=comment or "")
    await _push(entity, "scheduled", record)
    return [record.element()]


@commands.command(NS, "unschedule", kinds=KINDS, permission="scheduler_unschedule",
                  permission_description="Remove scheduled jobs of this entity",
                  args=(Arg("uid", help="the job's uid (see scheduler jobs)"),),
                  chat=("unschedule",), help="remove a scheduled job",
                  chat_render=lambda p: "Job removed.")
async def unschedule(ctx, uid):
    record = await service(ctx.agent).remove(ctx.entity.jid, uid)
    await _push(ctx.entity, "unscheduled", record)
    return []


@commands.command(NS, "jobs", kinds=KINDS, permission="scheduler_jobs",
                  permission_description="See the scheduled jobs of this entity",
                  chat=("jobs", "scheduled jobs"), help="the jobs scheduled on this entity", chat_render=_render_jobs)
async def jobs(ctx):
    return [job.element() for job in await service(ctx.agent).jobs(ctx.entity.jid)]


@commands.command(NS, "actions", kinds=KINDS, permission="scheduler_actions",
                  permission_description="See which actions can be scheduled on this entity",
                  chat=("scheduler actions",), help="the actions a job can run on this entity",
                  chat_render=lambda p: ", ".join(a.text for a in p) or "None.")
async def actions(ctx):
    from archipelagent.commands import element
    return [element("action", text=name) for name in sorted(ACTIONS.get(ctx.entity.kind, {}))]
