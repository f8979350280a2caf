"""Networks of one hypervisor: records, rights, the class switches, the policy context.

Rights reuse the permission center: a network is the entity ``network:<name>``
of kind ``network``, with the permissions ``use`` (attach a NIC) and
``manage`` (start, stop, undefine, grant), ``all`` for its owner; grants to
users, LDAP groups and roles follow the center's one check order.  The
catalogue on the shared storage (``catalogue.py``) carries owner and grants to
every hypervisor; :meth:`NetworkService.sync` copies them into this agent's
permission store and builds the local half of each class network.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt
from lxml import etree

from archipelagent.config import ConfigError
from archipelagent.errors import Conflict, LibvirtFailure, NotFound, PermissionDenied, Unavailable
from archipelagent.permissions import Permission
from archipelagent.permissions.center import ALL
from archipelagent.permissions.store import GROUP, ROLE_GROUP, ROLE_USER, USER, bare, name_key

from . import catalogue
from .catalogue import CLASS, NetworkRecord
from .policy import NetworkContext, check_network, network_subnets, parse_network, validate_name
from .switch import Switch, SwitchError, bridge_name

log = logging.getLogger(__name__)

SECTION = "NETWORKS"
KIND = "network"
USE, MANAGE = "use", "manage"
RIGHTS = (USE, MANAGE)
TARGET_TYPES = (USER, GROUP, ROLE_USER, ROLE_GROUP)
NETWORK_PERMISSIONS = (
    Permission(USE, "Attach a VM's NIC to this network", implied_by=(MANAGE,)),
    Permission(MANAGE, "Start, stop, undefine this network and grant its rights"),
)
_CLASS_BRIDGE = re.compile(r"^acn(\d+)$")


@dataclass(frozen=True)
class NetworksConfig:
    pools: tuple[ipaddress.IPv4Network, ...]
    vni_range: tuple[int, int]
    vxlan_device: str | None
    namespace: str | None


def read_config(config) -> NetworksConfig:
    parser, path = config.parser, config.path

    def raw(key: str, default: str) -> str:
        if parser is None or not parser.has_section(SECTION):
            return default
        return (parser.get(SECTION, key, fallback="") or "").strip() or default

    try:
        pools = tuple(ipaddress.IPv4Network(p) for p in raw("network_address_pool", "10.200.0.0/16").split())
    except ValueError as exc:
        raise ConfigError(path, SECTION, "network_address_pool", f"expected IPv4 networks: {exc}") from None
    text = raw("vxlan_vni_range", "1000-9999")
    try:
        low, high = (int(x) for x in text.split("-", 1))
        if not 1 <= low <= high <= 99999:
            raise ValueError
    except ValueError:
        raise ConfigError(path, SECTION, "vxlan_vni_range", f"expected LOW-HIGH within 1-99999, found {text!r}") from None
    return NetworksConfig(pools, (low, high), raw("vxlan_device", "") or None, raw("network_namespace", "") or None)


def entity_key(name: str) -> str:
    return f"network:{name.lower()}"


def _active_net_xml(name: str, bridge: str) -> str:
    return f"<network><name>{name}</name><forward mode='bridge'/><bridge name='{bridge}'/></network>"


class NetworkService:
    def __init__(self, agent, config: NetworksConfig):
        self.agent = agent
        self.config = config
        self.switch = Switch(config.vxlan_device, config.namespace)
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ basics
    @property
    def base(self) -> Path:
        return Path(self.agent.config.vm.base_path)

    @property
    def me(self) -> str:
        return bare(self.agent.config.hypervisor.jid)

    async def records(self) -> dict[str, NetworkRecord]:
        return await self.agent.fs.call(catalogue.read_all, self.base, what="read the network catalogue")

    async def record(self, name: str) -> NetworkRecord:
        found = (await self.records()).get(name)
        if found is None:
            raise NotFound(f"no network named '{name}' defined through the agent")
        return found

    async def lv(self, method, *args, **kw):
        return await self.agent.libvirt.call(method, *args, **kw)

    async def lookup(self, name: str):
        try:
            return await self.lv("networkLookupByName", name)
        except LibvirtFailure as exc:
            if exc.code == libvirt.VIR_ERR_NO_NETWORK:
                raise NotFound(f"no network named '{name}' on this hypervisor") from None
            raise

    # ------------------------------------------------------------ rights
    async def is_admin(self, user: str) -> bool:
        try:
            return await self.agent.permissions.is_admin(user)
        except Unavailable:
            return False  # fail closed

    async def may(self, user: str, name: str, right: str) -> bool:
        return await self.agent.permissions.check(entity_key(name), KIND, bare(user), right)

    async def require(self, user: str, name: str, right: str, action: str) -> None:
        if not await self.may(user, name, right):
            raise PermissionDenied(action, f"'{right}' on network '{name}' is needed")

    async def usable(self, user: str | None) -> frozenset[str] | None:
        """Networks ``user`` may attach a NIC to (None: any, for admins); the site-wide
        ``vm_allowed_networks`` count for everyone (``*`` = any)."""
        await self.sync()  # whoever asks, the class networks a VM may name exist here before it is defined
        site = self.agent.config.vm.allowed_networks
        if site is None or (user and await self.is_admin(user)):
            return None
        names = set(site)
        if user:
            for name, record in (await self.records()).items():
                here = record.scope == CLASS or record.hypervisor == self.me  # another's local network is not here
                if here and await self.may(user, name, USE):
                    names.add(name)
        return frozenset(names)

    async def visible(self, user: str) -> set[str] | None:
        """What ``user`` sees in listings (None: everything)."""
        usable = await self.usable(user)
        return None if usable is None else set(usable)

    async def set_grant(self, record: NetworkRecord, target_type: str, target: str, permission: str, value: bool) -> None:
        """Change one grant: the store first holds the catalogue's rows (another hypervisor's
        changes included), then the change, and the result goes back to the catalogue."""
        await self._mirror(record)
        if value:
            await self.agent.permissions.set_permission(entity_key(record.name), KIND, target, permission, True, target_type)
        else:  # a revocation removes the grant (no explicit "false" row outliving it and shadowing a role)
            if target_type in (ROLE_USER, ROLE_GROUP):
                permission = name_key(permission)
            await self.agent.permissions.store.revoke(entity_key(record.name), target, permission, target_type)
        rows = await self.agent.permissions.store.targets(entity_key(record.name))
        record.grants = [list(row) for row in rows]
        await self.agent.fs.call(catalogue.write, self.base, record, what="write the network catalogue")

    async def _mirror(self, record: NetworkRecord) -> None:
        """This agent's permission rows of the network = the catalogue's."""
        store = self.agent.permissions.store
        key = entity_key(record.name)
        have = {(t, tg, p): v for t, tg, p, v in await store.targets(key)}
        want = {(t, tg, p): bool(v) for t, tg, p, v in record.grants}
        for (t, tg, p) in have.keys() - want.keys():
            await store.revoke(key, tg, p, t)
        for (t, tg, p), v in want.items():
            if have.get((t, tg, p)) != v:
                await store.set_grant(key, tg, p, v, t)

    # ------------------------------------------------------------ sync
    async def sync(self) -> None:
        """Catalogue → this hypervisor: rights mirrored, class networks built, orphans removed."""
        async with self._lock:
            records = await self.records()
            if self.agent.libvirt.connected:  # first: a VNI undefined elsewhere may be reused by a new record
                await self._remove_orphans(records)
            for record in records.values():
                await self._mirror(record)
                if record.scope == CLASS and self.agent.libvirt.connected:
                    try:
                        await self._ensure_class(record)
                    except (SwitchError, LibvirtFailure) as exc:
                        log.warning("class network %s: %s", record.name, exc)

    async def _ensure_class(self, record: NetworkRecord) -> None:
        serves_dhcp = record.hypervisor == self.me
        try:
            net = await self.lookup(record.name)
            if await self.lv(net.isActive) and await self.switch.healthy(record.vni, bridge_too=not serves_dhcp):
                return  # the usual case: one libvirt call and one `ip link`
        except NotFound:
            if not serves_dhcp:
                await self.switch.ensure_bridge(record.vni)
            xml = record.xml if serves_dhcp else _active_net_xml(record.name, record.bridge)
            net = await self.lv("networkDefineXML", xml)
            log.info("class network %s (VNI %d) defined here%s", record.name, record.vni, " with DHCP" if serves_dhcp else "")
        if not serves_dhcp:
            await self.switch.ensure_bridge(record.vni)
        if not await self.lv(net.isActive):
            await self.lv(net.create)
        if not await self.lv(net.autostart):
            await self.lv(net.setAutostart, 1)
        await self.switch.ensure_vxlan(record.vni)

    async def _remove_orphans(self, records: dict[str, NetworkRecord]) -> None:
        """A class network undefined elsewhere: its local half goes too."""
        for net in await self.lv("listAllNetworks", 0):
            name = await self.lv(net.name)
            match = _CLASS_BRIDGE.match(await self.lv(net.bridgeName) if await self.lv(net.isActive) else "")
            if match is None or name in records:
                continue
            vni = int(match.group(1))
            log.info("class network %s is no longer in the catalogue: removed here", name)
            in_use = any(r.vni == vni for r in records.values())  # its bridge already serves a newer network
            await self._teardown(net, None if in_use else vni)

    async def _teardown(self, net, vni: int | None) -> None:
        if await self.lv(net.isActive):
            await self.lv(net.destroy, slow=True)
        try:
            await self.lv(net.undefine)
        except LibvirtFailure:
            pass  # transient
        if vni is not None:
            await self.switch.remove(vni, bridge_too=True)

    # ------------------------------------------------------------ define
    async def network_context(self) -> NetworkContext:
        existing, names = [], set()
        for net in await self.lv("listAllNetworks", 0):
            name = await self.lv(net.name)
            names.add(name)
            root = ET.fromstring(await self.lv(net.XMLDesc, 0))
            existing += [(name, s) for s in network_subnets(etree.fromstring(ET.tostring(root)))]
        for record in (await self.records()).values():
            names.add(record.name)
            existing += [(record.name, ipaddress.IPv4Network(s)) for s in record.subnets]
        return NetworkContext(pools=self.config.pools, existing=tuple(existing), taken_names=frozenset(names))

    async def define(self, sender: str, xml: str, *, scope: str, autostart: bool) -> NetworkRecord:
        """Check (policy for non-admins), define in libvirt, record owner and scope."""
        admin = await self.is_admin(sender)
        async with self._lock:
            ctx = await self.network_context()
            if admin:
                root = parse_network(xml)
                name = validate_name((root.findtext("name") or "").strip(), "network/name")
                if name in ctx.taken_names:
                    raise Conflict(f"a network named '{name}' already exists")
            else:
                root = await asyncio.to_thread(check_network, xml, ctx)
                name = root.findtext("name")
            records = await self.records()
            vni = None
            if scope == CLASS:
                if root.find("forward") is not None and root.find("forward").get("mode") not in (None, "nat"):
                    raise Conflict("a class network is isolated or NAT")
                used = {r.vni for r in records.values() if r.vni is not None}
                free = [v for v in range(self.config.vni_range[0], self.config.vni_range[1] + 1) if v not in used]
                if not free:
                    raise Conflict("no free VXLAN id left in [NETWORKS] vxlan_vni_range")
                vni = secrets.choice(free)  # not the lowest: a VNI just freed may still be up on a hypervisor
            self._set_bridge(root, bridge_name(vni) if vni is not None else None, admin)
            text = etree.tostring(root, encoding="unicode")
            record = NetworkRecord(name=name, owner=bare(sender), scope=scope, hypervisor=self.me, xml=text, vni=vni,
                                   subnets=[str(s) for s in network_subnets(root)],
                                   grants=[[USER, bare(sender), ALL, True]])
            if not await self.agent.fs.call(catalogue.create, self.base, record, what="write the network catalogue"):
                raise Conflict(f"a network named '{name}' already exists")
            try:
                net = await self.lv("networkDefineXML", text)
                if autostart or scope == CLASS:
                    await self.lv(net.setAutostart, 1)
                await self._mirror(record)
                if scope == CLASS:
                    await self._ensure_class(record)
            except BaseException:
                await self.agent.fs.call(catalogue.remove, self.base, name, what="clean the network catalogue")
                raise
        return record

    @staticmethod
    def _set_bridge(root, bridge: str | None, admin: bool) -> None:
        """Class networks get ``acn<vni>``; a non-admin's local one a random ``anl…`` name
        (unique across libvirtds sharing a host); an admin's keeps what it says."""
        if admin and bridge is None:
            return
        el = root.find("bridge")
        if el is None:
            el = etree.SubElement(root, "bridge")
        el.set("name", bridge or f"anl{secrets.token_hex(5)}")
        el.set("stp", el.get("stp", "off"))

    async def undefine(self, name: str) -> None:
        async with self._lock:
            records = await self.records()
            record = records.get(name)
            try:
                net = await self.lookup(name)
                await self._teardown(net, record.vni if record else None)
            except NotFound:
                if record is None:
                    raise
            if record is not None:
                await self.agent.fs.call(catalogue.remove, self.base, name, what="clean the network catalogue")
                await self.agent.permissions.store.delete_entity(entity_key(name))
