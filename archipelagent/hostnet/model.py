"""A hypervisor's host networking, declared once: a bond carrying tagged VLANs, each on a bridge.

The seed's hosts bond two NICs (active-backup, or 802.3ad with an LACP group
on the switch) and carry several VLANs on the bond: the public one the VMs are
bridged to, and private ones (storage: NFS to the storage pair, DRBD and
cluster traffic) that the host uses and the guests must never reach.  Every
VLAN sits on a bridge ``br<id>`` (so a VLAN can be opened to guests later
without renumbering); only the bridges of ``role = "guests"`` VLANs are offered
to VMs (the agent's ``vm_allowed_bridges``).

The declaration is a small TOML file (example: ``conf/net/hypervisor.toml``);
:func:`load` validates it with errors that name the key.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostNetError", "Bond", "Vlan", "HostNet", "load", "parse", "BOND_MODES", "ROLES"]

BOND_MODES = ("active-backup", "802.3ad")
ROLES = ("guests", "storage", "cluster", "management")
IFNAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,10}$")  # leaves room for ".<vlan>" within IFNAMSIZ (15)
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class HostNetError(ValueError):
    """The declaration is wrong; the message names the key."""


@dataclass(frozen=True)
class Bond:
    name: str
    mode: str
    slaves: tuple[str, ...]
    mtu: int = 1500
    miimon_ms: int = 100
    primary: str | None = None  # active-backup: the preferred NIC
    lacp_rate: str = "fast"  # 802.3ad
    hash_policy: str = "layer3+4"  # 802.3ad


@dataclass(frozen=True)
class Vlan:
    id: int
    name: str
    role: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None = None
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    mtu: int | None = None

    @property
    def bridge(self) -> str:
        return f"br{self.id}"

    @property
    def for_guests(self) -> bool:
        return self.role == "guests"


@dataclass(frozen=True)
class HostNet:
    hostname: str
    bond: Bond
    vlans: tuple[Vlan, ...]

    def vlan_interface(self, vlan: Vlan) -> str:
        return f"{self.bond.name}.{vlan.id}"

    @property
    def guest_bridges(self) -> tuple[str, ...]:
        return tuple(v.bridge for v in self.vlans if v.for_guests)


def _get(table: dict, key: str, where: str, kind, default=...):
    if key not in table:
        if default is ...:
            raise HostNetError(f"{where}.{key}: missing")
        return default
    value = table[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise HostNetError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _ifname(value: str, where: str) -> str:
    if not IFNAME_RE.match(value):
        raise HostNetError(f"{where}: {value!r} is not a usable interface name (letters, digits, '_', '-'; at most 11)")
    return value


def _mtu(value: int | None, where: str) -> int | None:
    if value is not None and not 576 <= value <= 9216:
        raise HostNetError(f"{where}: MTU {value} outside 576-9216")
    return value


def _known(table: dict, keys: set[str], where: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise HostNetError(f"{where}: unknown key(s) {', '.join(unknown)}")


def parse(data: dict) -> HostNet:
    """Validate a loaded declaration (a dict as tomllib gives it)."""
    _known(data, {"hostname", "bond", "vlan"}, "(top level)")
    hostname = _get(data, "hostname", "(top level)", str)
    if not HOSTNAME_RE.match(hostname):
        raise HostNetError(f"hostname: {hostname!r} is not a host name")
    b = _get(data, "bond", "(top level)", dict)
    _known(b, {"name", "mode", "slaves", "mtu", "miimon_ms", "primary", "lacp_rate", "hash_policy"}, "bond")
    mode = _get(b, "mode", "bond", str)
    if mode not in BOND_MODES:
        raise HostNetError(f"bond.mode: {mode!r}: choose {' or '.join(BOND_MODES)}")
    slaves = _get(b, "slaves", "bond", list)
    if len(slaves) < 2 or len(set(slaves)) != len(slaves) or not all(isinstance(s, str) for s in slaves):
        raise HostNetError("bond.slaves: at least two distinct NIC names")
    slaves = tuple(_ifname(s, "bond.slaves") for s in slaves)
    primary = _get(b, "primary", "bond", str, None)
    if primary is not None and (mode != "active-backup" or primary not in slaves):
        raise HostNetError("bond.primary: only with mode active-backup, and one of bond.slaves")
    lacp_rate = _get(b, "lacp_rate", "bond", str, "fast")
    if lacp_rate not in ("fast", "slow"):
        raise HostNetError("bond.lacp_rate: fast or slow")
    hash_policy = _get(b, "hash_policy", "bond", str, "layer3+4")
    if hash_policy not in ("layer2", "layer2+3", "layer3+4"):
        raise HostNetError("bond.hash_policy: layer2, layer2+3 or layer3+4")
    miimon = _get(b, "miimon_ms", "bond", int, 100)
    if not 10 <= miimon <= 10000:
        raise HostNetError("bond.miimon_ms: 10 to 10000")
    bond = Bond(name=_ifname(_get(b, "name", "bond", str, "bond0"), "bond.name"), mode=mode, slaves=slaves,
                mtu=_mtu(_get(b, "mtu", "bond", int, 1500), "bond.mtu"), miimon_ms=miimon, primary=primary,
                lacp_rate=lacp_rate, hash_policy=hash_policy)
    if bond.name in slaves:
        raise HostNetError("bond.name: the bond cannot be one of its slaves")
    raw_vlans = _get(data, "vlan", "(top level)", list)
    if not raw_vlans:
        raise HostNetError("vlan: declare at least one [[vlan]]")
    vlans, gateways = [], 0
    for i, v in enumerate(raw_vlans):
        where = f"vlan[{i}]"
        if not isinstance(v, dict):
            raise HostNetError(f"{where}: expected a table")
        _known(v, {"id", "name", "role", "address", "gateway", "mtu"}, where)
        vid = _get(v, "id", where, int)
        if not 1 <= vid <= 4094:
            raise HostNetError(f"{where}.id: {vid} outside 1-4094")
        role = _get(v, "role", where, str)
        if role not in ROLES:
            raise HostNetError(f"{where}.role: {role!r}: choose {', '.join(ROLES)}")
        address = _get(v, "address", where, str, None)
        try:
            iface = ipaddress.ip_interface(address) if address else None
        except ValueError:
            raise HostNetError(f"{where}.address: {address!r} is not ADDRESS/PREFIX") from None
        if iface is not None and iface.network.prefixlen == iface.max_prefixlen:
            raise HostNetError(f"{where}.address: give the prefix length (e.g. /24)")
        gateway = _get(v, "gateway", where, str, None)
        gw = None
        if gateway:
            try:
                gw = ipaddress.ip_address(gateway)
            except ValueError:
                raise HostNetError(f"{where}.gateway: {gateway!r} is not an address") from None
            if iface is None or gw not in iface.network:
                raise HostNetError(f"{where}.gateway: {gateway} is not in the VLAN's address network")
            gateways += 1
        if role == "storage" and iface is None:
            raise HostNetError(f"{where}.address: a storage VLAN needs the host's address (it mounts the NFS export)")
        mtu = _mtu(_get(v, "mtu", where, int, None), f"{where}.mtu")
        if mtu is not None and mtu > bond.mtu:
            raise HostNetError(f"{where}.mtu: {mtu} is larger than bond.mtu {bond.mtu}")
        name = _get(v, "name", where, str, f"vlan{vid}")
        vlans.append(Vlan(id=vid, name=name, role=role, address=iface, gateway=gw, mtu=mtu))
    ids = [v.id for v in vlans]
    if len(set(ids)) != len(ids):
        raise HostNetError("vlan: the same id is declared twice")
    if gateways > 1:
        raise HostNetError("vlan: at most one VLAN has the default gateway")
    nets = [v.address.network for v in vlans if v.address is not None]
    for i, a in enumerate(nets):
        for b_ in nets[i + 1:]:
            if a.version == b_.version and a.overlaps(b_):
                raise HostNetError(f"vlan: the address networks {a} and {b_} overlap")
    return HostNet(hostname=hostname, bond=bond, vlans=tuple(vlans))


def load(path: str | Path) -> HostNet:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise HostNetError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(data)
    except HostNetError as exc:
        raise HostNetError(f"{path}: {exc}") from None
