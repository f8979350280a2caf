"""LibvirtConnection against libvirt's in-process test:///default driver."""
import asyncio
import threading
import time
import uuid

import libvirt
import pytest
from lxml import etree

from archipelagent.errors import InvalidArgument, LibvirtFailure, NotFound, Unavailable
from archipelagent.virt import LibvirtConnection
from archipelagent.virt import events as ev
from archipelagent.virt.nodeinfo import NODE_INFO_KEYS

URI = "test:///default"
DEFAULT_DOMAIN_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"   # the driver's "test" domain


def domain_xml(name: str, dom_uuid: str) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{dom_uuid}</uuid>"
            "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")


class Recorder:
    """Lifecycle listener collecting (time, uuid, event, detail)."""

    def __init__(self):
        self.events = []
        self.changed = asyncio.Event()

    def __call__(self, dom_uuid, event, detail):
        self.events.append((time.monotonic(), dom_uuid, event, detail))
        self.changed.set()

    async def wait_for(self, dom_uuid, event, timeout=2.0):
        deadline = time.monotonic() + timeout
        while True:
            for rec in self.events:
                if rec[1] == dom_uuid and rec[2] == event:
                    return rec
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {ev.event_name(event)} for {dom_uuid}: {self.events}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass


@pytest.fixture
async def conn():
    c = LibvirtConnection(URI, reconnect_min_delay=0.05, reconnect_max_delay=0.2)
    await c.start()
    assert c.connected
    yield c
    await c.stop()


@pytest.mark.asyncio
async def test_capabilities_is_xml(conn):
    root = etree.fromstring((await conn.capabilities()).encode())
    assert root.tag == "capabilities"
    assert root.find("host") is not None


@pytest.mark.asyncio
async def test_node_info(conn):
    info = await conn.node_info()
    assert set(info) == set(NODE_INFO_KEYS)
    raw = conn.raw.getInfo()            # [model, MiB, cpus, MHz, nodes, sockets, cores, threads]
    assert info["model"] == raw[0]
    assert info["nrCPU"] == raw[2] == 16
    assert info["mHzCPU"] == raw[3]
    assert (info["nrNumaNodes"], info["nrSockets"], info["nrCoreperSocket"],
            info["nrThreadperCore"]) == tuple(raw[4:8])
    # KiB, not libvirt's MiB
    assert raw[1] * 1024 <= info["memory_kib"] < (raw[1] + 1) * 1024


@pytest.mark.asyncio
async def test_hostname_and_version(conn):
    assert await conn.hostname()
    v = await conn.version()
    assert v["driver"] == "TEST"
    assert v["libvirt"].count(".") == 2 and v["hypervisor"].count(".") == 2
    major = libvirt.getVersion() // 1_000_000
    assert v["libvirt"].startswith(f"{major}.")


@pytest.mark.asyncio
async def test_list_domains_and_lookup(conn):
    doms = await conn.list_domains()
    by_uuid = {d.uuid: d for d in doms}
    assert DEFAULT_DOMAIN_UUID in by_uuid
    d = by_uuid[DEFAULT_DOMAIN_UUID]
    assert d.name == "test" and d.persistent is True
    assert d.state == libvirt.VIR_DOMAIN_RUNNING
    uuid_, name, state, persistent = d                    # plain tuple too
    dom = await conn.lookup(DEFAULT_DOMAIN_UUID.upper())
    assert dom.name() == "test"


@pytest.mark.asyncio
async def test_list_domains_sees_transient_and_inactive(conn):
    u_persist, u_trans = str(uuid.uuid4()), str(uuid.uuid4())
    dom = await conn.call("defineXML", domain_xml("unit-inactive", u_persist))
    tdom = await conn.call("createXML", domain_xml("unit-transient", u_trans), 0)
    try:
        by_uuid = {d.uuid: d for d in await conn.list_domains()}
        assert by_uuid[u_persist].state == libvirt.VIR_DOMAIN_SHUTOFF
        assert by_uuid[u_persist].persistent is True
        assert by_uuid[u_trans].state == libvirt.VIR_DOMAIN_RUNNING
        assert by_uuid[u_trans].persistent is False
    finally:
        await conn.call(tdom.destroy)
        await conn.call(dom.undefine)


@pytest.mark.asyncio
async def test_lookup_missing_and_invalid(conn):
    with pytest.raises(NotFound):
        await conn.lookup(str(uuid.uuid4()))
    with pytest.raises(InvalidArgument):
        await conn.lookup("not-a-uuid")


@pytest.mark.asyncio
async def test_call_maps_libvirt_errors(conn):
    with pytest.raises(LibvirtFailure) as exc:
        await conn.call("lookupByName", "no-such-domain")
    assert exc.value.code == libvirt.VIR_ERR_NO_DOMAIN
    assert "not found" in exc.value.message.lower()
    with pytest.raises(LibvirtFailure) as exc:
        await conn.call("defineXML", "<domain")
    assert exc.value.code == libvirt.VIR_ERR_XML_DETAIL
    # a callable works too, and the connection stays up after ordinary errors
    assert await conn.call(lambda: 40 + 2) == 42
    assert conn.connected


@pytest.mark.asyncio
async def test_call_runs_off_the_loop_thread(conn):
    loop_thread = threading.get_ident()
    threads = set()

    def blocking():
        threads.add(threading.get_ident())
        time.sleep(0.05)

    await asyncio.gather(*(conn.call(blocking) for _ in range(12)))
    assert loop_thread not in threads
    assert len(threads) <= 4          # bounded pool, not a thread per call


