#!/usr/bin/env python3
"""The health collector's CPU per minute with 100 VMs, and the metrics scrape with 1,000 VMs, each against a floor.

    .venv/bin/python bench/bench_metrics.py [--vms 100] [--scrape-vms 1000] [-n 30]

A scale *simulation* on libvirt's in-process test driver (``test:///default``),
not real guests (100 TCG guests do not fit on the shared rig):

* **Collector** (``modules/health.py`` ``HealthCollector.collect``, the real
  code, with the agent's real ``LibvirtConnection`` and its lanes): one host
  sample (/proc, statvfs), one ``getAllDomainStats`` for all running domains,
  the per-VM figures, one SQLite row.  The test driver answers only
  ``state.*`` for each domain, so every record is completed with the fields a
  QEMU guest with 1 vCPU, 1 disk and 1 NIC gives in libvirt 9.0 (``virsh
  domstats`` names, :data:`QEMU_RECORD`) before the agent parses it.  CPU is
  ``time.process_time()`` of this process (every thread).  With the real QEMU
  driver the statistics are gathered by libvirtd and the QEMUs' monitors, in
  other processes: that cost is *not* in these figures.
  Floor: the bare bulk call (and the record completion) through the same lane.
* **Scrape** (``archipelagent/metrics.py``): the agent's registry with a
  snapshot of N VMs built by the collector above, rendered by prometheus-client
  (``generate_latest``, what the endpoint runs) and fetched over HTTP on
  loopback from prometheus-client's WSGI app in a server thread, as the agent
  serves it.  Floor: the same registry with no VM (the agent's own series
  only), rendered and fetched in the same run.

Every figure is printed with its floor and their ratio; nothing is compared
with a fixed threshold.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid as uuidlib
from pathlib import Path
from types import SimpleNamespace
from wsgiref.simple_server import make_server

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

import libvirt  # noqa: E402
from prometheus_client import generate_latest, make_wsgi_app  # noqa: E402
from prometheus_client.exposition import ThreadingWSGIServer  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from archipelagent.metrics import Metrics, MetricsConfig, _QuietHandler, _Snapshot  # noqa: E402
from archipelagent.virt import LibvirtConnection  # noqa: E402
from archipelagent_modules.health import HealthCollector, HealthConfig  # noqa: E402  (modules/health.py)

URI = "test:///default"
DEFAULT_INTERVAL = 10.0  # [HEALTH] health_collection_interval default

# One QEMU guest's record beyond state.*: 1 vCPU, 1 disk, 1 NIC (libvirt 9.0 field names, `virsh domstats`).
QEMU_RECORD = {
    "cpu.time": 61_000_000_000, "cpu.user": 40_000_000_000, "cpu.system": 18_000_000_000,
    "cpu.cache.monitor.count": 0, "cpu.haltpoll.success.time": 0, "cpu.haltpoll.fail.time": 0,
    "balloon.current": 1_048_576, "balloon.maximum": 1_048_576, "balloon.swap_in": 0, "balloon.swap_out": 0,
    "balloon.major_fault": 301, "balloon.minor_fault": 210_000, "balloon.unused": 700_000,
    "balloon.available": 1_010_000, "balloon.usable": 800_000, "balloon.last-update": 1_700_000_000,
    "balloon.disk_caches": 120_000, "balloon.hugetlb_pgalloc": 0, "balloon.hugetlb_pgfail": 0, "balloon.rss": 450_000,
    "vcpu.current": 1, "vcpu.maximum": 1, "vcpu.0.state": 1, "vcpu.0.time": 55_000_000_000, "vcpu.0.wait": 0,
    "vcpu.0.delay": 1_000_000,
    "net.count": 1, "net.0.name": "vnet12", "net.0.rx.bytes": 9_000_000, "net.0.rx.pkts": 60_000, "net.0.rx.errs": 0,
    "net.0.rx.drop": 0, "net.0.tx.bytes": 4_000_000, "net.0.tx.pkts": 30_000, "net.0.tx.errs": 0, "net.0.tx.drop": 0,
    "block.count": 1, "block.0.name": "vda", "block.0.path": "/vm/drives/x/disk.qcow2", "block.0.backingIndex": 1,
    "block.0.rd.reqs": 12_000, "block.0.rd.bytes": 400_000_000, "block.0.rd.times": 9_000_000_000,
    "block.0.wr.reqs": 8_000, "block.0.wr.bytes": 150_000_000, "block.0.wr.times": 7_000_000_000,
    "block.0.fl.reqs": 900, "block.0.fl.times": 2_000_000_000, "block.0.allocation": 2_000_000_000,
    "block.0.capacity": 10_737_418_240, "block.0.physical": 2_100_000_000,
}


class QemuShapedLibvirt:
    """The agent's LibvirtConnection, with the test driver's bulk records completed to a QEMU guest's shape."""

    def __init__(self, conn: LibvirtConnection):
        self.conn = conn

    @property
    def connected(self) -> bool:
        return self.conn.connected

    async def call(self, fn, *args, **kwargs):
        result = await self.conn.call(fn, *args, **kwargs)
        if fn == "getAllDomainStats":
            result = [(dom, {**raw, **QEMU_RECORD}) for dom, raw in result]
        return result


def domain_xml(prefix: str, i: int) -> str:
    return (f"<domain type='test'><name>{prefix}-{i}</name><uuid>{uuidlib.uuid4()}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>")


async def add_domains(conn: LibvirtConnection, count: int) -> None:
    prefix = uuidlib.uuid4().hex[:6]  # the test driver's state may be shared by the connections of a process
    for i in range(count):
        dom = await conn.call("defineXML", domain_xml(prefix, i))
        await conn.call(dom.create)


