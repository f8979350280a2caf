"""The check of a ``<network>`` definition submitted by a non-admin.

A libvirt network runs as root on the hypervisor: a ``<forward dev='eth0'/>``
puts guests on a host interface, ``<bridge name='br100'/>`` on a host VLAN,
``<dnsmasq:options>`` runs arbitrary dnsmasq options, a ``<route>`` changes the
host's routing table.  Like the domain policy (``virt/policy.py``) this is an
allowlist: what it does not know is refused, with an error naming the element.

Accepted from a non-admin: a name, an isolated network (no ``<forward>``) or a
NAT one (``<forward mode='nat'/>`` with no device, interface or address range),
at most one IPv4 ``<ip>`` whose subnet lies in a configured pool and overlaps
no existing network, DHCP ranges and hosts inside that subnet, a ``<domain>``
name and ``<dns enable='no'/>``.  The bridge is always named by the agent.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from lxml import etree

from archipelagent import xmlsafe
from archipelagent.virt.policy import PolicyViolation, element_path

__all__ = ["NetworkContext", "NAME_RE", "check_network", "parse_network", "network_subnets", "validate_name"]

# Lowercase: the rights of a network are stored under its lowercased name.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_NETWORK_XML = 64 * 1024
MIN_PREFIX, MAX_PREFIX = 16, 29

# element path -> allowed attributes (value sets where it matters)
_ALLOWED: dict[str, dict[str, frozenset[str] | None]] = {
    "network": {},
    "network/name": {},
    "network/uuid": {},
    "network/forward": {"mode": frozenset({"nat"})},
    "network/bridge": {"stp": frozenset({"on", "off"}), "delay": None},
    "network/mac": {"address": None},
    "network/mtu": {"size": None},
    "network/domain": {"name": None, "localOnly": frozenset({"yes", "no"})},
    "network/dns": {"enable": frozenset({"no"})},
    "network/ip": {"address": None, "netmask": None, "prefix": None, "family": frozenset({"ipv4"})},
    "network/ip/dhcp": {},
    "network/ip/dhcp/range": {"start": None, "end": None},
    "network/ip/dhcp/host": {"mac": None, "ip": None, "name": None},
}

_REASONS = {
    "network/forward": "only <forward mode='nat'/> (or none: isolated) is accepted",
    "network/bridge": "the agent names the bridge; only 'stp' and 'delay' may be set",
    "network/route": "changes the host's routing table",
    "network/portgroup": "port groups are for admins",
    "network/virtualport": "sets host switch port parameters",
    "network/forward/interface": "forwards to a host interface",
    "network/forward/pf": "forwards to a host device",
    "network/forward/address": "forwards to a host PCI device",
    "network/forward/nat": "NAT addresses and ports are the host's",
    "network/ip/tftp": "serves host files over TFTP",
    "network/ip/dhcp/bootp": "points guests at a boot server",
}


def validate_name(name: str | None, what: str = "name") -> str:
    if not name or not NAME_RE.match(name):
        raise PolicyViolation(what, f"a network name is 1-32 lowercase letters, digits, '_' or '-' "
                                    f"starting with a letter or digit, got {name!r}")
    return name


@dataclass(frozen=True)
class NetworkContext:
    """What a non-admin's network may use, built by the agent from config and libvirt."""

    pools: tuple[ipaddress.IPv4Network, ...]
    existing: tuple[tuple[str, ipaddress.IPv4Network], ...] = ()  # (network name, subnet) of every known network
    taken_names: frozenset[str] = field(default_factory=frozenset)


def parse_network(xml: str | bytes) -> etree._Element:
    try:
        root = xmlsafe.parse(xml, max_bytes=MAX_NETWORK_XML)
    except xmlsafe.UnsafeXML as exc:
        raise PolicyViolation(exc.where, exc.reason) from None
    if root.tag != "network":
        raise PolicyViolation(str(root.tag), "the definition must be a <network> element")
    return root


def _path(el) -> str:
    parts = [el.tag]
    for parent in el.iterancestors():
        parts.append(parent.tag)
    return "/".join(reversed(parts))


