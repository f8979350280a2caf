"""Persisted jobs and the one timer loop that runs them.

A job names an entity (bare JID), a command of that entity (namespace, action,
arguments) and the bare JID of who scheduled it.  It is run through
``dispatch.run_command`` with that JID as sender and transport
``scheduler``: the permission is checked again at run time, the audit log and
the metrics record it, exactly as if that person had sent it then.

Once, even across restarts (the rule documented in docs/ARCHITECTURE.md):
before a job runs its row is changed and committed — a one-shot job is marked
``running`` (deleted once it has run), a periodic one gets its next date — so
a job is run at most once per date.  A one-shot job found ``running`` at start
was cut by a stop or a crash: it is reported and dropped, never run again.  A
job that came due while the agent was down runs once at start when it is at
most ``grace`` seconds late; later than that it is reported (log warning +
push ``jobmissed``) and not run (a periodic job keeps its next dates).  A
periodic job that missed several dates runs once.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArchipelError, NotFound
from ..sqlite import open_private_db
from ..xmlns import element
from .spec import FIELDS, Spec, _parse_field

log = logging.getLogger(__name__)

PUSH = "archipel:push:scheduler"
TRANSPORT = "scheduler"
IDLE_WAKE = 60.0  # seconds: the loop re-reads the clock at least this often (wall clock changes)
SCHEMA = ("""CREATE TABLE IF NOT EXISTS jobs (
    uid TEXT PRIMARY KEY, entity TEXT NOT NULL, job TEXT NOT NULL, namespace TEXT NOT NULL,
    action TEXT NOT NULL, args TEXT NOT NULL, owner TEXT NOT NULL, fields TEXT NOT NULL,
    next_run REAL NOT NULL, comment TEXT NOT NULL, state TEXT NOT NULL, created TEXT NOT NULL)""",
          "CREATE INDEX IF NOT EXISTS jobs_next ON jobs(state, next_run)",
          "CREATE INDEX IF NOT EXISTS jobs_entity ON jobs(entity)")
_COLUMNS = "uid, entity, job, namespace, action, args, owner, fields, next_run, comment, state, created"


@dataclass(frozen=True)
class Job:
    uid: str
    entity: str
    job: str
    namespace: str
    action: str
    args: dict
    owner: str
    spec: Spec
    next_run: float
    comment: str
    state: str
    created: str

    @classmethod
    def from_row(cls, row) -> "Job":
        uid, entity, job, ns, action, args, owner, fields, next_run, comment, state, created = row
        raw = tuple(json.loads(fields))
        spec = Spec(raw=raw, allowed=tuple(_parse_field(n, v) for n, v in zip(FIELDS, raw)))
        return cls(uid, entity, job, ns, action, json.loads(args), owner, spec, next_run, comment, state, created)

    def element(self):
        """Archipel's ``<job action uid date comment/>``, plus who, when next and whether it repeats."""
        return element("job", {
            "action": self.job, "uid": self.uid, "date": self.spec.text(), "comment": self.comment,
            "owner": self.owner, "periodic": "yes" if self.spec.periodic else "no",
            "next": datetime.datetime.fromtimestamp(self.next_run).isoformat(timespec="seconds")})


