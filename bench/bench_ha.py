#!/usr/bin/env python3
"""Time from a host's death to its HA VMs running elsewhere (hypervisor/ha.py).

Three namespaced hypervisors (rig/hypervisors.py), one agent each, lease settings of the
command line (default: the shipped 3 s interval, 15 s TTL).  hv-1 runs ``--vms`` HA VMs (the
agent's default domain); the whole host is SIGKILLed at t0 (agent, libvirtd, virtlockd,
QEMUs).  Printed: when every VM runs on a survivor (libvirt) and when every entity answers
from its new host (XMPP), against the floor ``ha_lease_ttl`` (a host is not judged dead
sooner).  No thresholds.

    ARCHIPEL_RIG_PROFILE=dev3 .venv/bin/python bench/bench_ha.py [--vms 4] [--interval 3 --ttl 15]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
import uuid

import libvirt

from common import REPO  # noqa: F401 - sets sys.path
from rig.stack import Stack
from agent_fixtures import client_for
from hypervisor_fixtures import hypervisor_agent

HV_NS = "archipel:hypervisor:control"
CONTROL = "archipel:vm:control"


async def ready(admin, full: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await admin.acp(full, CONTROL, "info", timeout=3)
            return
        except Exception:  # noqa: BLE001 - not online yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def running(uri: str) -> set[str]:
    conn = libvirt.open(uri)
    try:
        return {d.UUIDString() for d in conn.listAllDomains() if d.state()[0] == libvirt.VIR_DOMAIN_RUNNING}
    finally:
        conn.close()


async def main(vms: int, interval: float, ttl: float) -> None:
    stack = Stack(profile=os.environ.get("ARCHIPEL_RIG_PROFILE", "test"))
    stack.start()
    hvs = stack.start_hypervisors(3)
    settings = {"HYPERVISOR": {"ha_lease_interval": f"{interval:g}", "ha_lease_ttl": f"{ttl:g}"}}
    agents = [hypervisor_agent(stack, hv, settings) for hv in hvs]
    user = stack.admin_user
    admin = await client_for(stack, user["jid"], user["password"], "bench-ha").connect()
    try:
        for a in agents:
            a.process.start()
        await asyncio.gather(*(a.wait_ready(admin) for a in agents))
        a = agents[0]
        jids = []
        for i in range(vms):
            jid = (await admin.acp(a.full_jid, HV_NS, "alloc", {"name": f"ha-{i}-{uuid.uuid4().hex[:4]}"}))[0].get("jid")
            await ready(admin, f"{jid}/{hvs[0].name}")
            await admin.acp(f"{jid}/{hvs[0].name}", CONTROL, "setha", {"value": "1"})
            await admin.acp(f"{jid}/{hvs[0].name}", CONTROL, "create")
            jids.append(jid)
        await asyncio.sleep(2 * interval)  # the lease lists them
        uuids = {j.split("@")[0] for j in jids}
        t0 = time.monotonic()
        a.process.kill()
        for pid in (*hvs[0].libvirtd.pids(), *hvs[0].libvirtd.qemu_pids(), *hvs[0].libvirtd.virtlockd_pids()):
            os.kill(pid, signal.SIGKILL)
        while True:
            found = [{u.lower() for u in await asyncio.to_thread(running, hv.libvirt_uri)} for hv in hvs[1:]]
            if uuids <= found[0] | found[1]:
                break
            await asyncio.sleep(0.1)
        t_run = time.monotonic() - t0
        for jid in jids:
            host = hvs[1] if jid.split("@")[0] in found[0] else hvs[2]
            await ready(admin, f"{jid}/{host.name}")
        t_online = time.monotonic() - t0
        print(f"host death (SIGKILL) -> {vms} HA VMs running on the survivors: {t_run:.1f} s "
              f"(lease TTL {ttl:g} s, interval {interval:g} s; {len(found[0] & uuids)} on hv-2, "
              f"{len(found[1] & uuids)} on hv-3)")
        print(f"host death -> every entity answering from its new host: {t_online:.1f} s")
    finally:
        await admin.close()
        for ag in agents:
            ag.process.stop()
        stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--ttl", type=float, default=15.0)
    args = parser.parse_args()
    asyncio.run(main(args.vms, args.interval, args.ttl))