def _refuse(el, reason: str) -> PolicyViolation:
    where = element_path(el)
    return PolicyViolation("network" if where == "network" else f"network/{where}", reason)


def _subnet(ip_el) -> ipaddress.IPv4Network:
    address = ip_el.get("address")
    mask = ip_el.get("prefix") or ip_el.get("netmask")
    if not address or not mask:
        raise _refuse(ip_el, "needs 'address' and 'prefix' (or 'netmask')")
    try:
        iface = ipaddress.IPv4Interface(f"{address}/{mask}")
    except ValueError as exc:
        raise _refuse(ip_el, f"not an IPv4 address and prefix: {exc}") from None
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise _refuse(ip_el, f"{address} is not a host address of {iface.network}")
    return iface.network


def network_subnets(root) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets of a (trusted, libvirt-written) network definition."""
    found = []
    for ip_el in root.iter("ip"):
        try:
            found.append(_subnet(ip_el))
        except PolicyViolation:
            continue
    return found


def _address_in(el, attr: str, subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    value = el.get(attr)
    try:
        address = ipaddress.IPv4Address(value or "")
    except ValueError:
        raise _refuse(el, f"{attr} {value!r} is not an IPv4 address") from None
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise _refuse(el, f"{attr} {value} is outside {subnet}")
    return address


def _check_allowlist(root) -> None:
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        if etree.QName(el).namespace is not None:
            raise _refuse(el, "elements in a foreign namespace (dnsmasq:options…) are not accepted")
        path = _path(el)
        allowed = _ALLOWED.get(path)
        if allowed is None:
            raise _refuse(el, _REASONS.get(path, f"<{el.tag}> is not known to the network policy"))
        for attr, value in el.attrib.items():
            if attr not in allowed:
                reason = _REASONS.get(path) if path in ("network/forward", "network/bridge") else None
                raise _refuse(el, reason or f"attribute '{attr}' is not accepted here")
            values = allowed[attr]
            if values is not None and value not in values:
                raise _refuse(el, _REASONS.get(path) or f"{attr}='{value}' is not accepted "
                                                         f"(allowed: {', '.join(sorted(values))})")


def check_network(xml: str | bytes, ctx: NetworkContext) -> etree._Element:
    """Parse and check a non-admin's ``<network>``; return the element (bridge name still unset).

    Raises :class:`PolicyViolation` (-50) naming the first offending element.
    """
    root = parse_network(xml)
    _check_allowlist(root)
    names = root.findall("name")
    if len(names) != 1:
        raise PolicyViolation("network/name", "exactly one <name> is needed")
    name = validate_name((names[0].text or "").strip(), "network/name")
    names[0].text = name
    if name in ctx.taken_names:
        raise PolicyViolation("network/name", f"a network named '{name}' already exists")
    for tag in ("forward", "bridge", "ip", "domain", "dns", "mtu", "mac", "uuid"):
        if len(root.findall(tag)) > 1:
            raise _refuse(root.findall(tag)[1], f"<{tag}> may appear only once")
    for ip_el in root.iter("ip"):
        subnet = _subnet(ip_el)
        if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
            raise _refuse(ip_el, f"prefix /{subnet.prefixlen} is not between /{MIN_PREFIX} and /{MAX_PREFIX}")
        if not any(subnet.subnet_of(pool) for pool in ctx.pools):
            pools = ", ".join(map(str, ctx.pools)) or "none configured"
            raise _refuse(ip_el, f"{subnet} is outside the address pool ({pools})")
        for other, existing in ctx.existing:
            if subnet.overlaps(existing):
                raise _refuse(ip_el, f"{subnet} overlaps {existing} of network '{other}'")
        for rng in ip_el.iter("range"):
            start, end = _address_in(rng, "start", subnet), _address_in(rng, "end", subnet)
            if end < start:
                raise _refuse(rng, f"range end {end} is before its start {start}")
        for host in ip_el.iter("host"):
            _address_in(host, "ip", subnet)
    return root
