#!/usr/bin/env python3
"""Live migration through the agent against libvirt's own, and the evacuation of 10 VMs.

Three namespaced hypervisors (rig/hypervisors.py), one agent each, one shared storage.

(a) A running VM (the agent's default domain, 128 MiB, SeaBIOS) migrates hv-1 -> hv-2 -> hv-1
    through libvirt alone (``migrateToURI3`` with the agent's flags: what ``virsh migrate
    --live --p2p --persistent --undefinesource --unsafe`` calls) -- the floor -- then
    hv-1 -> hv-2 through the agent (``archipel:vm:control migrate``), ``--rounds`` times.
    Agent figures: *total* = from the request to the VM's presence from the destination,
    *all done* = to the source resource's ``unavailable`` (after libvirt's confirm phase), and
    *offline gap* = from the source resource's last presence (its ``unavailable``) back to
    the destination's first; a negative gap means the destination was online first (the
    client never saw the VM offline).
(b) ``maintenance on`` of a host with 10 VMs (8 running, 2 shut off; plus the VM of (a)) until
    ``status`` says the evacuation ended, against 10 x the floor of (a) (the agent runs two at
    a time).
(c) The time from a host's death to its VMs running elsewhere: bench/bench_ha.py.

No thresholds: ratios are printed.

    ARCHIPEL_RIG_PROFILE=dev3 .venv/bin/python bench/bench_migration.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import libvirt

from common import REPO  # noqa: F401 - sets sys.path
from rig.stack import Stack
from agent_fixtures import client_for
from hypervisor_fixtures import hypervisor_agent
from archipelagent.hypervisor.migration import migration_flags

HV_NS = "archipel:hypervisor:control"
CONTROL = "archipel:vm:control"


async def ready(admin, full: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await admin.acp(full, CONTROL, "info", timeout=3)
            return
        except Exception:  # noqa: BLE001 - not online yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def libvirt_migrate(src_uri: str, dst_uri: str, vm_uuid: str) -> float:
    conn = libvirt.open(src_uri)
    try:
        dom = conn.lookupByUUIDString(vm_uuid)
        for attempt in range(20):  # a job of the agent's (statistics, start) may still hold the domain
            t0 = time.monotonic()
            try:
                dom.migrateToURI3(dst_uri, {}, migration_flags(True, unsafe=True))
                return time.monotonic() - t0
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or attempt == 19:
                    raise
                time.sleep(0.5)
    finally:
        conn.close()


async def main(rounds: int) -> None:
    stack = Stack(profile=os.environ.get("ARCHIPEL_RIG_PROFILE", "test"))
    stack.start()
    hvs = stack.start_hypervisors(3)
    agents = [hypervisor_agent(stack, hv) for hv in hvs]
    user = stack.admin_user
    admin = await client_for(stack, user["jid"], user["password"], "bench-migration").connect()
    seen: list[tuple[float, str, str]] = []
    admin.xmpp.add_event_handler("presence", lambda p: seen.append((time.monotonic(), str(p["from"]), p["type"])))
    try:
        for a in agents:
            a.process.start()
        await asyncio.gather(*(a.wait_ready(admin) for a in agents))
        a, b, c = agents
        await asyncio.sleep(2)  # peers' presences

        # (a) one VM, libvirt alone vs the agent
        jid = (await admin.acp(a.full_jid, HV_NS, "alloc", {"name": f"bench-{uuid.uuid4().hex[:4]}"}))[0].get("jid")
        vm_uuid = jid.split("@")[0]
        await ready(admin, f"{jid}/{hvs[0].name}")
        await admin.see(jid)
        await admin.acp(f"{jid}/{hvs[0].name}", CONTROL, "create")
        await asyncio.sleep(2)
        floor, total, gap, complete = [], [], [], []
        for _ in range(rounds):
            floor.append(await asyncio.to_thread(libvirt_migrate, hvs[0].libvirt_uri, hvs[1].migration_uri, vm_uuid))
            floor.append(await asyncio.to_thread(libvirt_migrate, hvs[1].libvirt_uri, hvs[0].migration_uri, vm_uuid))
            await ready(admin, f"{jid}/{hvs[0].name}")
            src, dst = f"{jid}/{hvs[0].name}", f"{jid}/{hvs[1].name}"
            seen.clear()
            t0 = time.monotonic()
            await admin.acp(src, CONTROL, "migrate", {"hypervisorjid": b.full_jid})
            while not any(f == dst and t != "unavailable" for _, f, t in seen):
                await asyncio.sleep(0.01)
            arrived = next(ts for ts, f, t in seen if f == dst and t != "unavailable")
            total.append(arrived - t0)
            while not any(f == src and t == "unavailable" for _, f, t in seen):
                await asyncio.sleep(0.01)
            left = next(ts for ts, f, t in seen if f == src and t == "unavailable")
            gap.append(arrived - left)
            complete.append(left - t0)
            await ready(admin, dst)
            # back to hv-1 for the next round, through the agent (not measured)
            await admin.acp(dst, CONTROL, "migrate", {"hypervisorjid": a.full_jid})
            while not any(f == src and t != "unavailable" for ts, f, t in seen if ts > arrived):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)
        f_med, t_med = statistics.median(floor), statistics.median(total)
        print(f"(a) libvirt migrateToURI3 (floor)  n={len(floor)} median {f_med * 1000:.0f} ms")
        print(f"    agent migrate -> presence from destination  n={len(total)} median {t_med * 1000:.0f} ms "
              f"({t_med / f_med:.2f}x the floor)")
        c_med = statistics.median(complete)
        print(f"    agent migrate -> source's resource gone (all done)  median {c_med * 1000:.0f} ms "
              f"({c_med / f_med:.2f}x the floor)")
        print(f"    offline gap (destination's first presence - source's unavailable): median "
              f"{statistics.median(gap) * 1000:.0f} ms (negative: never offline)")

        # (b) evacuation of 10 VMs
        jids = []
        for i in range(10):
            j = (await admin.acp(a.full_jid, HV_NS, "alloc", {"name": f"evac-{i}-{uuid.uuid4().hex[:4]}"}))[0].get("jid")
            await ready(admin, f"{j}/{hvs[0].name}")
            if i < 8:
                await admin.acp(f"{j}/{hvs[0].name}", CONTROL, "create")
            jids.append(j)
        t0 = time.monotonic()
        await admin.acp(a.full_jid, HV_NS, "maintenance", {"mode": "on"})
        while True:
            status = (await admin.acp(a.full_jid, HV_NS, "maintenance", {"mode": "status"}))[0]
            if status.get("evacuating") == "no":
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - t0
        print(f"(b) evacuation of {status.get('total')} VMs (9 running: the 10 + the VM of (a)): {took:.1f} s, moved {status.get('moved')}, "
              f"failed {status.get('failed')}; {took / (10 * f_med):.2f}x ten sequential libvirt migrations")
        print("(c) host death -> VMs running elsewhere: see bench/bench_ha.py")
    finally:
        await admin.close()
        for ag in agents:
            ag.process.stop()
        stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
