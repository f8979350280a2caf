"""Domain states read in batches: the requests made while a read is in flight share the next one.

Why: every VM entity reads its domain's state before each session's first
presence, and after every lifecycle event.  When an agent starts with 1,000
VMs, that was 2,000 calls through the thread pool (a lookup and a ``state``
each), competing with the logins for the interpreter.  Requests are gathered
instead: those made in the same turn of the loop, or while a read is running,
are answered by one read.  A read made after a request started is as fresh as
a read of its own, so nothing is answered from an older state.

Large batches use one ``getAllDomainStats(STATE)`` RPC; a few domains are read
one by one (reading every domain's state to answer one would cost more).
"""
from __future__ import annotations

import asyncio
import logging

import libvirt


log = logging.getLogger(__name__)

# Above this many domains in a batch, one RPC for all domains instead of one per domain.
BULK_FROM = 8


def read_states(conn: libvirt.virConnect, uuids: set[str]) -> dict[str, tuple[int, int] | None]:
    """(state, reason) of each of ``uuids`` (lower case); None for a domain that does not exist.

    Blocking: runs in the connection's pool.
    """
    found: dict[str, tuple[int, int] | None] = {}
    if len(uuids) >= BULK_FROM:
        try:
            for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE):
                uuid = dom.UUIDString().lower()
                if uuid in uuids and "state.state" in stats:
                    found[uuid] = (int(stats["state.state"]), int(stats.get("state.reason", 0)))
        except libvirt.libvirtError as err:
            log.debug("getAllDomainStats failed (%s): reading states one by one", err)
    for uuid in uuids - found.keys():
        try:
            state, reason = conn.lookupByUUIDString(uuid).state()
            found[uuid] = (int(state), int(reason))
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            found[uuid] = None
    return found


class StateReader:
    """``await reader.state(uuid)``: (state, reason) or None, through shared batched reads."""

    def __init__(self, connection):
        self._connection = connection
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._task: asyncio.Task | None = None

    async def state(self, uuid: str) -> tuple[int, int] | None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(uuid.lower(), []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # the requests of this turn of the loop join the batch
            batch, self._waiting = self._waiting, {}
            try:
                states = await self._connection.domain_states(set(batch))
            except Exception as exc:  # noqa: BLE001 - each waiter gets the failure (Unavailable, LibvirtFailure)
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for uuid, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(states.get(uuid))