@pytest.mark.asyncio
async def test_unavailable_when_not_connected():
    c = LibvirtConnection(URI)
    with pytest.raises(Unavailable):
        await c.call("getHostname")
    with pytest.raises(Unavailable):
        c.raw
    await c.start()
    await c.stop()
    assert not c.connected
    with pytest.raises(Unavailable):
        await c.call("getHostname")


@pytest.mark.asyncio
async def test_lifecycle_events_full_cycle(conn):
    rec = Recorder()
    conn.add_lifecycle_listener(rec)
    u = str(uuid.uuid4())
    dom = await conn.call("defineXML", domain_xml("unit-cycle", u))
    await rec.wait_for(u, ev.DEFINED)
    await conn.call(dom.create)
    await rec.wait_for(u, ev.STARTED)
    await conn.call(dom.suspend)
    await rec.wait_for(u, ev.SUSPENDED)
    await conn.call(dom.resume)
    await rec.wait_for(u, ev.RESUMED)
    await conn.call(dom.destroy)
    _, _, _, detail = await rec.wait_for(u, ev.STOPPED)
    assert detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED
    await conn.call(dom.undefine)
    await rec.wait_for(u, ev.UNDEFINED)
    seen = [e for _, uu, e, _ in rec.events if uu == u]
    assert seen == [ev.DEFINED, ev.STARTED, ev.SUSPENDED, ev.RESUMED, ev.STOPPED, ev.UNDEFINED]
    assert all(uu == uu.lower() for _, uu, _, _ in rec.events)


@pytest.mark.asyncio
async def test_events_arrive_while_the_causing_job_still_runs(conn):
    """The libvirtaio gotcha: with stock libvirtaio an event caused from a worker
    thread waits until the loop wakes for another reason (here: the end of the
    job, 0.5 s later).  Our implementation must deliver it within milliseconds."""
    rec = Recorder()
    conn.add_lifecycle_listener(rec)
    u = str(uuid.uuid4())
    marks = {}

    def job():
        marks["start"] = time.monotonic()  # before: the event may beat defineXML's return
        dom = conn.raw.defineXML(domain_xml("unit-latency", u))
        time.sleep(0.5)
        dom.undefine()

    task = asyncio.ensure_future(conn.call(job))
    t_event, *_ = await rec.wait_for(u, ev.DEFINED, timeout=0.4)
    assert not task.done()
    assert t_event - marks["start"] < 0.2
    await task
    await rec.wait_for(u, ev.UNDEFINED)


@pytest.mark.asyncio
async def test_coroutine_and_sync_listeners(conn):
    got = []
    done = asyncio.Event()

    async def async_listener(dom_uuid, event, detail):
        await asyncio.sleep(0)
        got.append(("async", dom_uuid, event))
        done.set()

    conn.add_lifecycle_listener(lambda u_, e, d: got.append(("sync", u_, e)))
    conn.add_lifecycle_listener(async_listener)
    u = str(uuid.uuid4())
    dom = await conn.call("defineXML", domain_xml("unit-listeners", u))
    await asyncio.wait_for(done.wait(), 2)
    assert ("sync", u, ev.DEFINED) in got and ("async", u, ev.DEFINED) in got
    await conn.call(dom.undefine)


@pytest.mark.asyncio
async def test_listener_exceptions_do_not_break_dispatch(conn):
    rec = Recorder()

    def broken(*args):
        raise RuntimeError("boom")

    conn.add_lifecycle_listener(broken)
    conn.add_lifecycle_listener(rec)
    u = str(uuid.uuid4())
    dom = await conn.call("defineXML", domain_xml("unit-broken", u))
    await rec.wait_for(u, ev.DEFINED)
    await conn.call(dom.undefine)


@pytest.mark.asyncio
async def test_reconnect_after_close_callback(conn):
    states = []
    up_again = asyncio.Event()

    async def on_state(up):
        states.append(up)
        if up:
            up_again.set()

    conn.add_state_listener(on_state)
    gen = conn.generation
    old = conn.raw
    conn._on_close(old, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)   # as libvirt would
    assert not conn.connected
    with pytest.raises(Unavailable):
        await conn.call("getHostname")
    await asyncio.wait_for(up_again.wait(), 3)
    assert states == [False, True]
    assert conn.connected and conn.generation == gen + 1
    # a close callback from the old, dead connection is ignored now
    conn._on_close(old, libvirt.VIR_CONNECT_CLOSE_REASON_EOF, None)
    assert conn.connected
    # events flow on the new connection
    rec = Recorder()
    conn.add_lifecycle_listener(rec)
    u = str(uuid.uuid4())
    dom = await conn.call("defineXML", domain_xml("unit-reconnect", u))
    await rec.wait_for(u, ev.DEFINED)
    await conn.call(dom.undefine)


@pytest.mark.asyncio
async def test_start_with_unreachable_daemon_retries_in_background(tmp_path):
    sock = tmp_path / "nope-sock"
    c = LibvirtConnection(f"qemu+unix:///system?socket={sock}",
                          reconnect_min_delay=0.05, reconnect_max_delay=0.1)
    await c.start()           # does not raise
    try:
        assert not c.connected
        await asyncio.sleep(0.3)
        assert c._backoff.attempts >= 2
        assert c.last_error and "nope-sock" in c.last_error
        with pytest.raises(Unavailable):
            await c.hostname()
    finally:
        await c.stop()
    assert c._reconnect_task is None
