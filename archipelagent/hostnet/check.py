"""Offline check of a hypervisor's host networking files against its declaration.

Reads back what ``net generate`` wrote (or what an admin edited since):
``ifupdown/interfaces``, ``networkd/*.netdev|*.network`` and the agent's
``vm_allowed_bridges``, parses each strictly (an unknown stanza, option,
section or key is a syntax error), rebuilds the topology each one describes
and checks it: one bond of the declared NICs and mode, every VLAN on the bond
and alone on its bridge ``br<id>``, the host's addresses where declared, and no
bridge of a host-only VLAN (storage, cluster, management) offered to VMs.
Returns a list of problems, each naming the file and line; empty means fine.
"""
from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

from .model import HostNet
from .render import AGENT_SNIPPET, INTERFACES, NETWORKD_DIR

__all__ = ["Topology", "parse_interfaces", "parse_networkd", "check_dir", "check_topology", "allowed_bridges"]

IFACE_OPTIONS = {
    "address", "gateway", "netmask", "mtu", "hwaddress", "bond-slaves", "bond-mode", "bond-miimon", "bond-primary",
    "bond-lacp-rate", "bond-xmit-hash-policy", "bridge-ports", "bridge-stp", "bridge-fd", "vlan-raw-device",
    "dns-nameservers", "dns-search", "pre-up", "up", "post-up", "pre-down", "down", "post-down",
}
STANZAS = {"auto", "allow-hotplug", "iface"}
NETWORKD_KEYS = {
    "Match": {"Name"},
    "Network": {"Bond", "VLAN", "Bridge", "Address", "Gateway", "LinkLocalAddressing", "PrimarySlave", "DNS"},
    "NetDev": {"Name", "Kind", "MTUBytes"},
    "Bond": {"Mode", "MIIMonitorSec", "LACPTransmitRate", "TransmitHashPolicy"},
    "VLAN": {"Id"},
    "Bridge": {"STP", "ForwardDelaySec"},
    "Link": {"MTUBytes"},
}


@dataclass
class Topology:
    """What one rendering says: bonds (name → mode, slaves), VLAN interfaces (name → raw device, id),
    bridges (name → ports), addresses and gateways (interface → values)."""

    bonds: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    vlans: dict[str, tuple[str, int]] = field(default_factory=dict)
    bridges: dict[str, tuple[str, ...]] = field(default_factory=dict)
    addresses: dict[str, list[str]] = field(default_factory=dict)
    gateways: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_interfaces(text: str, where: str = INTERFACES) -> Topology:
    """Strict reader of the ifupdown(2) subset ``net generate`` writes."""
    topo = Topology()
    autos: list[tuple[int, str]] = []
    ifaces: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        words = line.split()
        if line[0] in " \t":
            if current is None:
                topo.problems.append(f"{where}:{number}: option {words[0]!r} outside an iface stanza")
            elif words[0] not in IFACE_OPTIONS:
                topo.problems.append(f"{where}:{number}: unknown option {words[0]!r}")
            elif len(words) < 2:
                topo.problems.append(f"{where}:{number}: option {words[0]!r} without a value")
            else:
                current.setdefault(words[0], []).append(" ".join(words[1:]))
            continue
        if words[0] not in STANZAS:
            topo.problems.append(f"{where}:{number}: unknown stanza {words[0]!r}")
            current = None
            continue
        if words[0] in ("auto", "allow-hotplug"):
            autos += [(number, name) for name in words[1:]]
            current = None
            continue
        if len(words) != 4 or words[2] not in ("inet", "inet6") or words[3] not in ("manual", "static", "dhcp", "loopback"):
            topo.problems.append(f"{where}:{number}: expected 'iface NAME inet|inet6 manual|static|dhcp|loopback'")
            current = None
            continue
        if words[1] in ifaces:
            topo.problems.append(f"{where}:{number}: interface {words[1]} declared twice")
        current = ifaces.setdefault(words[1], {"__method__": [words[3]]})
    for number, name in autos:
        if name not in ifaces:
            topo.problems.append(f"{where}:{number}: 'auto {name}' has no iface stanza")
    for name, opts in ifaces.items():
        if "bond-slaves" in opts:
            topo.bonds[name] = ((opts.get("bond-mode") or [""])[0], tuple(opts["bond-slaves"][0].split()))
        if "bridge-ports" in opts:
            topo.bridges[name] = tuple(opts["bridge-ports"][0].split())
        raw = (opts.get("vlan-raw-device") or [None])[0]
        match = re.fullmatch(r"(.+)\.(\d{1,4})", name)
        if match or raw:
            topo.vlans[name] = (raw or match.group(1), int(match.group(2)) if match else -1)
        if "address" in opts:
            topo.addresses[name] = list(opts["address"])
            if opts["__method__"][0] != "static":
                topo.problems.append(f"{where}: {name} has an address but its method is not static")
        if "gateway" in opts:
            topo.gateways[name] = list(opts["gateway"])
    return topo


