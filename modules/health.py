"""``archipel:hypervisor:health`` info, history and logs: the hypervisor's own health (Archipel's "Santé").

A collector samples the host on a timer (``[HEALTH] health_collection_interval``
seconds): the /proc reads and the local mounts' ``statvfs`` run in a worker
thread, never on the loop, and a sample never sleeps (CPU use and network
rates are deltas between two samples).  Each sample is a row of
``health.sqlite3`` (0600, WAL), bounded to ``max_rows_before_purge`` rows, so
``history`` survives restarts.  Wire shapes are Archipel's: ``info`` gives
``<memory/> <cpu/> <disk><partition/></disk> <load/> <uptime/> <uname/>``
plus ``<networks>``, ``<libvirt>`` and ``<driver>``; ``history`` gives
``<stat>`` elements, newest first; ``logs`` ``<log level date>line</log>``.
The storage action of the same namespace lives in ``storage/commands.py``.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import libvirt

from archipelagent.commands import Arg, CommandSet, element
from archipelagent.config import ConfigError
from archipelagent.errors import Unavailable
from archipelagent.health.proc import Sample, cpu_use, read_sample
from archipelagent.sqlite import open_private_db
from archipelagent.values import bounded_int

log = logging.getLogger(__name__)

NS = "archipel:hypervisor:health"
SECTION = "HEALTH"
MAX_LIMIT = 1000
VM_STATS_TIMEOUT = 10.0  # seconds a sample waits for the bulk VM call (it goes on in its lane)
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+(.*)$")
SCHEMA = ("""CREATE TABLE IF NOT EXISTS stats (
    date TEXT NOT NULL, cpu_use REAL NOT NULL, mem_total INTEGER, mem_free INTEGER, mem_used INTEGER,
    swapped INTEGER, load1 REAL, load5 REAL, load15 REAL, net_rx INTEGER, net_tx INTEGER)""",
          "CREATE INDEX IF NOT EXISTS stats_date ON stats(date)")


@dataclass(frozen=True)
class HealthConfig:
    interval: float
    max_rows: int
    database: Path


def read_config(config) -> HealthConfig:
    parser, path = config.parser, config.path

    def number(key: str, default: float, minimum: float, maximum: float, kind=int):
        if parser is None or not parser.has_section(SECTION):
            return default
        raw = (parser.get(SECTION, key, fallback="") or "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(path, SECTION, key, f"expected a number, found {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(path, SECTION, key, f"expected {minimum} to {maximum}, found {raw}")
        return value

    database = None
    if parser is not None and parser.has_section(SECTION):
        database = (parser.get(SECTION, "health_database_path", fallback="") or "").strip() or None
    if database and not os.path.isabs(database):
        raise ConfigError(path, SECTION, "health_database_path", f"expected an absolute path, found {database!r}")
    return HealthConfig(interval=number("health_collection_interval", 10.0, 0.2, 3600.0, float),
                        max_rows=number("max_rows_before_purge", 8640, 10, 10_000_000),
                        database=Path(database) if database else Path(config.lib_dir) / "health.sqlite3")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class HealthCollector:
    """Samples the host on a timer; keeps the newest derived figures and the history rows."""

    def __init__(self, agent, cfg: HealthConfig):
        self.agent, self.cfg = agent, cfg
        self.db = None
        self.latest: dict | None = None
        self.sample_ms: deque[float] = deque(maxlen=100)  # what a sample costs (bench/bench_health.py reads it)
        self._previous: Sample | None = None
        self._task: asyncio.Task | None = None
        self._inserted = 0
        self.vm_stats: dict[str, dict] = {}  # uuid -> the VM's last figures (libvirt's bulk stats, one call for all)
        self._vm_cpu: dict[str, tuple[float, int]] = {}  # uuid -> (time, cpu.time ns) of the previous sample
        self._vm_call: asyncio.Future | None = None

    async def open(self) -> None:
        self.db = await open_private_db(self.cfg.database, SCHEMA)

    def start(self) -> None:
        self._task = self.agent.spawn(self._run(), name="health-collector")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.db is not None:
            await self.db.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.collect()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad sample must not end the collector
                log.exception("health: sample failed")
            await asyncio.sleep(self.cfg.interval)

    async def collect(self) -> dict:
        started = time.perf_counter()
        sample = await asyncio.to_thread(read_sample, time.time())
        self.sample_ms.append((time.perf_counter() - started) * 1000)
        prev, self._previous = self._previous, sample
        use = cpu_use(prev.cpu_times, sample.cpu_times) if prev else {}
        elapsed = max(sample.time - prev.time, 1e-6) if prev else None
        networks = {}
        for name, (rx, tx) in sample.net.items():
            before = prev.net.get(name) if prev else None
            rate = ((rx - before[0]) / elapsed, (tx - before[1]) / elapsed) if before and elapsed else (0.0, 0.0)
            networks[name] = (int(max(0, rate[0])), int(max(0, rate[1])))
        self.latest = {"date": _now(), "cpu": use, "memory": sample.memory, "load": sample.load,
                       "uptime": sample.uptime, "networks": networks, "partitions": sample.partitions}
        if prev is not None:  # the first sample has no CPU delta: not a history row
            await self._store(self.latest)
        if self.agent.libvirt.connected:
            await self.collect_vms()
        return self.latest

    async def collect_vms(self) -> None:
        """Every domain's CPU, memory, disk and network counters in ONE libvirt call (never one per VM).

        libvirt 9.0 asks each running QEMU's monitor for CPU, balloon, vCPU and block
        figures: a QEMU that does not answer (stuck in I/O on a dead NFS mount) keeps
        that call waiting.  So it runs in the slow lane, with ``NOWAIT`` (a VM whose
        monitor is busy with another job is reported without those figures rather
        than waited for), and while one call is pending no other is started: the
        host's own samples go on meanwhile.
        """
        if self._vm_call is not None and not self._vm_call.done():
            return  # the previous bulk call has not come back (a hung QEMU): do not pile up
        now = time.time()
        self._vm_call = asyncio.ensure_future(self.agent.libvirt.call(
            "getAllDomainStats", 0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT, slow=True))
        try:
            records = await asyncio.wait_for(asyncio.shield(self._vm_call), VM_STATS_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("health: libvirt's domain statistics did not answer within %.0f s (a QEMU not answering?)",
                        VM_STATS_TIMEOUT)
            return
        stats = {}
        for dom, raw in records:
            uuid = dom.UUIDString().lower()
            figures = vm_figures(raw)
            before = self._vm_cpu.get(uuid)
            if before is not None and now > before[0] and figures["cpu_time"] >= before[1]:
                cores = max(1, figures["vcpus"])
                figures["cpu_use"] = round((figures["cpu_time"] - before[1]) / ((now - before[0]) * 1e9) * 100 / cores, 1)
            self._vm_cpu[uuid] = (now, figures["cpu_time"])
            stats[uuid] = {"date": _now(), **figures}
        self.vm_stats = stats
        for gone in set(self._vm_cpu) - set(stats):
            del self._vm_cpu[gone]

    async def _store(self, s: dict) -> None:
        m, ld = s["memory"], s["load"]
        rx = sum(r for r, _ in s["networks"].values())
        tx = sum(t for _, t in s["networks"].values())
        await self.db.execute("INSERT INTO stats VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                              (s["date"], s["cpu"].get("cpu", 0.0), m["total"], m["free"], m["used"], m["swapped"],
                               ld["one"], ld["five"], ld["fifteen"], rx, tx))
        self._inserted += 1
        if self._inserted % 50 == 1:  # bound the table, a few deletes per hour rather than one per sample
            await self.db.execute("DELETE FROM stats WHERE rowid NOT IN (SELECT rowid FROM stats ORDER BY rowid DESC LIMIT ?)",
                                  (self.cfg.max_rows,))
        await self.db.commit()

    async def history(self, limit: int) -> list[tuple]:
        async with self.db.execute("SELECT * FROM stats ORDER BY rowid DESC LIMIT ?", (limit,)) as cursor:
            return list(await cursor.fetchall())


def vm_figures(raw: dict) -> dict:
    """libvirt's typed-parameter names (``cpu.time``, ``block.0.rd.bytes``…) → the VM's totals."""
    def total(prefix: str, count_key: str, suffix: str) -> int:
        return sum(int(raw.get(f"{prefix}.{i}.{suffix}", 0)) for i in range(int(raw.get(count_key, 0))))

    return {
        "state": int(raw.get("state.state", 0)),
        "cpu_time": int(raw.get("cpu.time", 0)),  # ns
        "cpu_use": 0.0,  # percent of its vCPUs since the previous sample
        "vcpus": int(raw.get("vcpu.current", 0)),
        "memory": int(raw.get("balloon.maximum", 0)),  # KiB
        "balloon": int(raw.get("balloon.current", 0)),  # KiB
        "disk_read": total("block", "block.count", "rd.bytes"), "disk_write": total("block", "block.count", "wr.bytes"),
        "net_rx": total("net", "net.count", "rx.bytes"), "net_tx": total("net", "net.count", "tx.bytes"),
    }


def collector(agent) -> HealthCollector:
    found = agent.module_services.get("health")
    if found is None:
        raise Unavailable("the health module is not set up")
    return found


async def setup(agent) -> None:
    cfg = read_config(agent.config)  # ConfigError stops the start, naming the key
    svc = HealthCollector(agent, cfg)
    await svc.open()
    agent.module_services["health"] = svc
    await svc.collect()  # a first sample at once: info answers from the start
    svc.start()


async def teardown(agent) -> None:
    svc = agent.module_services.pop("health", None)
    if svc is not None:
        await svc.close()


# ------------------------------------------------------------------ commands
commands = CommandSet()


_limit = bounded_int(1, MAX_LIMIT)


def _version(number: int) -> dict:
    return {"major": number // 1_000_000, "minor": number // 1000 % 1000, "release": number % 1000}


def _render_info(payload) -> str:
    by_tag = {el.tag: el for el in payload}
    m, c, ld = by_tag["memory"].attrib, by_tag["cpu"].attrib, by_tag["load"].attrib
    return (f"CPU {100 - float(c['id']):.1f} % used; memory {int(m['used']) // 1024} MiB used of "
            f"{int(m['total']) // 1024} MiB; load {ld['one']} {ld['five']} {ld['fifteen']}; "
            f"up {by_tag['uptime'].get('up')}")


@commands.command(NS, "info", kinds=("hypervisor",), permission="health_info",
                  permission_description="See the health of the hypervisor and its storage",
                  chat=("health", "health info"), help="CPU, memory, disks, load, network and versions of this hypervisor",
                  chat_render=_render_info)
async def info(ctx):
    svc = collector(ctx.agent)
    s = svc.latest or await svc.collect()
    m, ld = s["memory"], s["load"]
    cpu = element("cpu", {"date": s["date"], "id": round(100.0 - s["cpu"].get("cpu", 0.0), 1)},
                  children=[element("core", {"name": name, "use": use}) for name, use in sorted(s["cpu"].items())
                            if name != "cpu"])
    used = sum(p["used"] for p in s["partitions"])
    available = sum(p["available"] for p in s["partitions"])
    disk = element("disk", {"used": used, "available": available,
                            "capacity": f"{round(100 * used / (used + available)) if used + available else 0}%"},
                   children=[element("partition", p) for p in sorted(s["partitions"], key=lambda p: p["mount"])])
    networks = element("networks", children=[element("network", {"name": name, "rx": rx, "tx": tx, "delta": rx + tx})
                                             for name, (rx, tx) in sorted(s["networks"].items())])
    uname = os.uname()
    days, rest = divmod(int(s["uptime"]), 86400)
    payload = [
        element("memory", {"date": s["date"], **m}), cpu, disk, networks,
        element("load", {"date": s["date"], **ld}),
        element("uptime", {"up": f"{days} days, {rest // 3600}:{rest % 3600 // 60:02d}", "seconds": int(s["uptime"])}),
        element("uname", {"krelease": uname.release, "kname": uname.sysname, "machine": uname.machine,
                          "os": "GNU/Linux" if uname.sysname == "Linux" else uname.sysname}),
    ]
    if ctx.agent.libvirt.connected:
        payload.append(element("libvirt", _version(await ctx.agent.libvirt.call("getLibVersion"))))
        payload.append(element("driver", {"name": ctx.agent.libvirt.uri.split(":", 1)[0],
                                          **_version(await ctx.agent.libvirt.call("getVersion"))}))
    return payload


def _render_history(payload) -> str:
    if not payload:
        return "No history yet."
    return "\n".join(f"{s.find('cpu').get('date')}: CPU {100 - float(s.find('cpu').get('id')):.1f} %, "
                     f"{int(s.find('memory').get('used')) // 1024} MiB used, load {s.find('load').get('one')}"
                     for s in payload)


@commands.command(NS, "history", kinds=("hypervisor",), permission="health_history",
                  permission_description="See the health history of the hypervisor",
                  args=(Arg("limit", parse=_limit, required=False, default=1, help=f"number of samples (1-{MAX_LIMIT})"),),
                  chat=("health history",), help="the last samples of CPU, memory, load and network, newest first",
                  chat_render=_render_history)
async def history(ctx, limit):
    rows = await collector(ctx.agent).history(limit)
    out = []
    for date, cpu, total, free, used, swapped, l1, l5, l15, rx, tx in rows:
        out.append(element("stat", {"date": date}, children=[
            element("memory", {"date": date, "total": total, "free": free, "used": used, "swapped": swapped}),
            element("cpu", {"date": date, "id": round(100.0 - cpu, 1)}),
            element("disk"),
            element("load", {"date": date, "one": l1, "five": l5, "fifteen": l15}),
            element("network", {"date": date, "rx": rx, "tx": tx}),
        ]))
    return out


def _tail(path: Path, limit: int, level: str | None) -> list[tuple[str, str, str]]:
    """The last ``limit`` records of the agent's log at ``level`` or above (worker thread)."""
    minimum = LEVELS.index(level) if level else 0
    records: deque[tuple[str, str, str]] = deque(maxlen=limit)
    with open(path, errors="replace") as f:
        for line in f:
            match = LOG_LINE.match(line.rstrip("\n"))
            if match and LEVELS.index(match.group(2)) >= minimum:
                records.append((match.group(2), match.group(1), match.group(3)))
    return list(records)


