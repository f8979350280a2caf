"""VMManager.reconcile while alloc/free change the map, and the libvirt lanes, against libvirt's test driver.

The entities here are stand-ins with only what reconcile reads (name,
refresh_state); the map changes happen exactly while reconcile awaits, which
is where an alloc or a free lands in the real agent.
"""
from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from archipelagent.hypervisor.vms import VMManager
from archipelagent.virt import LibvirtConnection

URI = "test:///default"
TEST_DOMAIN = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # the driver's own "test" domain


class StandIn:
    def __init__(self, name: str, during_refresh=None):
        self.name = name
        self._stopping = False
        self.refreshed = 0
        self.during_refresh = during_refresh

    async def refresh_state(self):
        self.refreshed += 1
        if self.during_refresh:
            self.during_refresh()
        await asyncio.sleep(0)


@pytest.fixture
async def conn():
    c = LibvirtConnection(URI, reconnect_min_delay=0.05, reconnect_max_delay=0.2, workers=2, slow_workers=2)
    await c.start()
    yield c
    await c.stop()


def manager(conn) -> VMManager:
    vms = VMManager(SimpleNamespace(libvirt=conn))
    return vms


async def test_an_alloc_during_reconcile_does_not_break_it(conn):
    vms = manager(conn)
    late = StandIn("late")

    def alloc_lands():
        vms.entities["11111111-1111-1111-1111-111111111111"] = late

    vms.entities[TEST_DOMAIN] = StandIn("first", alloc_lands)
    vms.entities["22222222-2222-2222-2222-222222222222"] = StandIn("second")
    report = await vms.reconcile()
    assert report["missing_domain"] == ["22222222-2222-2222-2222-222222222222"]
    assert vms.entities["22222222-2222-2222-2222-222222222222"].refreshed == 1


async def test_a_free_during_reconcile_is_not_refreshed(conn):
    vms = manager(conn)
    freed_uuid = "33333333-3333-3333-3333-333333333333"
    freed = StandIn("freed")

    def free_lands():
        freed._stopping = True
        del vms.entities[freed_uuid]

    vms.entities[TEST_DOMAIN] = StandIn("first", free_lands)
    vms.entities[freed_uuid] = freed
    report = await vms.reconcile()
    assert freed.refreshed == 0 and report["missing_domain"] == []


async def test_slow_calls_never_take_the_quick_lane(conn):
    """Every slow thread blocked: quick calls still answer (the old single pool starved)."""
    release = threading.Event()
    hung = [asyncio.ensure_future(conn.call(release.wait, slow=True)) for _ in range(4)]
    try:
        for _ in range(3):
            assert await asyncio.wait_for(conn.call("getHostname"), 10)
            assert (await asyncio.wait_for(conn.node_info(), 10))["nrCPU"]
        assert not any(task.done() for task in hung)
    finally:
        release.set()
        await asyncio.gather(*hung)


async def test_known_slow_methods_go_to_the_slow_lane(conn):
    """``destroy``, ``screenshot``, snapshots… are routed by name; a lambda is quick."""
    names = []

    def probe():
        names.append(threading.current_thread().name)

    def destroy():
        names.append(threading.current_thread().name)

    await conn.call(probe)
    await conn.call(destroy)
    assert names[0].startswith("libvirt_") and names[1].startswith("libvirt-slow")


async def test_reconcile_reads_every_state_in_one_libvirt_read(conn):
    """After a libvirt reconnection an agent with 1,000 VMs refreshes them all: one read, not 1,000."""
    from archipelagent.virt.states import StateReader
    reads = []

    class CountingConnection:
        async def domain_states(self, uuids):
            reads.append(len(uuids))
            return await conn.domain_states(uuids)
    reader = StateReader(CountingConnection())

    class Reading(StandIn):
        def __init__(self, uuid):
            super().__init__(uuid)
            self.uuid, self.state = uuid, "unread"

        async def refresh_state(self):
            self.state = await reader.state(self.uuid)

    vms = manager(conn)
    entities = [Reading(TEST_DOMAIN)] + [Reading(f"{i:08d}-0000-4000-8000-000000000000") for i in range(49)]
    for entity in entities:
        vms.entities[entity.uuid] = entity
    report = await vms.reconcile()
    assert reads == [50]
    assert entities[0].state[0] == 1  # the driver's "test" domain: running
    assert all(e.state is None for e in entities[1:]) and len(report["missing_domain"]) == 49
