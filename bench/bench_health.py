#!/usr/bin/env python3
"""What the health collector costs: one sample against the floor of reading one /proc file, same run.

    .venv/bin/python bench/bench_health.py [-n 2000]

Prints the median and p99 of a full sample (/proc/stat, meminfo, loadavg,
uptime, net/dev, mounts + statvfs of the local file systems: what
modules/health.py runs in a worker thread each interval), the floor, their
ratio, and the share of one CPU the collector takes at the default interval.
With 100 VMs (bulk statistics included) and the metrics scrape with 1,000 VMs:
bench/bench_metrics.py.
"""
from __future__ import annotations

import argparse
import statistics
import time

from archipelagent.health.proc import read_sample

DEFAULT_INTERVAL = 10.0


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def floor() -> None:
    with open("/proc/meminfo") as f:
        f.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="samples of each (default 2000)")
    n = parser.parse_args().n
    timed(floor, 50), timed(lambda: read_sample(0.0), 50)  # warm up
    base, sample = [], []
    for _ in range(n):  # interleaved, so machine noise hits both alike
        base += timed(floor, 1)
        sample += timed(lambda: read_sample(0.0), 1)

    def p99(xs):
        return sorted(xs)[int(len(xs) * 0.99) - 1]

    print(f"{n} samples each, interleaved")
    print(f"read /proc/meminfo (floor)   median={statistics.median(base):.3f} ms  p99={p99(base):.3f} ms")
    print(f"health sample                median={statistics.median(sample):.3f} ms  p99={p99(sample):.3f} ms")
    print(f"ratio sample/floor (median)  {statistics.median(sample) / statistics.median(base):.1f}")
    print(f"CPU share at {DEFAULT_INTERVAL:.0f} s interval    {statistics.median(sample) / (DEFAULT_INTERVAL * 1000) * 100:.4f} % of one core")


if __name__ == "__main__":
    main()