class Scheduler:
    """The jobs database and the loop; built by ``modules/scheduler.py``."""

    def __init__(self, agent, database: Path, grace: float):
        self.agent = agent
        self.database = database
        self.grace = grace
        self.db = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def open(self) -> None:
        self.db = await open_private_db(self.database, SCHEMA)
        await self._recover_interrupted()

    def _on_libvirt_state(self, connected: bool) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self.agent.libvirt.remove_state_listener(self._on_libvirt_state)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.db is not None:
            await self.db.close()
            self.db = None

    def start(self) -> None:
        """Start the loop (once the entities are loaded: jobs name them)."""
        if self._task is None:
            self.agent.libvirt.add_state_listener(self._on_libvirt_state)
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="scheduler")

    # ------------------------------------------------------------ jobs
    async def add(self, *, entity: str, job: str, namespace: str, action: str, args: dict, owner: str,
                  spec: Spec, comment: str, now: float | None = None) -> Job:
        now = time.time() if now is None else now
        next_run = spec.next_after(now)
        if next_run is None:  # parse_spec refused it already; a date passed since
            raise NotFound(f"{spec.text()} never comes")
        record = Job(uid=str(uuidlib.uuid4()), entity=entity, job=job, namespace=namespace, action=action,
                     args=args, owner=owner, spec=spec, next_run=next_run, comment=comment, state="scheduled",
                     created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        await self.db.execute(
            f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.uid, entity, job, namespace, action, json.dumps(args), owner, json.dumps(list(spec.raw)),
             next_run, comment, "scheduled", record.created))
        await self.db.commit()
        self._wake.set()
        return record

    async def remove(self, entity: str, uid: str) -> Job:
        job = await self.get(entity, uid)
        await self.db.execute("DELETE FROM jobs WHERE uid = ?", (uid,))
        await self.db.commit()
        self._wake.set()
        return job

    async def get(self, entity: str, uid: str) -> Job:
        async with self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE uid = ? AND entity = ?", (uid, entity)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no scheduled job {uid!r} on {entity}")
        return Job.from_row(row)

    async def jobs(self, entity: str | None = None) -> list[Job]:
        where, params = ("WHERE entity = ?", (entity,)) if entity else ("", ())
        async with self.db.execute(f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY next_run, uid", params) as cur:
            return [Job.from_row(r) for r in await cur.fetchall()]

    async def remove_named(self, entity: str, names: set[str], args: dict | None = None) -> int:
        """Drop the jobs of ``entity`` called one of ``names`` (and, if given, with exactly ``args``):
        how a feature replaces the jobs it planned (a lease extended)."""
        removed = 0
        for job in await self.jobs(entity):
            if job.job in names and (args is None or job.args == args) and job.state == "scheduled":
                await self.db.execute("DELETE FROM jobs WHERE uid = ? AND state = 'scheduled'", (job.uid,))
                removed += 1
        await self.db.commit()
        self._wake.set()
        return removed

    async def on_vm_gone(self, _uuid: str, jid: str) -> None:
        removed = await self.remove_entity(jid)
        if removed:
            log.info("scheduler: %d job(s) of %s dropped: the VM was freed or unmanaged", removed, jid)

    async def remove_entity(self, entity: str) -> int:
        """Drop the jobs of an entity that is gone for good (freed, unmanaged: a domain managed
        again later gets the same JID, and must not run its former owner's jobs)."""
        cur = await self.db.execute("DELETE FROM jobs WHERE entity = ?", (entity,))
        await self.db.commit()
        return cur.rowcount

    # ------------------------------------------------------------ the loop
    async def _recover_interrupted(self) -> None:
        """A one-shot job left ``running`` was cut by a stop or crash: reported, never re-run."""
        async with self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'running'") as cur:
            rows = [Job.from_row(r) for r in await cur.fetchall()]
        for job in rows:
            log.warning("scheduler: job %s (%s on %s by %s) was interrupted by the last stop; not run again",
                        job.uid, job.job, job.entity, job.owner)
            await self.db.execute("DELETE FROM jobs WHERE uid = ? AND state = 'running'", (job.uid,))
        await self.db.commit()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                if self.agent.libvirt.connected:  # while libvirt is down due jobs wait (the grace applies)
                    await self.run_due(time.time())
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad pass must not end the scheduler
                log.exception("scheduler: a pass failed")
            async with self.db.execute("SELECT MIN(next_run) FROM jobs WHERE state = 'scheduled'") as cur:
                (nxt,) = await cur.fetchone()
            delay = IDLE_WAKE if nxt is None else min(IDLE_WAKE, max(0.0, nxt - time.time()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def run_due(self, now: float) -> list[Job]:
        """Claim every due job (the commit before the run is what makes it once) and start its run."""
        async with self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'scheduled' AND next_run <= ? "
                                   "ORDER BY next_run", (now,)) as cur:
            due = [Job.from_row(r) for r in await cur.fetchall()]
        started = []
        for job in due:
            late = now - job.next_run
            missed = late > self.grace
            if job.spec.periodic:
                nxt = job.spec.next_after(now)
                if nxt is None:
                    await self.db.execute("UPDATE jobs SET state = 'running' WHERE uid = ?", (job.uid,))
                else:
                    await self.db.execute("UPDATE jobs SET next_run = ? WHERE uid = ?", (nxt, job.uid))
                last = nxt is None
            else:
                await self.db.execute("UPDATE jobs SET state = 'running' WHERE uid = ?", (job.uid,))
                last = True
            await self.db.commit()
            if missed:
                log.warning("scheduler: job %s (%s on %s by %s) was due %.0f s ago, more than the grace of %.0f s: "
                            "not run", job.uid, job.job, job.entity, job.owner, late, self.grace)
                self.agent.spawn(self._report_missed(job, last), name=f"scheduler-missed-{job.uid}")
                continue
            started.append(job)
            self.agent.spawn(self._run(job, last), name=f"scheduler-{job.uid}")
        return started

    def _entity(self, jid: str):
        hv = self.agent.hypervisor
        if hv is not None and hv.jid == jid:
            return hv
        return self.agent.vms.entities.get(jid.split("@", 1)[0])

    async def _run(self, job: Job, last: bool) -> None:
        """Run one claimed job as its owner; a run cut by the agent's stop keeps its ``running`` row."""
        from ..commands.dispatch import run_command  # the one path to a handler (layer above this one)
        outcome = "ok"
        entity = self._entity(job.entity)
        command = self.agent.registry.lookup(entity.kind, job.namespace, job.action) if entity else None
        if entity is None:
            outcome = "error:-47"
            log.warning("scheduler: job %s: %s is not on this hypervisor; not run", job.uid, job.entity)
        elif command is None:
            outcome = "error:-44"
            log.warning("scheduler: job %s: %s does not serve %s %s", job.uid, job.entity, job.namespace, job.action)
        else:
            log.info("scheduler: running job %s: %s on %s as %s", job.uid, job.job, job.entity, job.owner)
            try:
                await run_command(entity, command, job.owner, job.args, TRANSPORT)
            except ArchipelError as exc:
                outcome = f"error:{exc.code}"
                log.warning("scheduler: job %s (%s on %s by %s) failed: %s", job.uid, job.job, job.entity,
                            job.owner, exc.message)
            except Exception:  # noqa: BLE001 - reported, and the job is done
                outcome = "error:internal"
                log.exception("scheduler: job %s (%s on %s) failed", job.uid, job.job, job.entity)
        if last or entity is None:  # a job whose entity left this hypervisor (freed, migrated) is dropped
            await self.db.execute("DELETE FROM jobs WHERE uid = ?", (job.uid,))
            await self.db.commit()
        if entity is not None:
            await _push(entity, "jobexecuted", job, outcome)

    async def _report_missed(self, job: Job, last: bool) -> None:
        if last:
            await self.db.execute("DELETE FROM jobs WHERE uid = ?", (job.uid,))
            await self.db.commit()
        entity = self._entity(job.entity)
        if entity is not None:
            await _push(entity, "jobmissed", job, "missed")


async def _push(entity, change: str, job: Job, outcome: str | None = None) -> None:
    el = job.element()
    if outcome is not None:
        el.set("outcome", outcome)
    try:
        await entity.push(PUSH, change, [el])
    except Exception as exc:  # noqa: BLE001 - a push never fails the job
        log.warning("%s: scheduler push %s failed: %s", entity.jid, change, exc)

