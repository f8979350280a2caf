#!/usr/bin/env python3
"""Round trip of ``capabilities`` on the hypervisor entity against an XMPP ping.

Prints median and p99 over N requests for: XMPP ping to the hypervisor entity,
the ``capabilities`` ACP, and the raw libvirt ``getCapabilities()`` call the
command wraps, then the ratios — the goal is "little more than a ping plus the
libvirt call".

    .venv/bin/python bench/bench_hypervisor_rtt.py [-n 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import libvirt

from common import describe, running_agent

HV_NS = "archipel:hypervisor:control"


async def measure(n: int) -> dict:
    async with running_agent() as (stack, agent, admin):
        for _ in range(20):  # warm up both paths
            await admin.ping(agent.full_jid)
            await admin.acp(agent.full_jid, HV_NS, "capabilities")
        pings, caps = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            await admin.ping(agent.full_jid)
            t1 = time.perf_counter()
            await admin.acp(agent.full_jid, HV_NS, "capabilities")
            t2 = time.perf_counter()
            pings.append(t1 - t0)
            caps.append(t2 - t1)
        conn = libvirt.open(stack.libvirt_uri)
        raw = []
        for _ in range(n):
            t0 = time.perf_counter()
            conn.getCapabilities()
            raw.append(time.perf_counter() - t0)
        conn.close()
    print(f"\n{n} requests each, interleaved, one client, agent and stack on loopback")
    ping = describe("xmpp ping (hypervisor)", pings)
    cap = describe("acp capabilities", caps)
    lib = describe("libvirt getCapabilities", raw)
    ratios = {
        "capabilities/ping (median)": cap["median_ms"] / ping["median_ms"],
        "capabilities/(ping+libvirt) (median)": cap["median_ms"] / (ping["median_ms"] + lib["median_ms"]),
        "capabilities/ping (p99)": cap["p99_ms"] / ping["p99_ms"],
    }
    for name, value in ratios.items():
        print(f"ratio {name:<38} {value:.2f}")
    return {"ping": ping, "capabilities": cap, "libvirt": lib, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per measurement (default 1000)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.n))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