def p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.99) - 1)]


def show(name: str, xs: list[float], unit: str = "ms") -> float:
    med = statistics.median(xs)
    print(f"  {name:<44} median={med:8.3f} {unit}  p99={p99(xs):8.3f} {unit}  (n={len(xs)})")
    return med


async def cpu_ms(coro_fn) -> float:
    start = time.process_time()
    await coro_fn()
    return (time.process_time() - start) * 1000


async def bench_collector(vms: int, n: int, tmp: Path) -> None:
    conn = LibvirtConnection(URI)
    await conn.start()
    try:
        await add_domains(conn, vms)
        agent = SimpleNamespace(libvirt=QemuShapedLibvirt(conn), spawn=None)
        svc = HealthCollector(agent, HealthConfig(interval=DEFAULT_INTERVAL, max_rows=8640, database=tmp / "health.sqlite3"))
        await svc.open()
        try:
            for _ in range(3):
                await svc.collect()  # warm up (and a first sample, so later ones store rows)
            assert len(svc.vm_stats) >= vms, len(svc.vm_stats)
            floor, full = [], []
            for _ in range(n):  # interleaved, so machine noise hits both alike
                floor.append(await cpu_ms(lambda: agent.libvirt.call(
                    "getAllDomainStats", 0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT, slow=True)))
                full.append(await cpu_ms(svc.collect))
        finally:
            await svc.db.close()
    finally:
        await conn.stop()
    print(f"collector, {vms} running VMs (test driver, QEMU-shaped records), CPU time of this process per sample:")
    f = show("floor: one bulk getAllDomainStats", floor)
    c = show("collector sample (host + VMs + SQLite row)", full)
    print(f"  ratio sample/floor (median)                  {c / f:.1f}" if f > 0 else "  floor below the clock's resolution")
    per_min = c * 60 / DEFAULT_INTERVAL
    print(f"  CPU per minute at the default {DEFAULT_INTERVAL:.0f} s interval      {per_min:.1f} ms "
          f"({per_min / 60_000 * 100:.3f} % of one core); at 1 s: {c * 60:.0f} ms ({c * 60 / 60_000 * 100:.2f} %)")


def registry_with(vms: int, figures: dict[str, dict]) -> Metrics:
    metrics = Metrics(MetricsConfig(host=None))
    s = _Snapshot()
    s.entities = {("hypervisor", "online"): 1, ("vm", "online"): vms}
    s.host = {"cpu": 12.5, "mem_total": 64 << 20, "mem_free": 20 << 20, "load1": 1.5}
    s.vms = [(uuid, f"vm-{i}", f) for i, (uuid, f) in enumerate(sorted(figures.items())[:vms])]
    s.taken = time.time()
    metrics.snapshot = s
    for ns, action in (("archipel:vm:control", "info"), ("archipel:hypervisor:health", "info")):
        metrics.command(ns, action, "iq", "ok", 0.004)  # a few command series, as on a live agent
    return metrics


def serve(registry) -> tuple[str, object]:
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="bench-metrics-http", daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/metrics", server


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return reply.read()


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def bench_scrape(vms: int, n: int, tmp: Path) -> None:
    conn = LibvirtConnection(URI)
    await conn.start()
    try:
        await add_domains(conn, vms)
        svc = HealthCollector(SimpleNamespace(libvirt=QemuShapedLibvirt(conn), spawn=None),
                              HealthConfig(interval=DEFAULT_INTERVAL, max_rows=8640, database=tmp / "scrape.sqlite3"))
        await svc.collect_vms()  # the figures the agent would have: one bulk call through the real code
    finally:
        await conn.stop()
    full, empty = registry_with(vms, svc.vm_stats), registry_with(0, {})
    text = generate_latest(full.registry).decode()
    vm_series = sum(1 for fam in text_string_to_metric_families(text) for s in fam.samples
                    if fam.name.startswith("archipel_vm_"))
    assert vm_series == 7 * vms, vm_series  # 7 series per VM (cpu, memory, disk r/w, network rx/tx, state)
    full_url, full_server = serve(full.registry)
    empty_url, empty_server = serve(empty.registry)
    try:
        fetch(full_url), fetch(empty_url)  # warm up
        render_floor, render_full, http_floor, http_full = [], [], [], []
        for _ in range(n):
            render_floor += timed(lambda: generate_latest(empty.registry), 1)
            render_full += timed(lambda: generate_latest(full.registry), 1)
            http_floor += timed(lambda: fetch(empty_url), 1)
            http_full += timed(lambda: fetch(full_url), 1)
    finally:
        for server in (full_server, empty_server):
            server.shutdown()
            server.server_close()
    print(f"scrape, {vms} VMs (test driver figures), {len(text) / 1024:.0f} KiB, {vm_series} VM series:")
    a = show("floor: render, no VM (agent series only)", render_floor)
    b = show(f"render, {vms} VMs", render_full)
    c = show("floor: HTTP GET on loopback, no VM", http_floor)
    d = show(f"HTTP GET on loopback, {vms} VMs", http_full)
    print(f"  ratio render {b / a:.0f}x the floor; HTTP {d / c:.1f}x the floor; "
          f"render is {b / d * 100:.0f} % of the HTTP scrape")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=100, help="running VMs for the collector (default 100)")
    parser.add_argument("--scrape-vms", type=int, default=1000, help="VMs in the scraped snapshot (default 1000)")
    parser.add_argument("-n", type=int, default=30, help="measurements of each (default 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        await bench_collector(args.vms, args.n, Path(tmp))
        await bench_scrape(args.scrape_vms, args.n, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
