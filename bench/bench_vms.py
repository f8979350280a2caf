#!/usr/bin/env python3
"""VM entities at scale, measured against floors from the same run.

(a) time from agent start to N VM entities online, agent RSS, per-entity cost
    (N = 100 and 500 by default);
(b) median/p99 round trip of ``info`` on a VM against an XMPP ping to the same
    VM and the raw libvirt ``info()`` call, as ratios;
(c) ``info`` commands per second sustained across 100 VMs, with lost replies
    counted (must be zero).

    .venv/bin/python bench/bench_vms.py [--sizes 100 500] [-n 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import time

import libvirt

from common import describe, running_agent

HV_NS = "archipel:hypervisor:control"
CONTROL = "archipel:vm:control"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def alloc_many(admin, hv: str, count: int, prefix: str) -> list[str]:
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with sem:
            query = await admin.acp(hv, HV_NS, "alloc", {"name": f"{prefix}-{i:04d}"}, timeout=120)
            return query[0].get("jid")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


class PresenceClock:
    """When each contact last became available, recorded from the moment it is attached."""

    def __init__(self, client):
        self.last: dict[str, float] = {}
        client.xmpp.add_event_handler("presence", self._on_presence)

    def _on_presence(self, presence):
        if presence["type"] not in ("unavailable", "error", "subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            self.last[presence["from"].bare] = time.monotonic()

    async def wait_online(self, jids: set[str], since: float, timeout: float) -> float:
        """Seconds from ``since`` until every JID was seen available after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = [self.last[j] for j in jids if self.last.get(j, 0) >= since]
            if len(fresh) == len(jids):
                return max(fresh) - since
            await asyncio.sleep(0.05)
        count = sum(1 for j in jids if self.last.get(j, 0) >= since)
        raise TimeoutError(f"only {count}/{len(jids)} VM entities online after {timeout} s")


async def bench_startup(sizes: list[int]) -> None:
    print("== (a) agent start → N VM entities online")
    for n in sizes:
        async with running_agent() as (stack, agent, admin):
            clock = PresenceClock(admin)
            baseline_rss = rss_mib(agent.process.proc.pid)
            t0 = time.monotonic()
            jids = await alloc_many(admin, agent.full_jid, n, f"b{n}")
            alloc_s = time.monotonic() - t0
            await clock.wait_online(set(jids), t0, 300)
            agent.process.stop()
            t1 = time.monotonic()
            agent.process.start()
            online_s = await clock.wait_online(set(jids), t1, 600)
            await asyncio.sleep(1)
            rss = rss_mib(agent.process.proc.pid)
            print(f"N={n:<4} alloc {alloc_s:6.1f} s ({alloc_s / n * 1000:.0f} ms/VM)   restart→all online {online_s:6.1f} s "
                  f"({online_s / n * 1000:.1f} ms/entity)   RSS {rss:.0f} MiB (agent with 0 VMs: {baseline_rss:.0f} MiB; "
                  f"{(rss - baseline_rss) / n * 1024:.0f} KiB/entity)")


async def bench_rtt(n: int) -> None:
    print(f"\n== (b) info round trip on one VM, {n} requests each, interleaved")
    async with running_agent() as (stack, agent, admin):
        clock = PresenceClock(admin)
        t0 = time.monotonic()
        jid = (await alloc_many(admin, agent.full_jid, 1, "rtt"))[0]
        full = f"{jid}/{agent.jid.split('@')[0]}"
        await clock.wait_online({jid}, t0, 60)
        await admin.acp(full, CONTROL, "create")
        for _ in range(20):
            await admin.ping(full)
            await admin.acp(full, CONTROL, "info")
        pings, infos = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            await admin.ping(full)
            t1 = time.perf_counter()
            await admin.acp(full, CONTROL, "info")
            t2 = time.perf_counter()
            pings.append(t1 - t0)
            infos.append(t2 - t1)
        conn = libvirt.open(stack.libvirt_uri)
        dom = conn.lookupByUUIDString(jid.split("@")[0])
        raw = []
        for _ in range(n):
            t0 = time.perf_counter()
            dom.info()
            dom.autostart()
            raw.append(time.perf_counter() - t0)
        dom.destroy()
        conn.close()
    ping = describe("xmpp ping (VM)", pings)
    info = describe("acp info", infos)
    lib = describe("libvirt info()+autostart()", raw)
    print(f"ratio info/ping (median)            {info['median_ms'] / ping['median_ms']:.2f}")
    print(f"ratio info/(ping+libvirt) (median)  {info['median_ms'] / (ping['median_ms'] + lib['median_ms']):.2f}")
    print(f"ratio info/ping (p99)               {info['p99_ms'] / ping['p99_ms']:.2f}")


async def bench_throughput(vms: int, total: int, concurrency: int) -> None:
    print(f"\n== (c) info throughput across {vms} VMs, {total} requests, {concurrency} in flight")
    async with running_agent() as (stack, agent, admin):
        clock = PresenceClock(admin)
        t0 = time.monotonic()
        jids = await alloc_many(admin, agent.full_jid, vms, "tp")
        await clock.wait_online(set(jids), t0, 300)
        node = agent.jid.split("@")[0]
        fulls = [f"{j}/{node}" for j in jids]
        sem = asyncio.Semaphore(concurrency)
        lost = 0

        async def one(i: int, kind: str) -> None:
            nonlocal lost
            async with sem:
                try:
                    if kind == "ping":
                        await admin.ping(fulls[i % vms], timeout=30)
                    else:
                        await admin.acp(fulls[i % vms], CONTROL, "info", timeout=30)
                except Exception:  # noqa: BLE001 - counted
                    lost += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, "ping") for i in range(total)))
        ping_rate = total / (time.perf_counter() - t0)
        lost_ping, lost = lost, 0
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, "info") for i in range(total)))
        info_rate = total / (time.perf_counter() - t0)
    print(f"ping  {ping_rate:8.0f} req/s  lost {lost_ping}")
    print(f"info  {info_rate:8.0f} req/s  lost {lost}")
    print(f"ratio info/ping throughput {info_rate / ping_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 500], help="VM counts for (a)")
    parser.add_argument("-n", type=int, default=1000, help="requests for (b)")
    parser.add_argument("--vms", type=int, default=100, help="VMs for (c)")
    parser.add_argument("--total", type=int, default=5000, help="requests for (c)")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--only", choices=["a", "b", "c"], action="append", help="run only these parts")
    args = parser.parse_args()
    parts = set(args.only or ["a", "b", "c"])
    if "a" in parts:
        asyncio.run(bench_startup(args.sizes))
    if "b" in parts:
        asyncio.run(bench_rtt(args.n))
    if "c" in parts:
        asyncio.run(bench_throughput(args.vms, args.total, args.concurrency))


if __name__ == "__main__":
    main()
