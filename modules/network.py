"""``archipel:hypervisor:network``: libvirt networks, class switches and network rights.

Archipel's wire shapes (protocol reference §2.4): on the hypervisor ``define``
(child ``<network>``, ``autostart``), ``undefine``/``create``/``destroy``
(``uuid``: a network's UUID or name), ``get`` (``<activedNetworks>`` +
``<unactivedNetworks>`` holding libvirt ``<network autostart>``), ``bridges``
(``<bridge name type/>``), ``getnames`` (``<network name/>``), ``getnics``
(``<nic name/>``); on a VM ``getnames``, ``bridges``, ``getnics``,
``getnwfilters`` (``<filter name/>``).  Pushes ``network`` defined/undefined/
created/destroyed.  Permissions are ``network_<action>`` on both kinds —
Archipel created only getnames and bridges on a VM, so getnics/getnwfilters
were denied to everyone but admins; here each action has its own.

Beyond Archipel: ``define scope='class'`` makes a class network spanning every
hypervisor (VXLAN, DHCP on the defining one: ``archipelagent/networks``), and
``grant``/``revoke``/``grants`` manage who may ``use`` or ``manage`` a network.
Acting on one network needs ``manage`` on it besides the hypervisor's
permission (tenancy); listings show a non-admin only the networks they may use.
"""
from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
import xml.etree.ElementTree as ET

from archipelagent.commands import Arg, CommandSet, element
from archipelagent.errors import InvalidArgument, LibvirtFailure
from archipelagent.networks.catalogue import CLASS, LOCAL
from archipelagent.networks.service import (KIND, MANAGE, NETWORK_PERMISSIONS, RIGHTS, TARGET_TYPES,
                                            NetworkService, read_config)
from archipelagent.permissions.store import ROLE_GROUP, ROLE_USER
from archipelagent.virt.policy import NIC_FILTER

log = logging.getLogger(__name__)

NS = "archipel:hypervisor:network"
PUSH = "network"
NAME = "network"  # this module's name ([MODULES] network = false turns it off)

commands = CommandSet()


def _cmd(action: str, kinds=("hypervisor",), **kw):
    return commands.command(namespace=NS, action=action, permission=f"network_{action}", kinds=kinds, **kw)


def service(ctx) -> NetworkService:
    return ctx.agent.module_services[NAME]


async def setup(agent) -> None:
    svc = NetworkService(agent, read_config(agent.config))
    agent.module_services[NAME] = svc
    for permission in NETWORK_PERMISSIONS:
        agent.permissions.declare(KIND, permission)
    agent.libvirt.add_state_listener(lambda up: up and agent.spawn(_sync(svc), name="network-sync"))
    agent.spawn(_sync_every(svc, SYNC_INTERVAL), name="network-sync-timer")


SYNC_INTERVAL = 30.0  # s: a class network defined or undefined elsewhere reaches this hypervisor at the latest then


async def _sync(svc: NetworkService) -> None:
    try:
        await svc.sync()
    except Exception as exc:  # noqa: BLE001 - retried at the next command, reconnection or tick
        log.warning("network sync failed: %s", exc)


async def _sync_every(svc: NetworkService, interval: float) -> None:
    """Besides each network command and VM definition: the catalogue is followed on a timer."""
    while True:
        await asyncio.sleep(interval)
        if svc.agent.libvirt.connected:
            await _sync(svc)


async def _push(ctx, change: str, name: str) -> None:
    try:
        await ctx.entity.push(PUSH, change, [element("network", {"name": name})])
    except Exception as exc:  # noqa: BLE001 - a push never fails the command
        log.warning("network push %s failed: %s", change, exc)


def _plain(el: ET.Element) -> str:
    """The ``<network>`` child without the query's inherited namespace (as ``vms.plain_xml``)."""
    from archipelagent.hypervisor.vms import plain_xml
    return plain_xml(el)


async def _named(ctx, uuid: str):
    """The libvirt network a request names (UUID or name), once ``manage`` on it is checked."""
    svc = service(ctx)
    try:
        net = await svc.lv("networkLookupByUUIDString", str(uuidlib.UUID(uuid)))
    except (ValueError, LibvirtFailure):  # not a UUID, or no such UUID: a name
        net = await svc.lookup(uuid)
    name = await svc.lv(net.name)
    if not await svc.is_admin(ctx.sender_bare):
        await svc.require(ctx.sender_bare, name, MANAGE, ctx.command.action)
    return svc, net, name


