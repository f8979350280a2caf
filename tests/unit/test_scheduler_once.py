"""The scheduler's "once" rule on its real SQLite database: claim before run, interrupted runs
dropped at start, jobs later than the grace reported and not run, periodic jobs coalesced."""
import asyncio
import time
from types import SimpleNamespace

from archipelagent.scheduler import Scheduler, parse_spec


class Agent:
    """Just what the scheduler reads of the agent: no entity is here, runs are recorded."""

    def __init__(self):
        self.hypervisor = None
        self.vms = SimpleNamespace(entities={})
        self.spawned = []

    def spawn(self, coro, name=None):
        self.spawned.append(name)
        coro.close()  # the run itself is not under test here


def fields(t: float, **over):
    lt = time.localtime(t)
    f = dict(year=str(lt.tm_year), month=str(lt.tm_mon), day=str(lt.tm_mday), hour=str(lt.tm_hour),
             minute=str(lt.tm_min), second=str(lt.tm_sec))
    f.update(over)
    return f


async def _add(svc, spec, now):
    return await svc.add(entity="vm@x", job="destroy", namespace="ns", action="destroy", args={}, owner="u@x",
                         spec=spec, comment="", now=now)


def test_a_claimed_job_is_not_run_again_after_a_crash(tmp_path):
    async def main():
        now = time.time()
        svc = Scheduler(Agent(), tmp_path / "s.sqlite3", grace=3600)
        await svc.open()
        job = await _add(svc, parse_spec(fields(now + 10), now), now)
        started = await svc.run_due(now + 11)
        assert [j.uid for j in started] == [job.uid]
        assert [j.state for j in await svc.jobs()] == ["running"]
        await svc.db.close()  # the "crash": the run never finished
        again = Scheduler(Agent(), tmp_path / "s.sqlite3", grace=3600)
        await again.open()
        assert await again.jobs() == [] and await again.run_due(now + 12) == []
        await again.close()
    asyncio.run(main())


def test_later_than_the_grace_is_reported_not_run(tmp_path):
    async def main():
        now = time.time()
        agent = Agent()
        svc = Scheduler(agent, tmp_path / "s.sqlite3", grace=60)
        await svc.open()
        await _add(svc, parse_spec(fields(now + 10), now), now)
        assert await svc.run_due(now + 10 + 61) == []
        assert agent.spawned and agent.spawned[0].startswith("scheduler-missed-")
        await svc.close()
    asyncio.run(main())


def test_a_periodic_job_that_missed_many_dates_runs_once_and_keeps_its_next(tmp_path):
    async def main():
        now = time.time()
        svc = Scheduler(Agent(), tmp_path / "s.sqlite3", grace=3600)
        await svc.open()
        spec = parse_spec(fields(now, year="*", month="*", day="*", hour="*", minute="*", second="0"), now)
        job = await _add(svc, spec, now)
        later = now + 600  # ten dates missed
        assert [j.uid for j in await svc.run_due(later)] == [job.uid]
        (kept,) = await svc.jobs()
        assert kept.state == "scheduled" and later < kept.next_run <= later + 60
        assert await svc.run_due(later) == []
        await svc.close()
    asyncio.run(main())
