#!/usr/bin/env python3
"""Campus simulation on an ejabberd cluster (issue 16 item 3).

A SCALE SIMULATION ON LIBVIRT'S TEST DRIVER: every agent's ``libvirt_uri`` is
``test:///<file>`` holding its V domains (in-process, no QEMU): this measures
XMPP — logins, rosters, presence fan-out — not virtualisation.

On the rig's stack with a second ejabberd node joined (rig/cluster.py):
A agents (spread over the 2 nodes) adopt V test-driver domains each
(``manage``: V VM entities, accounts made by in-band registration); U user
sessions (spread over the nodes) each have S of the VMs in their roster
(subscription ``both``, written through ejabberd's API); then

(a) all online: every agent restarted at once, time until the admin has seen
    every VM entity available again;
(b) presence fan-out: C VMs stopped then started again through the agent
    (``destroy``/``create``), time from the command until each subscriber saw the
    new presence: p50/p99 over every (change, subscriber) pair;
(c) lost presences: (change, subscriber) pairs never seen within the timeout
    (must be 0), for the changes of (b) and for the restart of (a) (each user
    sees each of its VMs available again).

    .venv/bin/python bench/bench_campus.py                          # 2 agents x 100 VMs, 200 users
    .venv/bin/python bench/bench_campus.py --agents 10 --vms 500 --users 1000   # the issue's campus

``tests/integration/test_campus_small.py`` runs a small one (``run_campus``).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "integration")]

from agent_fixtures import admin_client, second_agent  # noqa: E402
from xmpp_client import Client  # noqa: E402

HV_NS = "archipel:hypervisor:control"
MANAGE_CHUNK = 100  # domains per manage request while setting up
CONTROL = "archipel:vm:control"


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def test_driver_file(path: Path, prefix: str, count: int) -> list[str]:
    """A test-driver node file with ``count`` domains; their UUIDs."""
    uuids = [str(uuid.uuid4()) for _ in range(count)]
    domains = "".join(
        f"<domain type='test'><name>{prefix}-{i:04d}</name><uuid>{u}</uuid><memory>65536</memory>"
        f"<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>\n" for i, u in enumerate(uuids))
    path.write_text(f"<node>\n{domains}</node>\n")
    return uuids


class Seen:
    """When each (VM, status) presence reached each client, from the moment it is attached."""

    def __init__(self):
        self.at: dict[tuple[str, str, str], float] = {}  # (client, vm, status) -> first arrival

    def attach(self, client: Client) -> None:
        me = client.jid

        def on_presence(presence):
            if presence["type"] in ("unavailable", "error", "subscribe", "subscribed", "unsubscribe", "unsubscribed"):
                return
            key = (me, presence["from"].bare, presence["status"])
            self.at[key] = time.monotonic()
        client.xmpp.add_event_handler("presence", on_presence)

    def forget(self, vm: str, status: str) -> None:
        for key in [k for k in self.at if k[1] == vm and k[2] == status]:
            del self.at[key]


async def wait_all(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def run_campus(stack, cluster, *, agents: int, vms: int, users: int, per_user: int, changes: int,
                     timeout: float = 60, log=print) -> dict:
    """The simulation on a running stack and cluster; returns the figures (see the module doc)."""
    nodes = [(stack.xmpp_host, stack.c2s_port)] + [(n.listen_ip, n.c2s_port) for n in cluster.nodes.values()]
    run = uuid.uuid4().hex[:6]
    admin = await admin_client(stack, f"campus-{run}")
    seen_admin = Seen()
    seen_admin.attach(admin)
    hvs, clients = [], []
    try:
        # -- agents: each its test-driver file, on node a % len(nodes)
        vm_jids: list[str] = []
        owner: dict[str, str] = {}  # VM jid -> the agent's hypervisor jid
        for a in range(agents):
            name = f"hv-campus{a}-{run}"
            lib_dir = stack.state_dir / f"agent-{name}"
            lib_dir.mkdir(parents=True, exist_ok=True)
            uuids = test_driver_file(lib_dir / "domains.xml", name, vms)
            host, _port = nodes[a % len(nodes)]
            hv = second_agent(stack, name, {"GLOBAL": {"libvirt_uri": f"test://{lib_dir / 'domains.xml'}"},
                                            "XMPP": {"xmpp_host": host},
                                            # the shipped interval (the tests' 1 s is for their history)
                                            "HEALTH": {"health_collection_interval": "10"}},
                              lib_dir=lib_dir)
            hv.process.start()
            hvs.append(hv)
            hv.uuids = uuids
        await asyncio.gather(*(hv.wait_ready(admin, timeout=300) for hv in hvs))
        # Set-up, not measured: adopted MANAGE_CHUNK at a time, each chunk online before the
        # next (every new entity registers its account: 5,000 at once would only queue).
        for hv in hvs:
            for start in range(0, len(hv.uuids), MANAGE_CHUNK):
                query = await admin.acp(hv.full_jid, HV_NS, "manage",
                                        children=[_item(u) for u in hv.uuids[start:start + MANAGE_CHUNK]],
                                        timeout=300)
                jids = [item.get("jid") for item in query]
                vm_jids += jids
                owner.update({j: hv for j in jids})
                await wait_all(lambda: all((admin.jid, j, "Running") in seen_admin.at for j in jids),
                               max(timeout, len(jids)), "adopted VM entities never online at the admin")
            log(f"{hv.jid}: {len(hv.uuids)} VM entities adopted and online")
        log(f"{agents} agents, {len(vm_jids)} VM entities adopted")

        # -- rosters: user u has VMs u*S .. u*S+S-1 (mod total), both ways, through the API
        subscribers: dict[str, list[str]] = collections.defaultdict(list)
        pairs = []
        api = asyncio.Semaphore(8)

        async def register(local: str, password: str) -> tuple[str, str]:
            async with api:
                return await asyncio.to_thread(stack.register_user, local, password), password
        accounts = await asyncio.gather(*(register(f"cu{u}-{run}", uuid.uuid4().hex) for u in range(users)))
        for u, (jid, _password) in enumerate(accounts):
            for s in range(per_user):
                vm = vm_jids[(u * per_user + s) % len(vm_jids)]
                if jid in subscribers[vm]:
                    continue
                subscribers[vm].append(jid)
                pairs.append((jid, vm))

        async def both_ways(jid: str, vm: str) -> None:
            async with api:
                await asyncio.to_thread(_both_ways, stack, jid, vm)
        await asyncio.gather(*(both_ways(jid, vm) for jid, vm in pairs))
        log(f"{users} users, {sum(len(v) for v in subscribers.values())} subscriptions")
        seen = Seen()
        sem = asyncio.Semaphore(20)

        async def login(i: int, jid: str, password: str) -> Client:
            host, port = nodes[i % len(nodes)]
            client = Client(jid, password, ca_file=stack.ca_file, host=host, port=port, resource="campus")
            seen.attach(client)
            async with sem:
                return await client.connect(timeout=120)
        clients += await asyncio.gather(*(login(i, j, p) for i, (j, p) in enumerate(accounts)))
        log(f"{users} user sessions up on {len(nodes)} nodes")

        # -- (a) all agents restarted at once -> every VM entity online again
        for hv in hvs:
            hv.process.stop()
        seen_admin.at.clear()
        before_restart = dict(seen.at)
        seen.at.clear()
        t0 = time.monotonic()
        for hv in hvs:
            hv.process.start()
        await wait_all(lambda: all((admin.jid, j, "Running") in seen_admin.at for j in vm_jids),
                       max(timeout, len(vm_jids) / 2), "VM entities not all online after the restart")
        all_online = max(seen_admin.at[(admin.jid, j, "Running")] for j in vm_jids) - t0
        for hv in hvs:
            await hv.wait_ready(admin, timeout=120)
        log(f"all online {all_online:.2f} s after restarting the {agents} agents")
        # ... and every user saw each of its VMs come back (the restart's own fan-out)
        back = [(user, vm, "Running") for vm, users_of in subscribers.items() for user in users_of]
        try:
            await wait_all(lambda: all(k in seen.at for k in back), timeout, "")
        except TimeoutError:
            pass
        restart_lost = sum(1 for k in back if k not in seen.at)
        log(f"restart: {len(back) - restart_lost} of {len(back)} (user, VM) presences delivered")
        for user, vm, status in [k for k in back if k not in seen.at][:10]:  # what those users got instead
            got = sorted(k[2] for k in seen.at if k[0] == user and k[1] == vm)
            log(f"  not seen: {vm} {status!r} by {user}; that user saw from it since the restart: {got or 'nothing'}")
            for line in await asyncio.to_thread(_explain_loss, stack, cluster, user, vm, before_restart, t0):
                log(f"    {line}")

        # -- (b)/(c) presence fan-out of C changes (stop, then start again)
        latencies: list[float] = []
        lost = 0
        targets = [vm for vm in vm_jids if subscribers.get(vm)][:changes]
        for vm in targets:
            hv = owner[vm]
            full = f"{vm}/{hv.jid.split('@')[0]}"
            for action, status in (("destroy", "Off"), ("create", "Running")):
                seen.forget(vm, status)
                t = time.monotonic()
                await admin.acp(full, CONTROL, action, timeout=60)
                expected = [(c, vm, status) for c in subscribers[vm]]
                try:
                    await wait_all(lambda: all(k in seen.at for k in expected), timeout, "")
                except TimeoutError:
                    pass
                got = [seen.at[k] - t for k in expected if k in seen.at]
                latencies += got
                lost += len(expected) - len(got)
        figures = {"agents": agents, "vms_per_agent": vms, "entities": len(vm_jids), "users": users,
                   "subscriptions_per_user": per_user, "nodes": len(nodes), "all_online_s": all_online,
                   "changes": 2 * len(targets), "deliveries": len(latencies) + lost,
                   "fanout_p50_ms": percentile(latencies, 50) * 1000,
                   "fanout_p99_ms": percentile(latencies, 99) * 1000, "lost": lost,
                   "restart_deliveries": len(back), "restart_lost": restart_lost}
        return figures
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        for hv in hvs:
            hv.process.stop()
        await admin.close()


def _item(uuid_: str):
    import xml.etree.ElementTree as ET
    return ET.Element("item", {"jid": uuid_})


def _explain_loss(stack, cluster, user: str, vm: str, before_restart: dict, t0: float) -> list[str]:
    """What the servers and the user's client knew of a (user, VM) pair whose presence was lost."""
    lines = []
    for key, what in (((user, user, ""), "its own initial presence"), ((user, vm, "Running"), "the VM's 'Running'")):
        at = before_restart.get(key)
        lines.append(f"before the restart the user saw {what}: "
                     + (f"{t0 - at:.2f} s before it" if at is not None else "never"))
    servers = [("node 1", stack.ejabberd.api)] + [(f"node {k}", n.api) for k, n in cluster.nodes.items()]
    for name, api in servers:  # each node answers from its own roster cache
        for me, other in ((user, vm), (vm, user)):
            local, host = me.split("@", 1)
            try:
                items = api("get_roster", {"user": local, "host": host})
                item = [(i.get("subscription"), i.get("ask")) for i in items if i.get("jid") == other]
                lines.append(f"{name}: {me.split('@')[0]}'s roster item for {other.split('@')[0]}: {item or 'none'}")
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                lines.append(f"{name}: get_roster {me}: {exc}")
    for who in (user, vm):
        local, host = who.split("@", 1)
        try:
            info = stack.ejabberd.api("user_sessions_info", {"user": local, "host": host})
            lines.append(f"{who.split('@')[0]}'s sessions: {[(s.get('node'), s.get('priority')) for s in info]}")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"user_sessions_info {who}: {exc}")
    return lines


