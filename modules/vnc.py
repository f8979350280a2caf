"""``archipel:virtualmachine:vnc``: the VM's console in the browser (feature module ``vnc``).

``display`` answers Archipel's shape ``<display type port proxy host onlyssl
supportssl/>`` plus what a token-guarded proxy needs: ``token`` (one use,
bound to the asking user and this VM), ``path`` (``/vnc/<uuid>``; the URL is
``ws[s]://<host>:<proxy><path>?token=<token>``, also given whole as ``url``)
and ``expires`` (UTC).  Permission ``vnc_display``; chat ``vnc``/``screen``/
``console``.  The WebSocket proxy (``archipelagent/console/``) runs in this
agent, for this hypervisor's VMs only, and reaches a VNC server only on a
loopback address — the definition policy makes every user definition listen
on 127.0.0.1, and a domain that listens elsewhere (adopted by ``manage``) is
refused here rather than exposed.

Archipel's websocketvncstart/stop pushes are not sent: the proxy always runs.
"""
from __future__ import annotations

import datetime
import ipaddress
import logging
import xml.etree.ElementTree as ET

from archipelagent.commands import CommandSet, element
from archipelagent.console import ConsoleProxy, TargetRefused, TokenStore, read_config
from archipelagent.config import ConfigError
from archipelagent.console.proxy import available as proxy_available, console_path
from archipelagent.commands.dispatch import TooManyRequests
from archipelagent.errors import Conflict, NotFound, Unavailable

log = logging.getLogger(__name__)

NS = "archipel:virtualmachine:vnc"
SERVICE = "vnc"

commands = CommandSet()


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def vnc_endpoint(domain_xml: str) -> tuple[str, int]:
    """Where a running domain's VNC server listens, from libvirt's live XML.

    Only a loopback address is ever returned: anything else is a
    :class:`TargetRefused` (the console must not be exposed by a listen address).
    """
    root = ET.fromstring(domain_xml)
    graphics = root.find("devices/graphics[@type='vnc']")
    if graphics is None:
        raise TargetRefused("this VM has no VNC display")
    port = int(graphics.get("port") or -1)
    if port <= 0:
        raise TargetRefused("this VM's VNC display has no TCP port (not running, or a socket)")
    addresses = [graphics.get("listen")] + [el.get("address") for el in graphics.findall("listen")
                                             if el.get("type", "address") == "address"]
    addresses = [a for a in addresses if a]
    if not addresses or not all(_loopback(a) for a in addresses):
        raise TargetRefused(f"this VM's VNC display listens on {', '.join(addresses) or 'the host default'}, "
                            "not on loopback: refused")
    host = addresses[0].strip("[]")
    return ("127.0.0.1" if host.lower() == "localhost" else host), port


class ConsoleService:
    """The module's state: the token store and the proxy (``agent.module_services['vnc']``)."""

    def __init__(self, agent, config):
        self.agent = agent
        self.config = config
        self.tokens = TokenStore(config.token_lifetime)
        self.proxy = ConsoleProxy(config, self.tokens, self.resolve)

    async def endpoint(self, entity) -> tuple[str, int]:
        dom = await entity.domain()
        if not await self.agent.libvirt.call(dom.isActive):
            raise TargetRefused("the VM is not running")
        return vnc_endpoint(await self.agent.libvirt.call(dom.XMLDesc, 0))

    async def resolve(self, grant) -> tuple[str, int]:
        """For the proxy: the VM is still here, its user still holds ``vnc_display``, and where VNC is."""
        entity = self.agent.vms.entities.get(grant.vm)
        if entity is None:
            raise TargetRefused("this VM is not on this hypervisor")
        if entity.migrating:
            raise TargetRefused("this VM is migrating")
        if not await self.agent.permissions.check(entity.jid, entity.kind, grant.user, "vnc_display"):
            raise TargetRefused("vnc_display was revoked")
        try:
            return await self.endpoint(entity)
        except (NotFound, Unavailable) as exc:
            raise TargetRefused(exc.message) from None


def service(agent) -> ConsoleService:
    found = agent.module_services.get(SERVICE)
    if found is None:
        raise Unavailable("the vnc module is not set up")
    return found


async def setup(agent) -> None:
    cfg = read_config(agent.config)  # ConfigError stops the start, naming the key
    missing = proxy_available()
    if missing:
        raise ConfigError(agent.config.path, "MODULES", "vnc", f"{missing}: install it, or set vnc = false")
    svc = ConsoleService(agent, cfg)
    agent.module_services[SERVICE] = svc
    try:
        await svc.proxy.start()
    except OSError as exc:  # like [METRICS]: a port in use is logged, the agent serves on
        log.error("console proxy cannot listen on %s:%s: %s; display answers -48 until a restart",
                  cfg.address, cfg.port, exc.strerror or exc)


async def teardown(agent) -> None:
    svc = agent.module_services.pop(SERVICE, None)
    if svc is not None:
        await svc.proxy.stop()


def _render(payload) -> str:
    a = payload[0].attrib
    return (f"Console: {a['url']}\n(open it with noVNC; valid once, until {a['expires']}; "
            "the web client's VM page does this for you)")


@commands.command(namespace=NS, action="display", permission="vnc_display", kinds=("vm",),
                  chat=("vnc", "screen", "console"), chat_render=_render,
                  help="a one-time token and the URL of this VM's console (noVNC over WebSocket)",
                  permission_description="open the VM's console in a browser (VNC)")
async def display(ctx):
    svc = service(ctx.agent)
    if not svc.proxy.running:
        raise Unavailable("the console proxy is not running on this hypervisor (see the agent log)")
    try:  # the proxy reads the address again at connection time: the VM may restart in between
        _host, port = await svc.endpoint(ctx.entity)
    except TargetRefused as exc:
        raise Conflict(exc.reason) from None
    try:
        token, grant = svc.tokens.issue(ctx.sender_bare, ctx.entity.uuid)
    except OverflowError as exc:
        raise TooManyRequests(str(exc)) from None
    cfg = svc.config
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=cfg.token_lifetime)
    path = console_path(ctx.entity.uuid)
    scheme = "wss" if cfg.tls else "ws"
    host_in_url = f"[{cfg.public_host}]" if ":" in cfg.public_host else cfg.public_host
    return element("display", {
        "type": "vnc", "port": port, "proxy": svc.proxy.port, "host": cfg.public_host,
        "onlyssl": str(cfg.tls), "supportssl": str(cfg.tls),
        "token": token, "path": path, "expires": expires.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "url": f"{scheme}://{host_in_url}:{svc.proxy.port}{path}?token={token}",
    })
