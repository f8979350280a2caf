#!/usr/bin/env python3
"""30 VM disks as qcow2 overlays of one golden image: through the agent vs raw qemu-img.

Floor, measured in the same run on the same storage: ``qemu-img create -f qcow2
-b <golden> -F qcow2`` for the same number of files, one after another and all
at once.  The agent figure is ``archipel:vm:disk create name=root golden=<g>``
sent to each VM entity (sequentially, then all at once) by a client over XMPP,
so it includes the XMPP round trip, the permission check, the path and
backing-chain checks and the ``created`` push.  Ratios are printed; there are
no thresholds.

    ARCHIPEL_RIG_PROFILE=dev2 .venv/bin/python bench/bench_golden_overlays.py [-n 30]
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
import uuid

from common import describe, running_agent

HV_NS = "archipel:hypervisor:control"
CONTROL = "archipel:vm:control"
DISK = "archipel:vm:disk"


async def qemu_img(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec("qemu-img", *args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(err.decode())


async def wait_ready(admin, full: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await admin.acp(full, CONTROL, "info", timeout=3)
            return
        except Exception:  # noqa: BLE001 - not online yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def main(count: int) -> None:
    async with running_agent() as (stack, agent, admin):
        hv = agent.full_jid
        resource = agent.jid.split("@")[0]
        sem = asyncio.Semaphore(8)

        async def alloc(i: int) -> str:
            async with sem:
                jid = (await admin.acp(hv, HV_NS, "alloc", {"name": f"gold-{i:03d}"}, timeout=120))[0].get("jid")
                return f"{jid}/{resource}"

        vms = list(await asyncio.gather(*(alloc(i) for i in range(count))))
        await asyncio.gather(*(wait_ready(admin, full) for full in vms))
        golden_dir = stack.storage_dir.parent / "golden"
        golden_dir.mkdir(exist_ok=True)
        golden = golden_dir / f"bench-{uuid.uuid4().hex[:6]}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(golden), "10G"], check=True)
        golden.chmod(0o444)
        print(f"{count} VMs online; golden image {golden.name} (10 GiB virtual)")

        # floor: raw qemu-img, same files, same storage
        raw_dir = stack.storage_dir.parent / f"bench-raw-{uuid.uuid4().hex[:6]}"
        raw_dir.mkdir()
        try:
            t0 = time.perf_counter()
            per_raw = []
            for i in range(count):
                s = time.perf_counter()
                await qemu_img("create", "-q", "-f", "qcow2", "-b", str(golden), "-F", "qcow2", str(raw_dir / f"seq{i}.qcow2"))
                per_raw.append(time.perf_counter() - s)
            raw_seq = time.perf_counter() - t0
            t0 = time.perf_counter()
            await asyncio.gather(*(qemu_img("create", "-q", "-f", "qcow2", "-b", str(golden), "-F", "qcow2",
                                            str(raw_dir / f"par{i}.qcow2")) for i in range(count)))
            raw_par = time.perf_counter() - t0
        finally:
            shutil.rmtree(raw_dir, ignore_errors=True)

        # the agent: one `create golden=` per VM
        t0 = time.perf_counter()
        per_agent = []
        for full in vms:
            s = time.perf_counter()
            await admin.acp(full, DISK, "create", {"name": "seq", "golden": golden.name}, timeout=60)
            per_agent.append(time.perf_counter() - s)
        agent_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        await asyncio.gather(*(admin.acp(full, DISK, "create", {"name": "par", "golden": golden.name}, timeout=120)
                               for full in vms))
        agent_par = time.perf_counter() - t0
        rtt = []
        for full in vms[:10]:
            for _ in range(5):
                s = time.perf_counter()
                await admin.ping(full)
                rtt.append(time.perf_counter() - s)

        print()
        describe("qemu-img create -b (each)", per_raw)
        describe("agent create golden= (each)", per_agent)
        describe("XMPP ping to a VM", rtt)
        print()
        print(f"{'':<34}{'raw qemu-img':>14}{'agent':>10}{'ratio':>8}")
        print(f"{f'{count} overlays, one after another':<34}{raw_seq:>13.3f}s{agent_seq:>9.3f}s{agent_seq / raw_seq:>8.2f}")
        print(f"{f'{count} overlays, all at once':<34}{raw_par:>13.3f}s{agent_par:>9.3f}s{agent_par / raw_par:>8.2f}")
        print(f"per overlay, sequential: agent costs {1000 * (agent_seq - raw_seq) / count:.1f} ms more than qemu-img "
              f"(ping median {1000 * sorted(rtt)[len(rtt) // 2]:.1f} ms)")
        for full in vms:
            await admin.acp(full, CONTROL, "free")
        golden.chmod(0o644)
        golden.unlink()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=30)
    asyncio.run(main(parser.parse_args().count))