def _both_ways(stack, user: str, vm: str) -> None:
    """Each in the other's roster with subscription both (what an accepted subscription leaves)."""
    for me, other in ((user, vm), (vm, user)):
        (ml, mh), (ol, oh) = me.split("@", 1), other.split("@", 1)
        stack.ejabberd_api("add_rosteritem", localuser=ml, localhost=mh, user=ol, host=oh,
                           nick=ol, group="campus", subs="both")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--vms", type=int, default=100, help="VM entities per agent")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--per-user", type=int, default=5, help="VMs in each user's roster")
    parser.add_argument("--changes", type=int, default=20, help="VMs stopped and started again")
    parser.add_argument("--profile", default=os.environ.get("ARCHIPEL_RIG_PROFILE", "test"))
    args = parser.parse_args()
    from rig.cluster import Cluster
    from rig.stack import Stack

    async def go():
        stack = Stack(profile=args.profile)
        stack.start()
        cluster = Cluster(stack)
        try:
            cluster.add_node(2)
            return await run_campus(stack, cluster, agents=args.agents, vms=args.vms, users=args.users,
                                    per_user=args.per_user, changes=args.changes, timeout=120,
                                    log=lambda text: print(f"  [{time.strftime('%H:%M:%S')}] {text}",
                                                           file=sys.stderr, flush=True))
        finally:
            cluster.stop()
            stack.stop()

    f = asyncio.run(go())
    print("campus scale simulation on libvirt's test driver (XMPP measured, no QEMU)")
    print(f"parameters: {f['agents']} agents x {f['vms_per_agent']} VMs = {f['entities']} VM entities, "
          f"{f['users']} user sessions x {f['subscriptions_per_user']} VMs in roster, ejabberd cluster of "
          f"{f['nodes']} nodes")
    print(f"all online after restarting every agent: {f['all_online_s']:.2f} s; each user saw its VMs back: "
          f"{f['restart_deliveries']} (user, VM) presences, lost {f['restart_lost']} (must be 0)")
    print(f"presence fan-out: {f['changes']} changes, {f['deliveries']} deliveries, "
          f"p50 {f['fanout_p50_ms']:.1f} ms, p99 {f['fanout_p99_ms']:.1f} ms, lost {f['lost']} (must be 0)")


if __name__ == "__main__":
    main()
