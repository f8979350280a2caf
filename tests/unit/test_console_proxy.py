"""The console proxy's refusals (archipelagent/console/proxy.py) with a real WebSocket client,
and where a domain's VNC server may be reached (modules/vnc.py ``vnc_endpoint``)."""
from __future__ import annotations

import asyncio
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from archipelagent.console import ConsoleConfig, ConsoleProxy, TargetRefused, TokenStore
from archipelagent.console import proxy as proxy_module
from archipelagent_modules.vnc import vnc_endpoint

VM_A = "11111111-1111-4111-8111-111111111111"
VM_B = "22222222-2222-4222-8222-222222222222"


class Upstream:
    """A loopback TCP listener standing for a VM's VNC server: says the RFB banner, echoes."""

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.connections = 0
        return self

    async def _serve(self, reader, writer):
        self.connections += 1
        writer.write(b"RFB 003.008\n")
        while data := await reader.read(100):
            writer.write(data)
        writer.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def proxy():
    upstream = await Upstream().start()
    resolved = []

    async def resolve(grant):
        resolved.append(grant)
        if grant.user == "gone@archipel.test":
            raise TargetRefused("the VM is not running")
        if grant.user == "silent@archipel.test":
            return "127.0.0.1", closed_port()
        return "127.0.0.1", upstream.port

    tokens = TokenStore(30)
    px = ConsoleProxy(ConsoleConfig(port=0), tokens, resolve)
    await px.start()
    px.resolved, px.upstream = resolved, upstream
    yield px
    await px.stop()
    upstream.server.close()


def url(px, vm, token=None):
    return f"ws://127.0.0.1:{px.port}/vnc/{vm}" + (f"?token={token}" if token else "")


async def closed_with(px, address) -> tuple[int, str]:
    async with connect(address) as ws:
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        return ws.close_code, ws.close_reason


async def test_a_valid_token_reaches_the_vnc_server_once(proxy):
    token, _ = proxy.tokens.issue("alice@archipel.test", VM_A)
    async with connect(url(proxy, VM_A, token), subprotocols=["binary"]) as ws:
        assert ws.subprotocol == "binary"
        assert await ws.recv() == b"RFB 003.008\n"
        await ws.send(b"RFB 003.008\n")
        assert await ws.recv() == b"RFB 003.008\n"
    assert await closed_with(proxy, url(proxy, VM_A, token)) == (1008, "console token already used")
    assert proxy.upstream.connections == 1


async def test_refusals_never_reach_the_vnc_server(proxy):
    token, _ = proxy.tokens.issue("alice@archipel.test", VM_A)
    assert await closed_with(proxy, url(proxy, VM_A)) == (1008, "no console token")
    assert (await closed_with(proxy, url(proxy, VM_A, "forged")))[1].startswith("unknown console token")
    assert await closed_with(proxy, url(proxy, VM_B, token)) == (1008, "console token is for another VM")
    assert await closed_with(proxy, url(proxy, VM_A, token)) == (1008, "console token already used")
    assert proxy.resolved == [] and proxy.upstream.connections == 0


async def test_an_expired_token_is_refused(proxy):
    clock = [0.0]
    proxy.tokens._clock = lambda: clock[0]
    token, _ = proxy.tokens.issue("alice@archipel.test", VM_A)
    clock[0] += 30
    assert await closed_with(proxy, url(proxy, VM_A, token)) == (1008, "console token expired")
    assert proxy.upstream.connections == 0


async def test_a_console_that_cannot_be_reached_says_why(proxy):
    token, _ = proxy.tokens.issue("gone@archipel.test", VM_A)
    assert await closed_with(proxy, url(proxy, VM_A, token)) == (1008, "the VM is not running")
    assert proxy.upstream.connections == 0


async def test_a_vnc_server_that_does_not_answer_is_said_so(proxy):
    token, _ = proxy.tokens.issue("silent@archipel.test", VM_A)
    assert await closed_with(proxy, url(proxy, VM_A, token)) == (1011, "the VM's VNC server does not answer")


async def test_text_frames_are_refused(proxy):
    token, _ = proxy.tokens.issue("alice@archipel.test", VM_A)
    async with connect(url(proxy, VM_A, token)) as ws:
        assert await ws.recv() == b"RFB 003.008\n"
        await ws.send("RFB 003.008\n")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1003, "binary frames only")


async def test_consoles_are_bounded_and_a_refused_one_keeps_its_token(proxy, monkeypatch):
    monkeypatch.setattr(proxy_module, "MAX_CONNECTIONS", 1)
    first, _ = proxy.tokens.issue("alice@archipel.test", VM_A)
    second, _ = proxy.tokens.issue("alice@archipel.test", VM_A)
    async with connect(url(proxy, VM_A, first)) as ws:
        assert await ws.recv() == b"RFB 003.008\n"
        assert await closed_with(proxy, url(proxy, VM_A, second)) == (1013, "too many consoles open on this hypervisor")
    for _ in range(100):  # the first console's task ends after its close
        if proxy.active == 0:
            break
        await asyncio.sleep(0.05)
    async with connect(url(proxy, VM_A, second)) as ws:  # not spent by the refusal
        assert await ws.recv() == b"RFB 003.008\n"


async def test_other_paths_get_404_before_any_upgrade(proxy):
    for path in ("/", "/vnc/", "/vnc/not-a-uuid", f"/vnc/{VM_A}/x", "/websockify"):
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{proxy.port}{path}"):
                pass
        assert info.value.response.status_code == 404


def domain(graphics: str) -> str:
    return f"<domain><devices>{graphics}</devices></domain>"


def test_vnc_endpoint_is_loopback_only():
    assert vnc_endpoint(domain("<graphics type='vnc' port='5901' listen='127.0.0.1'>"
                               "<listen type='address' address='127.0.0.1'/></graphics>")) == ("127.0.0.1", 5901)
    assert vnc_endpoint(domain("<graphics type='vnc' port='5902' listen='::1'/>")) == ("::1", 5902)
    for graphics, reason in (
            ("<graphics type='vnc' port='5901' listen='0.0.0.0'/>", "not on loopback"),
            ("<graphics type='vnc' port='5901' listen='127.0.0.1'><listen type='address' address='192.0.2.1'/></graphics>",
             "not on loopback"),
            ("<graphics type='vnc' port='5901'/>", "not on loopback"),  # the host's default: unknown here
            ("<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>", "no TCP port"),
            ("<graphics type='spice' port='5901' listen='127.0.0.1'/>", "no VNC display"),
            ("", "no VNC display")):
        with pytest.raises(TargetRefused, match=reason):
            vnc_endpoint(domain(graphics))


async def test_an_old_websockets_stops_the_start_with_a_clear_message(monkeypatch, tmp_path):
    """Debian bookworm's websockets 10.4 has no asyncio server: the vnc module says so (exit 2)."""
    from types import SimpleNamespace

    from archipelagent.config import ConfigError
    from archipelagent_modules import vnc

    assert proxy_module.available() is None
    monkeypatch.setattr(proxy_module, "serve", None)
    monkeypatch.setattr(proxy_module.websockets, "__version__", "10.4")
    agent = SimpleNamespace(config=SimpleNamespace(parser=None, path=tmp_path / "archipel.conf", machine_ip="auto"),
                            module_services={})
    with pytest.raises(ConfigError) as info:
        await vnc.setup(agent)
    assert str(info.value).endswith("[MODULES] vnc: the console proxy needs the Python package websockets >= 13 "
                                    "(found 10.4): install it, or set vnc = false")
    assert agent.module_services == {}