def _read_unit(text: str, where: str) -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    sections: dict[str, dict[str, list[str]]] = {}
    problems: list[str] = []
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            if current not in NETWORKD_KEYS:
                problems.append(f"{where}:{number}: unknown section [{current}]")
            sections.setdefault(current, {})
            continue
        key, sep, value = line.partition("=")
        if current is None or not sep:
            problems.append(f"{where}:{number}: expected KEY=VALUE inside a [Section]")
            continue
        key = key.strip()
        if current in NETWORKD_KEYS and key not in NETWORKD_KEYS[current]:
            problems.append(f"{where}:{number}: unknown key {key!r} in [{current}]")
        sections[current].setdefault(key, []).append(value.strip())
    return sections, problems


def parse_networkd(files: dict[str, str]) -> Topology:
    """Strict reader of ``*.netdev`` and ``*.network`` files (name → text)."""
    topo = Topology()
    kinds: dict[str, tuple[str, dict]] = {}
    networks: list[tuple[str, dict]] = []
    for name, text in sorted(files.items()):
        sections, problems = _read_unit(text, f"{NETWORKD_DIR}/{name}")
        topo.problems += problems
        if name.endswith(".netdev"):
            netdev = sections.get("NetDev", {})
            dev = (netdev.get("Name") or [""])[0]
            if not dev or not netdev.get("Kind"):
                topo.problems.append(f"{NETWORKD_DIR}/{name}: [NetDev] needs Name= and Kind=")
                continue
            kinds[dev] = (netdev["Kind"][0], sections)
        elif name.endswith(".network"):
            match = (sections.get("Match", {}).get("Name") or [""])[0]
            if not match:
                topo.problems.append(f"{NETWORKD_DIR}/{name}: [Match] needs Name=")
                continue
            networks.append((match, sections.get("Network", {})))
        else:
            topo.problems.append(f"{NETWORKD_DIR}/{name}: not a .netdev or .network file")
    enslaved: dict[str, list[str]] = {}
    bridge_ports: dict[str, list[str]] = {}
    vlan_parent: dict[str, str] = {}
    for match, net in networks:
        for bond in net.get("Bond", []):
            enslaved.setdefault(bond, []).append(match)
        for bridge in net.get("Bridge", []):
            bridge_ports.setdefault(bridge, []).append(match)
        for vlan in net.get("VLAN", []):
            vlan_parent[vlan] = match
        if net.get("Address"):
            topo.addresses[match] = list(net["Address"])
        if net.get("Gateway"):
            topo.gateways[match] = list(net["Gateway"])
    for dev, (kind, sections) in kinds.items():
        if kind == "bond":
            mode = (sections.get("Bond", {}).get("Mode") or [""])[0]
            topo.bonds[dev] = (mode, tuple(enslaved.get(dev, ())))
        elif kind == "vlan":
            vid = (sections.get("VLAN", {}).get("Id") or ["-1"])[0]
            topo.vlans[dev] = (vlan_parent.get(dev, ""), int(vid) if vid.isdigit() else -1)
        elif kind == "bridge":
            topo.bridges[dev] = tuple(bridge_ports.get(dev, ()))
        else:
            topo.problems.append(f"{NETWORKD_DIR}: {dev}: unexpected Kind={kind}")
    for target in list(enslaved) + list(bridge_ports) + list(vlan_parent):
        if target not in kinds:
            topo.problems.append(f"{NETWORKD_DIR}: {target} is used but no .netdev creates it")
    return topo


