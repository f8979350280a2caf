#!/usr/bin/env python3
"""One agent holding N VM entities, against what ejabberd itself can do (issue 16 item 2).

For each N (100, 500, 1,000 by default), on the real stack:

(a) the floor: a raw login storm of the same N VM accounts (bare slixmpp clients,
    one shared TLS context, connect + STARTTLS + SASL + bind + presence, all at
    once), time until every session is up;
(b) agent restart -> every VM entity seen online (available presence) by a
    subscribed admin; the ratio (b)/(a) (goal <= 1.5).  Each measurement starts
    once ejabberd is quiet again (it closes the previous run's 1,000 sessions);
(c) the agent's RSS per entity (RSS with N entities minus RSS with none, / N;
    goal <= 0.4 MiB);
(d) a reconnect storm: ejabberd restarted under the running agent, time until
    every entity is online again, and two figures of its pace: the most
    connection attempts the agent started within one second (its metric
    archipel_login_attempts_peak_per_second, bounded by its login gate,
    max_logins_per_second, behind the jittered backoff, reconnect_min_delay/
    max_delay), and the most logins ejabberd accepted within one second, read
    from its own log as tests/integration/test_login_rate.py does (a busy
    server accepts the queued connections in bunches).  Presences reach a
    client in bunches too: their arrival times are no measure of the logins.

    .venv/bin/python bench/bench_scale.py [--sizes 100 500 1000] [--profile test]

The VMs are defined in the rig's libvirtd, never started (this measures XMPP).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sqlite3
import socket
import ssl
import sys
import time
import urllib.request

import slixmpp

from bench_vms import PresenceClock, alloc_many, rss_mib
from common import running_agent
from rig.ejabberd_log import connections_accepted, most_in_one_second

from archipelagent.config import DEFAULT_MAX_LOGINS_PER_SECOND as DEFAULT_RATE


async def raw_login_storm(stack, accounts: list[tuple[str, str]], timeout: float = 600) -> float:
    """Seconds until all ``accounts`` have a session (bare clients, all at once)."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    loop = asyncio.get_running_loop()
    clients, ready = [], []
    for jid, password in accounts:
        client = slixmpp.ClientXMPP(f"{jid}/storm", password, ssl_context=context)
        client.enable_direct_tls = False
        done = loop.create_future()

        def started(_event, client=client, done=done):
            client.send_presence()
            if not done.done():
                done.set_result(time.monotonic())
        client.add_event_handler("session_start", started)
        clients.append(client)
        ready.append(done)
    t0 = time.monotonic()
    for client in clients:
        client.connect(stack.xmpp_host, stack.c2s_port)
    finished = await asyncio.wait_for(asyncio.gather(*ready), timeout)
    elapsed = max(finished) - t0
    await asyncio.gather(*(c.disconnect(wait=0.5) for c in clients), return_exceptions=True)
    await asyncio.sleep(1)
    # each stream's cancelled output-filter task ends here, not as a warning when the loop closes
    leftovers = [c._run_out_filters for c in clients if c._run_out_filters is not None]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    return elapsed


