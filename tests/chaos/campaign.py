#!/usr/bin/env python3
"""Chaos campaign: faults at random moments while clients keep sending commands (issue 16 item 4).

A dedicated agent (``hv-chaos``, its VM storage a bind mount the campaign can cut)
with three VMs (one running), an owner sending ``info``/``ping`` to every entity
all the time, and a stranger.  In loops, in a random order and after random
delays, each fault is made and healed:

    ejabberd restart · libvirtd restart (QEMUs kept) · agent SIGKILL + restart ·
    slapd stop/start · the agent's XMPP connection dropped by the server ·
    storage cut (bind mount remounted read-only, then read-write)
    with --cluster (rig/cluster.py): one node of the ejabberd cluster restarted, and
    the whole cluster restarted

After each, the invariants: every entity answers again within 30 s by itself;
every command sent on a session that stayed up was answered or refused (never
silence); no row of the agent's databases lost or duplicated; the running VM
untouched (same QEMU, still running); no orphan account, definition or VM folder;
a stranger still refused.  A violated invariant stops the campaign with what
was seen and the seed that reproduces the order.

The suite runs one short pass (tests/integration/test_chaos.py); longer runs:

    .venv/bin/python tests/chaos/campaign.py --loops 10 [--seed N] [--profile dev1]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (REPO, REPO / "tests" / "integration"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import libvirt  # noqa: E402

from agent_fixtures import admin_client, client_for, grant, second_agent  # noqa: E402
from vm_helpers import CONTROL, HV_NS, alloc, unique_name, vm_full, wait_vm_ready  # noqa: E402
from xmpp_client import AcpError, Client  # noqa: E402

BACK_WITHIN = 30.0      # seconds: every entity serving again after a fault is healed
REQUEST_TIMEOUT = 20.0  # a reply slower than this on a session that stayed up is "silence"
FAULTS = ("ejabberd_restart", "libvirtd_restart", "agent_kill", "slapd_stop", "connection_drop",
          "storage_cut")
CLUSTER_FAULTS = ("cluster_node_restart", "cluster_restart")


class InvariantBroken(AssertionError):
    """An invariant did not hold after a fault; the message says which and the seed."""


@dataclass
class Outcomes:
    """What the owner's commands got, per fault window."""
    answered: int = 0
    refused: int = 0
    cut: int = 0            # the client's own session dropped meanwhile (the server restarted)
    silent: list = field(default_factory=list)

    def total(self) -> int:
        return self.answered + self.refused + self.cut + len(self.silent)


class Session:
    """Counts a client's disconnections: a lost reply only counts as silence when none happened."""

    def __init__(self, client):
        self.client = client
        self.drops = 0
        client.xmpp.add_event_handler("disconnected", self._dropped)

    def _dropped(self, _reason):
        self.drops += 1


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


