"""The console proxy: noVNC's WebSocket in, the VM's loopback VNC server out.

Runs on the agent's event loop with the ``websockets`` library (the WebSocket
protocol, TLS, close frames are its job): one asyncio task per connection, no
thread.  A connection is accepted only at ``/vnc/<vm uuid>?token=<token>`` with
a token the store still holds for that VM; the token is spent at once, then
``resolve`` (the VNC module's) says where the VM's VNC server listens — only
ever a loopback address — and the bytes are piped both ways until either side
closes.  Every refusal is a close frame (1008, policy violation) whose reason
says why; the VNC server is never contacted before the token is accepted.
"""
from __future__ import annotations

import asyncio
import logging
import re
import ssl
from http import HTTPStatus
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import websockets
from websockets.exceptions import ConnectionClosed

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
except ImportError:  # websockets < 13 (Debian bookworm ships 10.4): the vnc module refuses to start
    serve = None

from .config import ConsoleConfig
from .tokens import Grant, TokenRefused, TokenStore

log = logging.getLogger(__name__)

PATH = re.compile(r"^/vnc/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
MAX_CONNECTIONS = 256       # open consoles per agent
MAX_MESSAGE = 1 << 20       # a VNC client's messages are small; noVNC's largest is a clipboard text
CONNECT_TIMEOUT = 5.0       # to the VM's VNC server on loopback
CHUNK = 1 << 16
# close codes (RFC 6455)
POLICY_VIOLATION, UNSUPPORTED_DATA, INTERNAL_ERROR, TRY_AGAIN_LATER = 1008, 1003, 1011, 1013


def available() -> str | None:
    """None when this ``websockets`` can run the proxy, else why not."""
    if serve is None:
        return f"the console proxy needs the Python package websockets >= 13 (found {websockets.__version__})"
    return None


class TargetRefused(Exception):
    """The token was good but the console cannot be reached (VM stopped, gone, no VNC…)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Resolver = Callable[[Grant], Awaitable[tuple[str, int]]]


def console_path(vm_uuid: str) -> str:
    """The URL path of a VM's console (the token goes in the ``token`` query parameter)."""
    return f"/vnc/{vm_uuid}"


class ConsoleProxy:
    """One WebSocket server per agent; ``start()``/``stop()`` from the VNC module."""

    def __init__(self, config: ConsoleConfig, tokens: TokenStore, resolve: Resolver):
        self.config = config
        self.tokens = tokens
        self._resolve = resolve
        self._server: Server | None = None
        self.port: int | None = None  # the port bound (config 0: chosen by the system)
        self.active = 0

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen; ``OSError`` (port in use…) is the caller's to report."""
        context = None
        if self.config.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.certfile, self.config.keyfile)
        self._server = await serve(
            self._handle, self.config.address, self.config.port, ssl=context,
            select_subprotocol=_binary_if_asked, process_request=self._check_path,
            max_size=MAX_MESSAGE, compression=None, server_header=None)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("console proxy listening on %s:%s (%s)", self.config.address, self.port,
                 "TLS" if context else "no TLS")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # open consoles get a 1001 close frame
            await self._server.wait_closed()
            self._server = None

    @staticmethod
    def _check_path(connection: ServerConnection, request):
        """Anything but a console URL is answered 404 before the upgrade."""
        if not PATH.match(urlsplit(request.path).path):
            return connection.respond(HTTPStatus.NOT_FOUND, "not a console URL\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        url = urlsplit(ws.request.path)
        vm = PATH.match(url.path).group(1)
        peer = _peer(ws)
        token = (parse_qs(url.query).get("token") or [None])[0]
        if self.active >= MAX_CONNECTIONS:  # before the token is spent: the user may retry with it
            await ws.close(TRY_AGAIN_LATER, "too many consoles open on this hypervisor")
            return
        try:
            grant = self.tokens.consume(token, vm)
        except TokenRefused as exc:
            log.info("console: refused a connection to %s from %s: %s", vm, peer, exc.reason)
            await ws.close(POLICY_VIOLATION, exc.reason)
            return
        self.active += 1
        try:
            await self._serve(ws, grant, peer)
        finally:
            self.active -= 1

    async def _serve(self, ws: ServerConnection, grant: Grant, peer: str) -> None:
        try:
            host, port = await self._resolve(grant)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        except TargetRefused as exc:
            log.info("console: %s on %s refused: %s", grant.user, grant.vm, exc.reason)
            await ws.close(POLICY_VIOLATION, exc.reason[:120])
            return
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("console: %s: cannot reach the VNC server: %s", grant.vm, exc)
            await ws.close(INTERNAL_ERROR, "the VM's VNC server does not answer")
            return
        log.info("console: %s opened the console of %s from %s", grant.user, grant.vm, peer)
        try:
            await _pipe(ws, reader, writer)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            await ws.close()
            log.info("console: %s closed the console of %s", grant.user, grant.vm)


async def _pipe(ws: ServerConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until one side ends; then the other direction is cancelled."""
    async def upstream():
        async for message in ws:
            if isinstance(message, str):  # RFB is binary; a text frame is a confused client
                await ws.close(UNSUPPORTED_DATA, "binary frames only")
                return
            writer.write(message)
            await writer.drain()

    async def downstream():
        while data := await reader.read(CHUNK):
            await ws.send(data)

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, (ConnectionClosed, OSError, asyncio.CancelledError)):
            log.warning("console: pipe ended by %r", result)


def _binary_if_asked(_connection, offered):
    """noVNC 1.7 offers no subprotocol; older clients and websockify's offer ``binary``."""
    return "binary" if "binary" in offered else None


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