@commands.command(NS, "logs", kinds=("hypervisor",), permission="health_logs",
                  permission_description="Read the agent's log",
                  args=(Arg("limit", parse=_limit, required=False, default=20, help=f"number of lines (1-{MAX_LIMIT})"),
                        Arg("level", required=False, choices=LEVELS, help="this level and above")),
                  chat=("logs",), help="the last lines of the agent's log (already redacted of secrets)",
                  chat_render=lambda p: "\n".join(f"{el.get('date')} {el.get('level')} {el.text}" for el in p) or "No log lines.")
async def logs(ctx, limit, level):
    path = ctx.agent.config.logging.file_path
    if path is None:
        raise Unavailable("the agent logs to standard error only (no [LOGGING] logging_file_path)")
    try:
        records = await asyncio.to_thread(_tail, Path(path), limit, level)
    except OSError as exc:
        raise Unavailable(f"cannot read the log file: {exc.strerror or exc}") from None
    return [element("log", {"level": lvl, "date": date, "file": "", "method": ""}, text=text)
            for lvl, date, text in reversed(records)]


VM_NS = "archipel:vm:health"


def _render_vm(payload) -> str:
    a = payload[0].attrib
    return (f"CPU {a['cpu_use']} % ({int(a['cpu_time']) / 1e9:.1f} s in all), memory {int(a['balloon']) // 1024} MiB, "
            f"disks {int(a['disk_read']) // 1024} KiB read / {int(a['disk_write']) // 1024} KiB written, "
            f"network {int(a['net_rx']) // 1024} KiB in / {int(a['net_tx']) // 1024} KiB out")


@commands.command(VM_NS, "stats", kinds=("vm",), permission="health_stats",
                  permission_description="See the VM's CPU, memory, disk and network statistics",
                  chat=("stats", "statistics"), help="CPU, memory, disk and network figures of this VM (last sample)",
                  chat_render=_render_vm)
async def vm_stats(ctx):
    svc = collector(ctx.agent)
    figures = svc.vm_stats.get(ctx.entity.uuid)
    if figures is None and ctx.agent.libvirt.connected:  # defined since the last sample: one bulk call now
        await svc.collect_vms()
        figures = svc.vm_stats.get(ctx.entity.uuid)
    if figures is None:
        raise Unavailable("no statistics for this VM (libvirt unreachable, or its domain is not defined)")
    return element("stats", figures)
