"""One libvirt connection, driven from the asyncio event loop.

* libvirt's event loop runs on the asyncio loop (libvirtaio), so lifecycle
  events and the close callback are delivered on the loop thread.
* Blocking libvirt calls run in bounded thread pools through
  :meth:`LibvirtConnection.call`; never a thread per VM.  There are two
  lanes: a quick lane (``workers``, default 4) for the calls that answer in
  milliseconds (state, info, XML, define, lookups) and a slow lane
  (``slow_workers``, default 8: a QEMU start mostly waits, and a class of 30
  started 4 at a time took 33 s where 8 at a time take 21 s, bench_class.py)
  for the calls that can take seconds or hang
  with the guest (destroy of a QEMU stuck in I/O, screenshots and memory
  snapshots waiting on a stopped monitor, starts, resizes, migrations).  A
  call goes to the slow lane when its libvirt method is in
  :data:`SLOW_CALLS` or the caller says ``slow=True``; however many slow
  calls hang, they can never take a thread of the quick lane, so ``info``
  and presence keep working for every other VM.
* When libvirtd goes away (close callback, keepalive timeout, or a call
  failing with a connection error) the connection is marked down, state
  listeners get ``False``, and it is reopened with jittered exponential
  backoff (:class:`archipelagent.backoff.Backoff`); listeners then get
  ``True`` and must resynchronise (events were missed while down).

The libvirtaio gotcha, and the fix
----------------------------------
Stock ``libvirtaio`` assumes libvirt calls its add/update/remove handle and
timeout hooks on the loop thread.  When a blocking call runs in a worker
thread, libvirt calls those hooks *from that thread*: e.g. the remote and
test drivers queue an event and arm their dispatch timer with
``virEventUpdateTimeout(timer, 0)``, which libvirtaio turns into
``asyncio.ensure_future(...)`` from the worker thread.  That neither is
thread-safe nor wakes the selector, so the event sits there until the loop
wakes up for an unrelated reason (measured: events ~0.5-2 s late, all
arriving with the next action).  :class:`ThreadSafeAsyncIOImpl` marshals
every hook invoked off the loop thread onto the loop with
``call_soon_threadsafe`` (which writes the loop's self-pipe and wakes it),
preserving the order of the hooks, and hands out watch/timer ids
synchronously.  Events then arrive within about a millisecond.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import logging
import threading
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, NamedTuple, Union

import libvirt
import libvirtaio

from archipelagent.backoff import Backoff
from archipelagent.errors import InvalidArgument, LibvirtFailure, NotFound, Unavailable
from archipelagent.virt import events as ev
from archipelagent.virt.nodeinfo import decode_version, node_info_from_getinfo
from archipelagent.virt.states import read_states

__all__ = ["LibvirtConnection", "DomainSummary", "ThreadSafeAsyncIOImpl",
           "register_event_impl", "is_connection_error", "SLOW_CALLS"]

log = logging.getLogger(__name__)

StateListener = Callable[[bool], Union[None, Awaitable[None]]]
LifecycleListener = Callable[[str, int, int], Union[None, Awaitable[None]]]

# libvirt error codes that may mean "the daemon is gone"; confirmed with
# virConnectIsAlive() before the connection is declared lost, because QEMU
# failures are reported as VIR_ERR_INTERNAL_ERROR too.
_CONNECTION_ERROR_CODES = frozenset({
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_INTERNAL_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
})
# libvirt methods (by name) that may take seconds or hang with the guest: the slow lane.
SLOW_CALLS = frozenset({
    "create", "createWithFlags", "destroy", "destroyFlags", "screenshot",
    "snapshotCreateXML", "revertToSnapshot", "delete",
    "managedSave", "save", "restore", "coreDump", "coreDumpWithFormat",
    "blockResize", "blockCommit", "blockPull", "blockRebase", "blockCopy",
    "migrate", "migrate2", "migrate3", "migrateToURI", "migrateToURI2", "migrateToURI3",
})

_CONNECTION_ERROR_TEXTS = ("client socket is closed", "end of file while reading",
                           "cannot recv data", "cannot write data",
                           "connection reset by peer", "broken pipe")


def is_connection_error(err: libvirt.libvirtError) -> bool:
    """True when ``err`` looks like a lost connection (not proof of it)."""
    code = err.get_error_code()
    msg = (err.get_error_message() or str(err) or "").lower()
    if any(text in msg for text in _CONNECTION_ERROR_TEXTS):
        return True
    return code in _CONNECTION_ERROR_CODES


def _to_failure(err: libvirt.libvirtError) -> LibvirtFailure:
    message = err.get_error_message() or str(err) or "libvirt error"
    return LibvirtFailure(message, code=err.get_error_code())


# ---------------------------------------------------------------------------
# event loop implementation
# ---------------------------------------------------------------------------

class ThreadSafeAsyncIOImpl(libvirtaio.virEventAsyncIOImpl):
    """libvirtaio's implementation, made safe for hooks called off the loop.

    Hooks called on the loop thread run directly (after anything queued
    before them).  Hooks called from other threads are queued and applied on
    the loop, in order, woken by ``call_soon_threadsafe``.  Dispatch of a
    handle/timer first applies queued hooks and skips callbacks that were
    removed or disarmed meanwhile.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._lock = threading.Lock()
        self._queue: collections.deque = collections.deque()
        self._wakeup_pending = False
        self.deferred_hooks = 0      # statistics: hooks that came off-loop

    # -- plumbing ----------------------------------------------------------
    def _on_loop(self) -> bool:
        return asyncio._get_running_loop() is self.loop

    def _defer(self, fn: Callable, *args: Any) -> None:
        with self._lock:
            self._queue.append((fn, args))
            self.deferred_hooks += 1
            if self._wakeup_pending:
                return
            self._wakeup_pending = True
        try:
            self.loop.call_soon_threadsafe(self._run_queue)
        except RuntimeError:  # loop closed: nothing will ever watch this
            log.debug("libvirt event hook after the loop closed: dropped")
            with self._lock:
                self._queue.clear()
                self._wakeup_pending = False

    def _run_queue(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._wakeup_pending = False
                    return
                fn, args = self._queue.popleft()
            try:
                fn(*args)
            except Exception:  # never let a hook break the loop
                log.exception("libvirt event hook %r failed", fn)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move to another loop (only when the old one no longer runs: tests)."""
        if loop is self.loop:
            return
        if self.loop.is_running():
            raise RuntimeError("the libvirt event implementation is bound to "
                               "another running event loop")
        old = self.loop
        self.loop = loop
        self._run_queue()
        for descriptor in list(self.descriptors.values()):
            descriptor.update()
        for callback in list(self.callbacks.values()):
            if isinstance(callback, libvirtaio.TimeoutCallback):
                callback._task = None
                timeout, callback.timeout = callback.timeout, -1
                callback.update(timeout=timeout)
        log.debug("libvirt event implementation moved from %r to %r", old, loop)

    # -- guarded dispatch --------------------------------------------------
    def _guard_handle(self, cb: Callable) -> Callable:
        def dispatch(watch: int, fd: int, event: int, opaque: Any) -> None:
            self._run_queue()
            callback = self.callbacks.get(watch)
            if callback is None or not (callback.event & event):
                return
            cb(watch, fd, event, opaque)
        return dispatch

    def _guard_timeout(self, cb: Callable) -> Callable:
        def dispatch(timer: int, opaque: Any) -> None:
            self._run_queue()
            callback = self.callbacks.get(timer)
            if callback is None or callback.timeout < 0:
                return
            cb(timer, opaque)
        return dispatch

    # -- the six hooks -----------------------------------------------------
    def _add_handle(self, fd: int, event: int, cb: Callable, opaque: Any) -> int:
        cb = self._guard_handle(cb)
        if self._on_loop():
            self._run_queue()
            return super()._add_handle(fd, event, cb, opaque)
        callback = libvirtaio.FDCallback(self, cb, opaque, descriptor=None, event=event)
        self._defer(self._install_handle, callback, fd)
        return callback.iden

    def _install_handle(self, callback: libvirtaio.FDCallback, fd: int) -> None:
        callback.descriptor = self.descriptors[fd]
        self.callbacks[callback.iden] = callback
        callback.descriptor.add_handle(callback)
        self._pending_inc()

    def _update_handle(self, watch: int, event: int) -> None:
        if self._on_loop():
            self._run_queue()
            super()._update_handle(watch, event)
        else:
            self._defer(self._safe_update_handle, watch, event)

    def _safe_update_handle(self, watch: int, event: int) -> None:
        if watch in self.callbacks:
            super()._update_handle(watch, event)

    def _remove_handle(self, watch: int) -> int:
        if self._on_loop():
            self._run_queue()
            return super()._remove_handle(watch)
        self._defer(super()._remove_handle, watch)
        return 0

    def _add_timeout(self, timeout: int, cb: Callable, opaque: Any) -> int:
        cb = self._guard_timeout(cb)
        if self._on_loop():
            self._run_queue()
            return super()._add_timeout(timeout, cb, opaque)
        callback = libvirtaio.TimeoutCallback(self, cb, opaque)
        self._defer(self._install_timeout, callback, timeout)
        return callback.iden

    def _install_timeout(self, callback: libvirtaio.TimeoutCallback, timeout: int) -> None:
        self.callbacks[callback.iden] = callback
        callback.update(timeout=timeout)
        self._pending_inc()

    def _update_timeout(self, timer: int, timeout: int) -> None:
        if self._on_loop():
            self._run_queue()
            super()._update_timeout(timer, timeout)
        else:
            self._defer(self._safe_update_timeout, timer, timeout)

    def _safe_update_timeout(self, timer: int, timeout: int) -> None:
        if timer in self.callbacks:
            super()._update_timeout(timer, timeout)

    def _remove_timeout(self, timer: int) -> int:
        if self._on_loop():
            self._run_queue()
            return super()._remove_timeout(timer)
        self._defer(super()._remove_timeout, timer)
        return 0


_impl_lock = threading.Lock()
_impl: ThreadSafeAsyncIOImpl | None = None


def _silence_libvirt(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error on stderr by default; we raise them instead."""


def register_event_impl(loop: asyncio.AbstractEventLoop | None = None) -> ThreadSafeAsyncIOImpl:
    """Register the (thread-safe) libvirtaio implementation, once per process.

    Must run before the first connection is opened.  Later calls return the
    same implementation (moved to ``loop`` if the previous loop has stopped).
    """
    global _impl
    loop = loop or asyncio.get_running_loop()
    with _impl_lock:
        if _impl is None:
            libvirt.registerErrorHandler(_silence_libvirt, None)
            _impl = ThreadSafeAsyncIOImpl(loop).register()
            libvirtaio._current_impl = _impl   # keep getCurrentImpl() truthful
        else:
            _impl.attach(loop)
        return _impl


# ---------------------------------------------------------------------------
# the connection
# ---------------------------------------------------------------------------

class DomainSummary(NamedTuple):
    uuid: str          # lowercase
    name: str
    state: int         # virDomainState
    persistent: bool


class LibvirtConnection:
    """An auto-reconnecting libvirt connection for asyncio code.

    ``start()`` never fails because libvirtd is down: it tries once, and if
    that fails keeps retrying in the background (``connected`` stays False;
    use :meth:`wait_connected`).  ``stop()`` does not notify state listeners.
    """

    def __init__(self, uri: str, *, loop: asyncio.AbstractEventLoop | None = None,
                 reconnect_min_delay: float = 1.0, reconnect_max_delay: float = 30.0,
                 workers: int = 4, slow_workers: int = 8,
                 keepalive: tuple[int, int] = (5, 3)) -> None:
        self.uri = uri
        self._loop = loop
        self._backoff = Backoff(reconnect_min_delay, reconnect_max_delay)
        self._workers = workers
        self._slow_workers = slow_workers
        self._keepalive = keepalive
        self._executor: ThreadPoolExecutor | None = None       # quick lane
        self._slow_executor: ThreadPoolExecutor | None = None  # slow lane
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self._connected = False
        self._stopping = True
        self._generation = 0
        self._capabilities: tuple[int, str] | None = None
        self._reconnect_task: asyncio.Task | None = None
        self._connected_event: asyncio.Event | None = None
        self._state_listeners: list[StateListener] = []
        self._lifecycle_listeners: list[LifecycleListener] = []
        self._tasks: set[asyncio.Task] = set()
        self.last_error: str | None = None

    # -- properties --------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def generation(self) -> int:
        """Increments at every (re)connection; virDomain objects from an older
        generation are stale and must be looked up again."""
        return self._generation

    @property
    def raw(self) -> libvirt.virConnect:
        """The virConnect, for code on the loop thread that needs it directly
        (only non-blocking calls there, please).  Unavailable when down."""
        if not self._connected or self._conn is None:
            raise Unavailable("libvirt connection lost")
        return self._conn

    # -- listeners ---------------------------------------------------------
    def add_state_listener(self, cb: StateListener) -> None:
        self._state_listeners.append(cb)

    def remove_state_listener(self, cb: StateListener) -> None:
        self._state_listeners.remove(cb)

    def add_lifecycle_listener(self, cb: LifecycleListener) -> None:
        self._lifecycle_listeners.append(cb)

    def remove_lifecycle_listener(self, cb: LifecycleListener) -> None:
        self._lifecycle_listeners.remove(cb)

    def _invoke(self, cb: Callable, *args: Any) -> None:
        try:
            result = cb(*args)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result, loop=self._loop)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
        except Exception:
            log.exception("libvirt listener %r failed", cb)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("libvirt listener task failed", exc_info=task.exception())

    def _notify_state(self, up: bool) -> None:
        for cb in list(self._state_listeners):
            self._invoke(cb, up)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if not self._stopping:
            return
        self._loop = self._loop or asyncio.get_running_loop()
        register_event_impl(self._loop)
        self._stopping = False
        self._connected_event = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self._workers,
                                            thread_name_prefix="libvirt")
        self._slow_executor = ThreadPoolExecutor(max_workers=self._slow_workers,
                                                 thread_name_prefix="libvirt-slow")
        try:
            await self._open()
        except Exception as exc:
            log.warning("libvirt %s unreachable (%s); retrying in background", self.uri, exc)
            self._schedule_reconnect()

    async def wait_connected(self, timeout: float | None = None) -> None:
        if self._connected_event is None:
            raise RuntimeError("start() first")
        await asyncio.wait_for(self._connected_event.wait(), timeout)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            try:
                await self._reconnect_task
            except (asyncio.CancelledError, Exception):
                pass
            self._reconnect_task = None
        conn, ids = self._conn, self._callback_ids
        self._conn, self._callback_ids, self._connected = None, [], False
        if self._connected_event is not None:
            self._connected_event.clear()
        executor, self._executor = self._executor, None
        slow, self._slow_executor = self._slow_executor, None
        if conn is not None and executor is not None:
            await self._loop.run_in_executor(executor, self._close_blocking, conn, ids, True)
        if executor is not None:
            await self._loop.run_in_executor(None, executor.shutdown, True)
        if slow is not None:  # a call hung with its guest must not hold the stop
            slow.shutdown(wait=False, cancel_futures=True)
        for task in list(self._tasks):
            task.cancel()
        # let libvirtaio run the free callbacks the close scheduled
        for _ in range(3):
            await asyncio.sleep(0)

    # -- open / close (blocking parts run in the pool) ----------------------
    def _open_blocking(self) -> tuple[libvirt.virConnect, list[int]]:
        conn = libvirt.open(self.uri)
        ids: list[int] = []
        try:
            try:
                conn.registerCloseCallback(self._on_close, None)
            except libvirt.libvirtError as err:   # local drivers (test://)
                log.debug("no close callback on %s: %s", self.uri, err)
            if self._keepalive:
                try:
                    conn.setKeepAlive(*self._keepalive)
                except libvirt.libvirtError as err:
                    log.debug("no keepalive on %s: %s", self.uri, err)
            ids.append(conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None))
        except BaseException:
            self._close_blocking(conn, ids, True)
            raise
        return conn, ids

    @staticmethod
    def _close_blocking(conn: libvirt.virConnect, ids: list[int], deregister: bool) -> None:
        if deregister:
            for cid in ids:
                try:
                    conn.domainEventDeregisterAny(cid)
                except libvirt.libvirtError:
                    pass
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    async def _open(self) -> None:
        conn, ids = await self._loop.run_in_executor(self._executor, self._open_blocking)
        if self._stopping:
            await self._loop.run_in_executor(self._executor, self._close_blocking, conn, ids, True)
            raise asyncio.CancelledError()
        self._conn, self._callback_ids = conn, ids
        self._generation += 1
        self._connected = True
        self._backoff.reset()
        self.last_error = None
        self._connected_event.set()
        log.info("libvirt connected to %s (generation %d)", self.uri, self._generation)
        self._notify_state(True)

    def _schedule_reconnect(self) -> None:
        if self._stopping or (self._reconnect_task and not self._reconnect_task.done()):
            return
        self._reconnect_task = self._loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        while not self._stopping:
            delay = self._backoff.next()
            log.info("libvirt: reconnecting to %s in %.2f s", self.uri, delay)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._open()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = str(exc)
                log.warning("libvirt: reconnect to %s failed: %s", self.uri, exc)

    def _lost(self, conn: libvirt.virConnect | None, reason: str) -> None:
        """Declare ``conn`` dead (loop thread only); ignores stale connections."""
        if self._stopping or conn is None or conn is not self._conn:
            return
        log.warning("libvirt connection to %s lost: %s", self.uri, reason)
        self.last_error = reason
        ids = self._callback_ids
        self._conn, self._callback_ids, self._connected = None, [], False
        self._connected_event.clear()
        self._notify_state(False)
        if self._executor is not None:
            # the daemon is gone: no deregistration RPCs, just drop our ref
            self._loop.run_in_executor(self._executor, self._close_blocking, conn, ids, False)
        self._schedule_reconnect()

    # -- libvirt callbacks (normally on the loop thread) --------------------
    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque: Any) -> None:
        reasons = {0: "error", 1: "end of file", 2: "keepalive timeout", 3: "client closed"}
        text = f"close callback: {reasons.get(reason, reason)}"
        if self._loop is None or self._loop.is_closed():
            return
        if asyncio._get_running_loop() is self._loop:
            self._lost(conn, text)
        else:
            self._loop.call_soon_threadsafe(self._lost, conn, text)

    def _on_lifecycle(self, conn: libvirt.virConnect, dom: libvirt.virDomain,
                      event: int, detail: int, _opaque: Any) -> None:
        try:
            uuid = dom.UUIDString().lower()
        except libvirt.libvirtError:
            return
        if asyncio._get_running_loop() is not self._loop:
            self._loop.call_soon_threadsafe(self._dispatch_lifecycle, uuid, event, detail)
        else:
            self._dispatch_lifecycle(uuid, event, detail)

    def _dispatch_lifecycle(self, uuid: str, event: int, detail: int) -> None:
        log.debug("libvirt event %s %s", uuid, ev.describe(event, detail))
        for cb in list(self._lifecycle_listeners):
            self._invoke(cb, uuid, event, detail)

    # -- calls -------------------------------------------------------------
    async def call(self, fn: str | Callable, *args: Any, slow: bool = False, **kwargs: Any) -> Any:
        """Run a blocking libvirt call in the pool.

        ``fn`` is a virConnect method name (``"defineXML"``) or any callable
        (``dom.create``).  It runs in the slow lane when ``slow`` is true or
        its name is in :data:`SLOW_CALLS`, else in the quick lane (see the
        module's docstring).  libvirt errors become ``LibvirtFailure`` (with
        libvirt's code); a call that fails because the daemon is gone marks
        the connection lost and raises ``Unavailable``, as does any call made
        while disconnected.
        """
        conn = self._conn
        if not self._connected or conn is None or self._executor is None:
            raise Unavailable("libvirt connection lost")
        target = getattr(conn, fn) if isinstance(fn, str) else fn
        lane = self._executor
        if (slow or getattr(target, "__name__", None) in SLOW_CALLS) and self._slow_executor is not None:
            lane = self._slow_executor
        try:
            return await self._loop.run_in_executor(lane, functools.partial(target, *args, **kwargs))
        except libvirt.libvirtError as err:
            if is_connection_error(err):
                alive = await self._is_alive(conn)
                if not alive:
                    self._lost(conn, err.get_error_message() or str(err))
                    raise Unavailable("libvirt connection lost") from err
                if conn is not self._conn or "client socket is closed" in str(err).lower():
                    raise Unavailable("stale libvirt handle (connection was "
                                      "re-established); retry") from err
            raise _to_failure(err) from err
        except RuntimeError as err:   # executor shut down under us (stop())
            if self._executor is None or self._slow_executor is None:
                raise Unavailable("libvirt connection closed") from err
            raise

    async def _is_alive(self, conn: libvirt.virConnect) -> bool:
        try:
            return bool(await self._loop.run_in_executor(self._executor, conn.isAlive))
        except Exception:
            return False

    # -- helpers -----------------------------------------------------------
    async def capabilities(self) -> str:
        """Host capabilities XML, read once per connection.

        They describe the host and the hypervisor binaries, which only change
        with a libvirtd restart — and a restart is a new connection generation.
        """
        cached = self._capabilities
        if cached is not None and cached[0] == self._generation and self._connected:
            return cached[1]
        xml = await self.call("getCapabilities")
        self._capabilities = (self._generation, xml)
        return xml

    async def node_info(self) -> dict[str, Any]:
        """Node facts; memory in KiB (``memory_kib``), see nodeinfo.py."""
        def blocking(conn: libvirt.virConnect) -> dict[str, Any]:
            info = conn.getInfo()
            total = None
            try:
                total = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS).get("total")
            except libvirt.libvirtError:
                pass
            return node_info_from_getinfo(info, total)
        return await self.call(blocking, self._require())

    async def hostname(self) -> str:
        return await self.call("getHostname")

    async def version(self) -> dict[str, str]:
        """``{"libvirt": "9.0.0", "hypervisor": "7.2.0", "driver": "QEMU"}``
        (libvirt = the daemon's library version when the driver reports it)."""
        def blocking(conn: libvirt.virConnect) -> dict[str, str]:
            try:
                lib = conn.getLibVersion()
            except libvirt.libvirtError:
                lib = libvirt.getVersion()
            return {"libvirt": decode_version(lib),
                    "hypervisor": decode_version(conn.getVersion()),
                    "driver": conn.getType()}
        return await self.call(blocking, self._require())

    async def list_domains(self) -> list[DomainSummary]:
        """All domains (active and inactive) in three RPCs, not three per VM."""
        def blocking(conn: libvirt.virConnect) -> list[DomainSummary]:
            doms = conn.listAllDomains(0)
            persistent = {d.UUIDString() for d in
                          conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)}
            states: dict[str, int] = {}
            try:
                for d, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE):
                    if "state.state" in stats:
                        states[d.UUIDString()] = stats["state.state"]
            except libvirt.libvirtError:
                pass
            out = []
            for d in doms:
                u = d.UUIDString()
                state = states.get(u)
                if state is None:
                    try:
                        state = d.state()[0]
                    except libvirt.libvirtError as err:
                        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                            continue      # vanished meanwhile
                        raise
                out.append(DomainSummary(u.lower(), d.name(), int(state), u in persistent))
            return out
        return await self.call(blocking, self._require())

    async def domain_states(self, uuids: set[str]) -> dict[str, tuple[int, int] | None]:
        """(state, reason) of each domain of ``uuids`` (lower case), None if it does not exist;
        one RPC for a large set (virt/states.py, which gathers the requests)."""
        return await self.call(read_states, self._require(), uuids)

    async def lookup(self, uuid: str) -> libvirt.virDomain:
        """The virDomain with this UUID; NotFound if there is none."""
        try:
            canonical = str(uuidlib.UUID(str(uuid)))
        except ValueError:
            raise InvalidArgument("uuid", f"not a UUID: {uuid!r}") from None
        try:
            return await self.call("lookupByUUIDString", canonical)
        except LibvirtFailure as err:
            if err.code == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFound(f"no domain with uuid {canonical}") from err
            raise

    def _require(self) -> libvirt.virConnect:
        if not self._connected or self._conn is None:
            raise Unavailable("libvirt connection lost")
        return self._conn
