#!/usr/bin/env python3
"""The stanza fuzzer's long run (issue 16 item 6): 10,000 stanzas per entity.

Starts the rig stack of a profile and an agent, then sends ``--count`` random,
malformed, oversized and deeply nested stanzas (ACP, ad-hoc, chat, presence;
tests/integration/fuzzing.py) from a user account to the hypervisor and to a VM.
Prints, per entity: stanzas sent, IQs lost (must be 0), answered twice (0),
reconnections (0), and the agent's RSS before and after.  The suite runs the
same fuzzer with 500 stanzas (tests/integration/test_hostile_stanzas.py).

    .venv/bin/python tests/chaos/fuzz.py [--count 10000] [--seed 10] [--profile dev1]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "tests" / "integration"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from agent_fixtures import AgentHandle, admin_client, client_for, write_config  # noqa: E402
from agent_process import AgentProcess  # noqa: E402
from fuzzing import fuzz_run  # noqa: E402
from vm_helpers import HV_NS, alloc, unique_name, vm_full, wait_vm_ready  # noqa: E402


async def campaign(stack, count: int, seed: int) -> int:
    lib_dir = stack.state_dir / "agent-fuzz"
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir(parents=True)
    process = AgentProcess(write_config(stack, lib_dir), lib_dir / "agent.out")
    process.start()
    agent = AgentHandle(stack, process, f"hypervisor@{stack.domain}", lib_dir)
    admin = await admin_client(stack, "fuzz-admin")
    failures = 0
    try:
        await agent.wait_ready(admin, timeout=90)
        vm = await alloc(admin, agent.full_jid, unique_name("fuzz"))
        vm_jid = vm_full(vm, agent.jid)
        await wait_vm_ready(admin, vm_jid)
        name, password = f"fuzzer-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        user = await client_for(stack, stack.register_user(name, password), password, "fuzz").connect()
        for target in (agent.full_jid, vm_jid):
            report = await fuzz_run(agent, user, target, count, seed)
            print(report.line(), flush=True)
            failures += len(report.lost) + len(report.duplicated) + len(report.answered_silent)
            failures += len(report.reconnects)
        await admin.acp(agent.full_jid, HV_NS, "nodeinfo")  # the others are still served
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": vm})
        await user.close()
    finally:
        await admin.close()
        process.stop()
    print("fuzz: " + ("no violation" if not failures else f"{failures} VIOLATIONS"))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10000, help="stanzas per entity (default 10,000)")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--profile", default=os.environ.get("ARCHIPEL_RIG_PROFILE", "dev1"))
    args = parser.parse_args()
    from rig.stack import Stack
    stack = Stack(profile=args.profile)
    stack.start()
    try:
        return asyncio.run(campaign(stack, args.count, args.seed))
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