async def _visible_networks(ctx):
    """(name, virNetwork) the sender may use — on a VM, those its owner may use too."""
    svc = service(ctx)
    visible = await svc.visible(ctx.sender_bare)  # syncs the catalogue first
    owner = getattr(getattr(ctx.entity, "record", None), "owner", None)
    if owner and ctx.entity.kind == "vm":
        for_owner = await svc.visible(owner)
        if for_owner is not None:
            visible = for_owner if visible is None else visible & for_owner
    nets = await svc.lv("listAllNetworks", 0)
    out = []
    for net in nets:
        name = await svc.lv(net.name)
        if visible is None or name in visible:
            out.append((name, net))
    return sorted(out, key=lambda pair: pair[0])


# ---------------------------------------------------------------- hypervisor
@_cmd("define", args=(Arg("network", source="element", help="libvirt <network> XML"),
                      Arg("autostart", required=False, default="0", choices=("0", "1")),
                      Arg("scope", required=False, default=LOCAL, choices=(LOCAL, CLASS),
                          help="class: one L2 segment on every hypervisor (VXLAN), DHCP here")),
      help="define a libvirt network (a non-admin's passes the network policy; the definer owns it)")
async def define(ctx, network, autostart, scope):
    if network is None:
        raise InvalidArgument("network", "a <network> element is needed")
    record = await service(ctx).define(ctx.sender_bare, _plain(network), scope=scope, autostart=autostart == "1")
    await _push(ctx, "defined", record.name)
    return element("network", {"name": record.name, "scope": record.scope,
                               **({"vni": str(record.vni), "bridge": record.bridge} if record.vni else {})})


@_cmd("undefine", args=(Arg("uuid", help="the network's UUID or name"),), chat=("undefine network",),
      help="stop and undefine a network (needs 'manage' on it)")
async def undefine(ctx, uuid):
    svc, _net, name = await _named(ctx, uuid)
    await svc.undefine(name)
    await _push(ctx, "undefined", name)


@_cmd("create", args=(Arg("uuid", help="the network's UUID or name"),), chat=("create network", "start network"),
      help="start a network (needs 'manage' on it)")
async def create(ctx, uuid):
    svc, net, name = await _named(ctx, uuid)
    if not await svc.lv(net.isActive):
        await svc.lv(net.create)
    await _push(ctx, "created", name)


@_cmd("destroy", args=(Arg("uuid", help="the network's UUID or name"),), chat=("destroy network", "stop network"),
      help="stop a network (needs 'manage' on it)")
async def destroy(ctx, uuid):
    svc, net, name = await _named(ctx, uuid)
    if await svc.lv(net.isActive):
        await svc.lv(net.destroy, slow=True)
    await _push(ctx, "destroyed", name)


def _render_get(payload) -> str:
    lines = []
    for holder in payload:
        state = "inactive" if holder.tag.endswith("unactivedNetworks") else "active"
        for net in holder:
            lines.append(f"{net.findtext('name')} ({state})")
    return "\n".join(lines) or "No networks."


@_cmd("get", chat=("list networks", "networks"), chat_render=_render_get,
      help="the networks (libvirt <network> XML, active and inactive) the sender may see")
async def get(ctx):
    svc = service(ctx)
    active, inactive = ET.Element("activedNetworks"), ET.Element("unactivedNetworks")
    for _name, net in await _visible_networks(ctx):
        desc = ET.fromstring(await svc.lv(net.XMLDesc, 0))
        desc.set("autostart", "1" if await svc.lv(net.autostart) else "0")
        (active if await svc.lv(net.isActive) else inactive).append(desc)
    return [active, inactive]


async def _names(ctx):
    return [element("network", {"name": name}) for name, _net in await _visible_networks(ctx)]


@_cmd("getnames", help="the names of the networks the sender may use")
async def getnames(ctx):
    return await _names(ctx)