def vm_accounts(lib_dir) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{lib_dir / 'hypervisor.sqlite3'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT jid, password FROM vms").fetchall()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gate_peak(port: int) -> int:
    """The agent's own count: the most attempts its login gate started within one second."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("archipel_login_attempts_peak_per_second "):
                return int(float(line.split()[1]))
    raise RuntimeError("the agent's metrics have no archipel_login_attempts_peak_per_second")


async def logins_peak(stack, jids: set[str], since_utc: datetime.datetime, timeout: float = 30) -> tuple[int, int]:
    """(logins seen, most in any one second) from ejabberd's log of the connections it accepted
    for ``jids`` after ``since_utc`` (the server's view; rig/ejabberd_log.py)."""
    log_file, deadline = stack.ejabberd.logs / "ejabberd.log", time.monotonic() + timeout
    while True:  # ejabberd's logger writes its file with a delay
        accepted = connections_accepted(log_file.read_text(errors="replace"), jids, since_utc)
        if len(accepted) == len(jids) or time.monotonic() > deadline:
            return len(accepted), most_in_one_second(list(accepted.values()))
        await asyncio.sleep(0.5)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_quiet(stack, busy: float = 0.05, longest: float = 30) -> float:
    """Wait until ejabberd uses under ``busy`` of a core (it finishes closing the previous
    run's sessions): each measurement starts from a quiet server.  Seconds waited."""
    pid = stack.ejabberd.pids()[0]
    t0 = time.monotonic()
    while time.monotonic() - t0 < longest:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - before < busy * 0.5:
            break
    return time.monotonic() - t0


def step(text: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def bench(n: int, rate: float | None) -> None:
    port = free_port()
    config = {"HEALTH": {"health_collection_interval": "10"},  # the shipped interval (tests use 1 s)
              "METRICS": {"metrics_address": f"127.0.0.1:{port}"}}
    if rate is not None:
        config["XMPP"] = {"max_logins_per_second": str(int(rate))}
    async with running_agent(config=config) as (stack, agent, admin):
        clock = PresenceClock(admin)
        await asyncio.sleep(2)
        base_rss = rss_mib(agent.process.proc.pid)
        t0 = time.monotonic()
        step(f"N={n}: allocating")
        jids = await alloc_many(admin, agent.full_jid, n, f"s{n}")
        await clock.wait_online(set(jids), t0, 900)
        alloc_s = time.monotonic() - t0
        step(f"N={n}: allocated in {alloc_s:.1f} s; raw login storm")
        agent.process.stop()
        await server_quiet(stack)
        raw_s = await raw_login_storm(stack, vm_accounts(agent.lib_dir))
        step(f"N={n}: raw storm {raw_s:.1f} s; agent restart")
        await server_quiet(stack)
        t1 = time.monotonic()
        agent.process.start()
        online_s = await clock.wait_online(set(jids), t1, 900)
        step(f"N={n}: all online {online_s:.1f} s after the restart; ejabberd restart")
        await asyncio.sleep(5)  # let the entities finish their set-up (roster, vCard, pubsub)
        rss = rss_mib(agent.process.proc.pid)
        # (d) reconnect storm
        await server_quiet(stack)
        t2, t2_utc = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
        await asyncio.to_thread(stack.restart_ejabberd)
        await admin.reconnect()
        storm_s = await clock.wait_online(set(jids), t2, 900)
        logged, peak = await logins_peak(stack, set(jids), t2_utc)
        await asyncio.sleep(6)  # the metrics snapshot is refreshed every few seconds
        attempts_peak = await asyncio.to_thread(gate_peak, port)
        limit = DEFAULT_RATE if rate is None else rate
        gate = f"{n / limit:.1f} s at {limit:g}/s" if limit else "off"
        print(f"N={n:<5} login gate {gate} | alloc {alloc_s:6.1f} s | raw login storm {raw_s:6.2f} s | agent restart -> all online "
              f"{online_s:6.2f} s  ratio {online_s / raw_s:4.2f} (goal <= 1.5) | RSS {rss:.0f} MiB, "
              f"{(rss - base_rss) / n:.3f} MiB/entity (goal <= 0.4) | ejabberd restart -> all online "
              f"{storm_s:6.2f} s: at most {attempts_peak} attempts started in one second (the agent's gate), "
              f"{peak} logins accepted in one second (ejabberd's log, {logged}/{n} logged)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 500, 1000])
    parser.add_argument("--rate", type=int, default=None,
                        help="the agent's [XMPP] max_logins_per_second (default: the agent's, "
                             f"{DEFAULT_RATE:g}; 0: no bound). N/rate is the gate's own floor")
    parser.add_argument("--profile", default=None,
                        help="the rig profile to run on (default: $ARCHIPEL_RIG_PROFILE, else test)")
    args = parser.parse_args()
    if args.profile:
        os.environ["ARCHIPEL_RIG_PROFILE"] = args.profile  # read by common.running_agent
    for n in args.sizes:
        asyncio.run(bench(n, args.rate))


if __name__ == "__main__":
    main()