class Campaign:
    def __init__(self, stack, *, seed: int | None = None, say=print, cluster=None):
        self.stack = stack
        # with an ejabberd cluster (rig/cluster.py): the owner is on node 2, the agent on
        # node 1, and two more faults: node 2 restarted, and the whole cluster restarted
        self.cluster = cluster
        self.faults = FAULTS + (CLUSTER_FAULTS if cluster else ())
        self.seed = seed if seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.say = say
        self.name = f"hv-chaos-{uuid.uuid4().hex[:6]}"
        self.storage = stack.state_dir / f"{self.name}-storage"
        self.hv = None
        self.owner = self.stranger = self.admin = None
        self.vms: list[str] = []           # bare JIDs
        self.running_uuid: str | None = None
        self.report: list[dict] = []

    # ------------------------------------------------------------------ set-up
    async def setup(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(self.storage), str(self.storage)], check=True)
        self.hv = second_agent(self.stack, self.name, {"VIRTUALMACHINE": {"vm_base_path": str(self.storage)},
                                                       "LDAP": {"ldap_timeout": "2"}})
        self.hv.process.start()
        self.admin = await admin_client(self.stack, f"chaos-{uuid.uuid4().hex[:4]}")
        await self.hv.wait_ready(self.admin, timeout=90)
        node = self.cluster.nodes[min(self.cluster.nodes)] if self.cluster else None
        self.owner = await self._user("chaos-owner", node)
        self.stranger = await self._user("chaos-stranger")
        self.owner_session = Session(self.owner)
        await grant(self.admin, self.hv.full_jid, self.owner.jid, "alloc", "nodeinfo")
        for i in range(3):
            jid = await alloc(self.owner, self.hv.full_jid, unique_name(f"chaos{i}"))
            self.vms.append(jid)
            await wait_vm_ready(self.owner, self.full(jid), timeout=60)
        await self.owner.acp(self.full(self.vms[0]), CONTROL, "create")
        self.running_uuid = self.vms[0].split("@")[0]
        await self._until(lambda: self._qemu()[1] == libvirt.VIR_DOMAIN_RUNNING, 30, "the chaos VM running")

    async def _user(self, prefix: str, node=None):
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        password = uuid.uuid4().hex
        jid = self.stack.register_user(name, password)
        if node is None:
            return await client_for(self.stack, jid, password, "chaos").connect()
        return await Client(jid, password, ca_file=self.stack.ca_file, host=node.listen_ip, port=node.c2s_port,
                            resource="chaos").connect()

    def full(self, jid: str) -> str:
        return vm_full(jid, self.hv.jid)

    async def teardown(self) -> None:
        try:
            if self.owner and self.hv and self.hv.process.alive:
                for jid in self.vms:
                    try:
                        await self.owner.acp(self.full(jid), CONTROL, "destroy", timeout=15)
                    except Exception:  # noqa: BLE001 - already off
                        pass
                    try:
                        await self.admin.acp(self.hv.full_jid, HV_NS, "free", {"jid": jid}, timeout=30)
                    except Exception as exc:  # noqa: BLE001 - reported, the rig is torn down anyway
                        self.say(f"chaos: free {jid}: {exc}")
        finally:
            for client in (self.owner, self.stranger, self.admin):
                if client:
                    await client.close()
            if self.hv:
                self.hv.process.stop()
            if mounted(self.storage):
                subprocess.run(["umount", "-l", str(self.storage)], check=False)

    # ------------------------------------------------------------- snapshots
    def _rows(self) -> dict:
        def read(db: str, sql: str) -> list:
            conn = sqlite3.connect(f"file:{self.hv.lib_dir / db}?mode=ro", uri=True, timeout=10)
            try:
                return sorted(conn.execute(sql).fetchall())
            finally:
                conn.close()
        return {"vms": read("hypervisor.sqlite3", "SELECT uuid, jid, name, owner FROM vms"),
                "grants": read("permissions.sqlite3", "SELECT entity, target_type, target, permission, value "
                                                      "FROM grants")}

    def _qemu(self) -> tuple[int, int]:
        conn = libvirt.open(self.stack.libvirt_uri)
        try:
            dom = conn.lookupByUUIDString(self.running_uuid)
            return dom.ID(), dom.state()[0]
        finally:
            conn.close()

    def _world(self) -> dict:
        conn = libvirt.open(self.stack.libvirt_uri)
        try:
            defined = {d.UUIDString() for d in conn.listAllDomains()}
        finally:
            conn.close()
        accounts = set(self.stack.ejabberd_api("registered_users", host=self.stack.domain) or [])
        folders = {p.name for p in self.storage.iterdir() if p.is_dir()}
        return {"defined": defined, "accounts": accounts, "folders": folders}

    # -------------------------------------------------------------- the load
    async def _load(self, outcomes: Outcomes, stop: asyncio.Event) -> None:
        """The owner keeps asking every entity, one request at a time per entity."""
        async def one(target: str, namespace: str, action: str) -> None:
            while not stop.is_set():
                if not self.owner.ready.is_set():
                    await asyncio.sleep(0.2)
                    continue
                drops = self.owner_session.drops
                t0 = time.monotonic()
                try:
                    await self.owner.acp(target, namespace, action, timeout=REQUEST_TIMEOUT)
                    outcomes.answered += 1
                except AcpError:
                    outcomes.refused += 1
                except (asyncio.TimeoutError, TimeoutError, Exception) as exc:  # noqa: BLE001
                    if self.owner_session.drops != drops:
                        outcomes.cut += 1
                    else:
                        outcomes.silent.append(f"{action} to {target}: no answer in "
                                               f"{time.monotonic() - t0:.1f} s ({type(exc).__name__})")
                await asyncio.sleep(0.3)

        await asyncio.gather(one(self.hv.full_jid, HV_NS, "nodeinfo"),
                             *(one(self.full(jid), CONTROL, "info") for jid in self.vms))

    # ------------------------------------------------------------ the faults
    async def fault(self, name: str) -> None:
        st = self.stack
        if name == "ejabberd_restart":
            await asyncio.to_thread(st.stop_ejabberd)
            await self._pause()
            await asyncio.to_thread(st.start_ejabberd)
        elif name == "libvirtd_restart":
            await asyncio.to_thread(st.stop_libvirtd, False)
            await self._pause()
            await asyncio.to_thread(st.start_libvirtd)
        elif name == "agent_kill":
            await asyncio.to_thread(self.hv.process.kill)
            await self._pause()
            self.hv.process.start()
        elif name == "slapd_stop":
            await asyncio.to_thread(st.stop_slapd)
            await self._pause()
            await asyncio.to_thread(st.start_slapd)
        elif name == "connection_drop":
            await asyncio.to_thread(st.ejabberd_api, "kick_session", user=self.name, host=st.domain,
                                    resource=self.name, reason="chaos: connection dropped")
            await self._pause()
        elif name == "storage_cut":
            subprocess.run(["mount", "-o", "remount,bind,ro", str(self.storage)], check=True)
            await self._pause()
            subprocess.run(["mount", "-o", "remount,bind,rw", str(self.storage)], check=True)
        elif name == "cluster_node_restart":
            k = min(self.cluster.nodes)
            await asyncio.to_thread(self.cluster.stop_node, k)
            await self._pause()
            await asyncio.to_thread(self.cluster.restart_node, k)
        elif name == "cluster_restart":
            nodes = [st.ejabberd, *self.cluster.nodes.values()]
            await asyncio.gather(*(asyncio.to_thread(n.stop) for n in nodes))
            await self._pause()
            # together: a Mnesia node waits for the tables of the others at start
            await asyncio.gather(*(asyncio.to_thread(n.start) for n in nodes))
        else:
            raise ValueError(f"unknown fault {name}")

    async def _pause(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))

    # ------------------------------------------------------------ invariants
    async def _until(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                result = await asyncio.to_thread(check) if not asyncio.iscoroutinefunction(check) else await check()
                if result:
                    return result
            except Exception as exc:  # noqa: BLE001 - not yet
                last = exc
            await asyncio.sleep(0.3)
        raise InvariantBroken(f"{what}: not within {timeout:.0f} s (last: {last!r}; seed {self.seed})")

    async def _serving(self) -> bool:
        await self.owner.ping(self.hv.full_jid, timeout=5)
        for jid in self.vms:
            await self.owner.acp(self.full(jid), CONTROL, "info", timeout=5)
        return True

    async def check(self, name: str, before: dict, outcomes: Outcomes, healed_at: float) -> dict:
        await self._until(self._serving, BACK_WITHIN, f"after {name}: every entity serving again")
        back = time.monotonic() - healed_at
        if outcomes.silent:
            raise InvariantBroken(f"after {name}: commands met silence: {outcomes.silent[:3]} (seed {self.seed})")
        rows = await asyncio.to_thread(self._rows)
        if rows != before["rows"]:
            raise InvariantBroken(f"after {name}: database rows changed: before {before['rows']} "
                                  f"after {rows} (seed {self.seed})")
        qemu = await asyncio.to_thread(self._qemu)
        if qemu != before["qemu"]:
            raise InvariantBroken(f"after {name}: the running VM was touched: (id, state) "
                                  f"{before['qemu']} -> {qemu} (seed {self.seed})")
        world = await asyncio.to_thread(self._world)
        for key in ("defined", "accounts", "folders"):
            if world[key] != before["world"][key]:
                raise InvariantBroken(f"after {name}: {key} changed: +{sorted(world[key] - before['world'][key])} "
                                      f"-{sorted(before['world'][key] - world[key])} (seed {self.seed})")
        await self._stranger_refused(name)
        return {"fault": name, "back_s": round(back, 1), "answered": outcomes.answered,
                "refused": outcomes.refused, "cut": outcomes.cut}

    async def _stranger_refused(self, name: str) -> None:
        """A stranger never reads a VM; once the fault is healed the refusal is the
        permission error again (a -48 "LDAP unreachable" meanwhile is a refusal too)."""
        deadline = time.monotonic() + BACK_WITHIN
        while True:
            try:
                await self.stranger.acp(self.full(self.vms[1]), CONTROL, "info", timeout=15)
            except AcpError as err:
                if err.is_permission_error:
                    return
                if time.monotonic() > deadline:
                    raise InvariantBroken(f"after {name}: the stranger still gets {err} instead of a "
                                          f"permission error (seed {self.seed})") from None
                await asyncio.sleep(0.5)
            else:
                raise InvariantBroken(f"after {name}: a stranger read a VM's info (seed {self.seed})")

    # ------------------------------------------------------------------- run
    async def run(self, loops: int = 1) -> list[dict]:
        self.say(f"chaos: seed {self.seed}, {loops} loop(s) of {len(self.faults)} faults")
        await self._until(self._serving, BACK_WITHIN, "the chaos agent serving before the first fault")
        for loop in range(loops):
            order = list(self.faults)
            self.rng.shuffle(order)
            for name in order:
                before = {"rows": await asyncio.to_thread(self._rows), "qemu": await asyncio.to_thread(self._qemu),
                          "world": await asyncio.to_thread(self._world)}
                outcomes, stop = Outcomes(), asyncio.Event()
                load = asyncio.ensure_future(self._load(outcomes, stop))
                try:
                    await self._pause()                     # the fault lands mid-traffic
                    await self.fault(name)
                    healed_at = time.monotonic()
                    await self.owner.reconnect(timeout=BACK_WITHIN)
                    line = await self.check(name, before, outcomes, healed_at)
                finally:
                    stop.set()
                    await asyncio.gather(load, return_exceptions=True)
                line["loop"] = loop
                self.report.append(line)
                self.say(f"chaos: {line}")
        return self.report


async def _main(args) -> int:
    from rig.stack import Stack
    stack = Stack(profile=args.profile)
    stack.start()
    cluster = None
    if args.cluster:
        from rig.cluster import Cluster
        cluster = Cluster(stack)
        cluster.add_node(2)
    campaign = Campaign(stack, seed=args.seed, cluster=cluster)
    try:
        await campaign.setup()
        await campaign.run(args.loops)
        return 0
    except InvariantBroken as exc:
        print(f"chaos: INVARIANT BROKEN: {exc}", file=sys.stderr)
        return 1
    finally:
        await campaign.teardown()
        if cluster:
            cluster.stop()
        if not args.keep:
            stack.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=5, help="passes over every fault (default 5)")
    parser.add_argument("--seed", type=int, help="reproduce an earlier order and timing")
    parser.add_argument("--profile", default=os.environ.get("ARCHIPEL_RIG_PROFILE", "dev1"),
                        help="rig profile whose stack is started (default dev1)")
    parser.add_argument("--cluster", action="store_true",
                        help="a second ejabberd node in a cluster (the owner on it) and its two faults")
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
