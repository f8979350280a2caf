"""Shared set-up for bench scripts: the real stack, a real agent, a real client.

Figures are printed as ratios against a floor measured in the same run, never
compared with fixed thresholds (the machines are shared and noisy).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from rig.stack import Stack  # noqa: E402
from agent_fixtures import AgentHandle, client_for, write_config  # noqa: E402
from agent_process import AgentProcess  # noqa: E402


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def describe(name: str, samples: list[float]) -> dict:
    ms = [s * 1000 for s in samples]
    figures = {"median_ms": statistics.median(ms), "p99_ms": percentile(ms, 99), "n": len(ms)}
    print(f"{name:<28} n={figures['n']:<5} median={figures['median_ms']:.3f} ms  p99={figures['p99_ms']:.3f} ms")
    return figures


@contextlib.asynccontextmanager
async def running_agent(profile: str = "test", keep_stack: bool = False, config: dict | None = None):
    """Start the stack and an agent (``config``: sections of settings over the rig's); yield
    (stack, agent handle, admin client)."""
    stack = Stack(profile=os.environ.get("ARCHIPEL_RIG_PROFILE", profile))
    stack.start()
    lib_dir = stack.state_dir / f"bench-{uuid.uuid4().hex[:6]}"
    lib_dir.mkdir(parents=True)
    process = AgentProcess(write_config(stack, lib_dir, config or {}), lib_dir / "agent.out")
    process.start()
    handle = AgentHandle(stack, process, "hypervisor@" + stack.domain, lib_dir)
    admin = None
    try:
        user = stack.admin_user
        admin = await client_for(stack, user["jid"], user["password"], "bench").connect()
        await handle.wait_ready(admin)
        yield stack, handle, admin
    finally:
        if admin:
            await admin.close()
        process.stop()
        shutil.rmtree(lib_dir, ignore_errors=True)
        if not keep_stack:
            stack.stop()
