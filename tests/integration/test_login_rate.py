"""The agent's login rate bound across a reconnect storm (issue 16 item 2; xmpp/ratelimit.py).

A second agent with ``max_logins_per_second = 3`` holds 24 VM entities;
ejabberd restarts under it.  A subscribed admin records when each entity's
available presence arrives: in no one-second window more than 3 + 1 arrive
(+1: the bucket's edges), and every entity comes back.  Without the bound the
entities, whose backoff window is [3, 4] s, come back within about a second.
"""
from __future__ import annotations

import asyncio
import collections
import time
import uuid

import pytest

from agent_fixtures import admin_client, second_agent
from vm_helpers import alloc

pytestmark = pytest.mark.timeout(400)

RATE = 3
VMS = 24


def arrivals_per_second(times: list[float]) -> int:
    """The most arrivals within any one-second window (sliding, not aligned)."""
    ordered = sorted(times)
    best = 0
    for i, start in enumerate(ordered):
        best = max(best, sum(1 for t in ordered[i:] if t < start + 1))
    return best


async def until_all_seen(arrived, entities: set[str], since: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while missing := sorted(j for j in entities if not [t for t in arrived[j] if t >= since]):
        assert time.monotonic() < deadline, f"not every entity came back: {missing}"
        await asyncio.sleep(0.2)


async def test_reconnect_storm_after_an_ejabberd_restart_is_paced(stack):
    name = f"hv-rate-{uuid.uuid4().hex[:6]}"
    hv = second_agent(stack, name, {"XMPP": {"max_logins_per_second": str(RATE),
                                             "reconnect_min_delay": "3", "reconnect_max_delay": "4"}})
    observer = await admin_client(stack, "rate-observer")
    arrived: dict[str, list[float]] = collections.defaultdict(list)
    session_at: list[float] = []

    def on_presence(presence):
        if presence["type"] not in ("unavailable", "error", "subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            arrived[presence["from"].bare].append(time.monotonic())
    observer.xmpp.add_event_handler("presence", on_presence)
    observer.xmpp.add_event_handler("session_start", lambda _e: session_at.append(time.monotonic()))
    hv.process.start()
    try:
        await hv.wait_ready(observer, timeout=120)
        jids = [await alloc(observer, hv.full_jid, f"rate-{i:02d}") for i in range(VMS)]
        entities = set(jids) | {hv.jid}
        await observer.see(hv.jid)
        await until_all_seen(arrived, entities, 0.0)  # first logins: paced too, accounts made

        restart = time.monotonic()
        await asyncio.to_thread(stack.restart_ejabberd)
        await observer.reconnect()
        back = session_at[-1]
        await until_all_seen(arrived, entities, restart)
        # What arrives with the observer's own login is the server's burst of presences of
        # entities already online (login time unknown): only later arrivals are login times.
        after = [min(t for t in arrived[j] if t >= restart) for j in entities]
        paced = [t for t in after if t > back + 0.5]
        assert len(paced) >= VMS // 2, f"only {len(paced)} entities logged in after the observer"
        assert arrivals_per_second(paced) <= RATE + 1, sorted(round(t - back, 2) for t in paced)
    finally:
        hv.process.stop()
        await observer.close()
