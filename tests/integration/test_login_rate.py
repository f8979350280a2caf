"""The agent's login rate bound across a reconnect storm (issue 16 item 2; xmpp/ratelimit.py).

A second agent with ``max_logins_per_second = 3`` holds 24 VM entities;
ejabberd restarts under it.  A subscribed admin waits until every entity's
available presence is back; ejabberd's own log says when it accepted each of
their connections (the server's view of the logins, rig/ejabberd_log.py): in no
one-second window more than 3 + 1 (the agent starts at most 3 attempts in any
second; +1 for the varying delay between an attempt and its acceptance).  Without the bound the entities,
whose backoff window is [3, 4] s, come back within about a second (25 in one
second when this test runs with the bound off).

Presence arrival times are not a measure of login times: an entity announces
itself only once its set-up (roster, vCard, events node) is done, which takes
a varying number of round trips.
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import time
import uuid

import pytest

from agent_fixtures import admin_client, second_agent
from rig.ejabberd_log import connections_accepted, most_in_one_second
from vm_helpers import alloc

pytestmark = pytest.mark.timeout(400)

RATE = 3
VMS = 24


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

    def on_presence(presence):
        if presence["type"] not in ("unavailable", "error", "subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            arrived[presence["from"].bare].append(time.monotonic())
    observer.xmpp.add_event_handler("presence", on_presence)
    hv.process.start()
    try:
        await hv.wait_ready(observer, timeout=120)
        jids = [await alloc(observer, hv.full_jid, f"rate-{i:02d}") for i in range(VMS)]
        entities = set(jids) | {hv.jid}
        await observer.see(hv.jid)
        await until_all_seen(arrived, entities, 0.0)  # first logins: paced too, accounts made

        restart, restart_utc = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
        await asyncio.to_thread(stack.restart_ejabberd)
        await observer.reconnect()
        await until_all_seen(arrived, entities, restart)
        log_file, deadline = stack.ejabberd.logs / "ejabberd.log", time.monotonic() + 30
        while True:  # ejabberd's logger writes its file with a delay (delayed_write)
            accepted = connections_accepted(log_file.read_text(errors="replace"), entities, restart_utc)
            if set(accepted) == entities or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert set(accepted) == entities, f"no accepted connection logged for {sorted(entities - set(accepted))}"
        first = min(accepted.values())
        assert most_in_one_second(list(accepted.values())) <= RATE + 1, \
            sorted(round(t - first, 2) for t in accepted.values())
    finally:
        hv.process.stop()
        await observer.close()