def check_topology(topo: Topology, net: HostNet, label: str) -> list[str]:
    """Does this rendering carry the declared bond and VLANs, each VLAN alone on its bridge?"""
    problems = list(topo.problems)
    bond = net.bond
    got = topo.bonds.get(bond.name)
    if got is None:
        problems.append(f"{label}: no bond {bond.name}")
    else:
        if got[0] != bond.mode:
            problems.append(f"{label}: bond {bond.name} mode is {got[0] or 'unset'}, declared {bond.mode}")
        if sorted(got[1]) != sorted(bond.slaves):
            problems.append(f"{label}: bond {bond.name} enslaves {', '.join(got[1]) or 'nothing'}, declared {', '.join(bond.slaves)}")
    declared_ports = {net.vlan_interface(v) for v in net.vlans}
    for vlan in net.vlans:
        port, bridge = net.vlan_interface(vlan), vlan.bridge
        if topo.vlans.get(port) != (bond.name, vlan.id):
            problems.append(f"{label}: VLAN {vlan.id} ({vlan.name}) is not the interface {port} on {bond.name}")
        ports = topo.bridges.get(bridge)
        if ports is None:
            problems.append(f"{label}: VLAN {vlan.id} ({vlan.name}) is not on a bridge: {bridge} is missing")
        elif tuple(ports) != (port,):
            problems.append(f"{label}: bridge {bridge} must have exactly the port {port}, has {', '.join(ports) or 'none'}")
        want = [vlan.address.with_prefixlen] if vlan.address is not None else []
        if topo.addresses.get(bridge, []) != want:
            problems.append(f"{label}: {bridge} address {topo.addresses.get(bridge) or 'none'}, declared {want or 'none'}")
        want_gw = [str(vlan.gateway)] if vlan.gateway is not None else []
        if topo.gateways.get(bridge, []) != want_gw:
            problems.append(f"{label}: {bridge} gateway {topo.gateways.get(bridge) or 'none'}, declared {want_gw or 'none'}")
    for name in topo.vlans:
        if name not in declared_ports:
            problems.append(f"{label}: VLAN interface {name} is not declared")
    for bridge, ports in topo.bridges.items():
        if bridge not in {v.bridge for v in net.vlans}:
            problems.append(f"{label}: bridge {bridge} ({', '.join(ports) or 'no port'}) is not declared")
    for iface in set(topo.addresses) - {v.bridge for v in net.vlans}:
        problems.append(f"{label}: {iface} carries an address; the host's addresses belong on the VLAN bridges")
    return problems


def allowed_bridges(agent_config_text: str) -> set[str]:
    parser = configparser.RawConfigParser()
    parser.read_string(agent_config_text)
    return set(parser.get("VIRTUALMACHINE", "vm_allowed_bridges", fallback="").split())


def check_dir(folder: str | Path, net: HostNet, *, agent_config: str | Path | None = None) -> list[str]:
    """Every problem of the files in ``folder`` (and of the agent's config, if given) against ``net``."""
    folder = Path(folder)
    problems: list[str] = []
    interfaces = folder / INTERFACES
    if interfaces.is_file():
        problems += check_topology(parse_interfaces(interfaces.read_text()), net, INTERFACES)
    else:
        problems.append(f"{INTERFACES}: missing")
    nd = folder / NETWORKD_DIR
    files = {p.name: p.read_text() for p in sorted(nd.glob("*")) if p.is_file()} if nd.is_dir() else {}
    if files:
        problems += check_topology(parse_networkd(files), net, NETWORKD_DIR)
    else:
        problems.append(f"{NETWORKD_DIR}/: missing or empty")
    sources = [(folder / AGENT_SNIPPET, AGENT_SNIPPET)]
    if agent_config is not None:
        sources.append((Path(agent_config), str(agent_config)))
    host_only = {v.bridge: v for v in net.vlans if not v.for_guests}
    for path, label in sources:
        if not path.is_file():
            problems.append(f"{label}: missing")
            continue
        try:
            offered = allowed_bridges(path.read_text())
        except configparser.Error as exc:
            problems.append(f"{label}: not a valid configuration file: {exc}")
            continue
        for bridge in sorted(offered & set(host_only)):
            vlan = host_only[bridge]
            problems.append(f"{label}: vm_allowed_bridges offers {bridge} to VMs, but VLAN {vlan.id} ({vlan.name}) is "
                            f"{vlan.role}: host only")
        for bridge in sorted(offered - {v.bridge for v in net.vlans}):
            problems.append(f"{label}: vm_allowed_bridges names {bridge}, which the declaration does not create")
    return problems
