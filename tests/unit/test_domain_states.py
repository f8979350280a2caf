"""Domain states read in shared batches (virt/states.py).

``read_states`` runs against libvirt's in-process test driver (as
test_virt_testdriver.py does); the batching is checked with a recording
stand-in for ``LibvirtConnection.domain_states``.
"""
from __future__ import annotations

import asyncio
import uuid

import libvirt
import pytest

from archipelagent.errors import Unavailable
from archipelagent.virt import states
from archipelagent.virt.states import StateReader, read_states


def define(conn, count: int) -> list[str]:
    uuids = []
    for i in range(count):
        u = str(uuid.uuid4())
        conn.defineXML(f"<domain type='test'><name>st-{u[:8]}-{i}</name><uuid>{u}</uuid>"
                       "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
        uuids.append(u)
    return uuids


@pytest.mark.parametrize("count", [2, states.BULK_FROM + 4])  # one by one, and one RPC for all
def test_read_states_reads_each_domain_and_names_the_missing(count):
    conn = libvirt.open("test:///default")
    try:
        uuids = define(conn, count)
        conn.lookupByUUIDString(uuids[0]).create()
        missing = str(uuid.uuid4())
        found = read_states(conn, {*uuids, missing})
        assert found[missing] is None
        assert found[uuids[0]][0] == libvirt.VIR_DOMAIN_RUNNING
        assert all(found[u][0] == libvirt.VIR_DOMAIN_SHUTOFF for u in uuids[1:])
    finally:
        conn.close()


class Recording:
    """``domain_states`` answering from a table, recording each batch it was asked."""

    def __init__(self, table, failure=None):
        self.table, self.failure, self.batches = table, failure, []

    async def domain_states(self, uuids):
        self.batches.append(set(uuids))
        await asyncio.sleep(0.01)
        if self.failure:
            raise self.failure
        return {u: self.table.get(u) for u in uuids}


async def test_requests_made_together_or_during_a_read_share_one_read():
    table = {f"u{i}": (1, 1) for i in range(100)}
    connection = Recording(table)
    reader = StateReader(connection)
    first = await asyncio.gather(*(reader.state(f"u{i}") for i in range(100)), reader.state("u1"))
    assert first == [(1, 1)] * 101 and len(connection.batches) == 1
    # Requests made while a read is in flight wait for the next one, which is made after them.
    early = asyncio.ensure_future(reader.state("u1"))
    await asyncio.sleep(0.005)
    late = [asyncio.ensure_future(reader.state(f"u{i}")) for i in range(3)]
    assert await early == (1, 1) and await asyncio.gather(*late) == [(1, 1)] * 3
    assert connection.batches[1:] == [{"u1"}, {"u0", "u1", "u2"}]
    assert await reader.state("nothing") is None


async def test_a_failed_read_fails_every_request_of_its_batch_and_not_the_next():
    connection = Recording({"u1": (5, 0)}, failure=Unavailable("libvirt connection lost"))
    reader = StateReader(connection)
    results = await asyncio.gather(reader.state("u1"), reader.state("u2"), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    connection.failure = None
    assert await reader.state("U1") == (5, 0)  # UUIDs compared in lower case