async def _bridges(ctx):
    svc = service(ctx)
    out = []
    for name, net in await _visible_networks(ctx):
        if await svc.lv(net.isActive):
            out.append(element("bridge", {"name": await svc.lv(net.bridgeName), "type": "network", "network": name}))
    if await svc.is_admin(ctx.sender_bare):  # host bridges: admins only
        for bridge in sorted(ctx.agent.config.vm.allowed_bridges):
            out.append(element("bridge", {"name": bridge, "type": "bridge"}))
    return out


@_cmd("bridges", help="bridges a NIC may name: those of the sender's networks (host bridges for admins)")
async def bridges(ctx):
    return await _bridges(ctx)


async def _nics(ctx):
    svc = service(ctx)
    links = await svc.switch.links(details=True)  # Ethernet devices that are not bridges, VLANs, veths, taps…
    return [element("nic", {"name": link["ifname"]}) for link in links
            if link.get("link_type") == "ether" and not link.get("linkinfo", {}).get("info_kind")]


@_cmd("getnics", help="the host's network interfaces")
async def getnics(ctx):
    return await _nics(ctx)


# ---------------------------------------------------------------- rights
def _target_args():
    return (Arg("network", help="network name"),
            Arg("target_type", required=False, default="user", choices=TARGET_TYPES),
            Arg("target", help="bare JID, LDAP group or (role_*) the user/group given a role"),
            Arg("right", help="use or manage; for role_user/role_group a role name"))


async def _grant_target(ctx, network, target_type, right):
    svc = service(ctx)
    await svc.sync()
    record = await svc.record(network)
    if not await svc.is_admin(ctx.sender_bare):
        await svc.require(ctx.sender_bare, network, MANAGE, ctx.command.action)
    if target_type not in (ROLE_USER, ROLE_GROUP) and right not in RIGHTS:
        raise InvalidArgument("right", f"expected one of {', '.join(RIGHTS)}, got {right!r}")
    return svc, record


@_cmd("grant", args=_target_args(), chat=("grant network",),
      help="give a user, LDAP group or role the right to use or manage a network (needs 'manage' on it)")
async def grant(ctx, network, target_type, target, right):
    svc, record = await _grant_target(ctx, network, target_type, right)
    await svc.set_grant(record, target_type, target, right, True)


@_cmd("revoke", args=_target_args(), chat=("revoke network",),
      help="take back a right given on a network (needs 'manage' on it)")
async def revoke(ctx, network, target_type, target, right):
    svc, record = await _grant_target(ctx, network, target_type, right)
    await svc.set_grant(record, target_type, target, right, False)


@_cmd("grants", args=(Arg("network", help="network name"),), chat=("network grants",),
      help="owner, scope and grants of a network (needs 'manage' on it)")
async def grants(ctx, network):
    svc = service(ctx)
    await svc.sync()
    record = await svc.record(network)
    if not await svc.is_admin(ctx.sender_bare):
        await svc.require(ctx.sender_bare, network, MANAGE, ctx.command.action)
    attrs = {"name": record.name, "owner": record.owner, "scope": record.scope, "hypervisor": record.hypervisor}
    if record.vni is not None:
        attrs.update(vni=str(record.vni), bridge=record.bridge)
    out = element("network", attrs)
    for target_type, target, right, value in record.grants:
        if value:
            out.append(element("grant", {"target_type": target_type, "target": target, "right": right}))
    return out


# ---------------------------------------------------------------- VM
@_cmd("getnames", kinds=("vm",), help="the networks this VM's NICs may use")
async def vm_getnames(ctx):
    return await _names(ctx)


@_cmd("bridges", kinds=("vm",), help="bridges of the networks this VM's NICs may use (host bridges for admins)")
async def vm_bridges(ctx):
    return await _bridges(ctx)


@_cmd("getnics", kinds=("vm",), help="the host's network interfaces (for admins' direct NICs)")
async def vm_getnics(ctx):
    if not await service(ctx).is_admin(ctx.sender_bare):
        return []
    return await _nics(ctx)


@_cmd("getnwfilters", kinds=("vm",), help="the nwfilters a NIC may name (a non-admin's NICs use clean-traffic)")
async def vm_getnwfilters(ctx):
    svc = service(ctx)
    if not await svc.is_admin(ctx.sender_bare):
        return [element("filter", {"name": NIC_FILTER})]
    names = await svc.lv("listNWFilters")
    return [element("filter", {"name": n}) for n in sorted(names)]
