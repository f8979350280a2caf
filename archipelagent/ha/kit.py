"""Generate the storage pair's HA configuration from a few parameters.

Pure functions: :func:`generate` takes validated :class:`HAParams` and returns
``{file name: contents}``; nothing here touches the disk or runs a tool.

The stack, bottom to top, on two nodes (active/passive)::

    LVM LV (--device) -> DRBD resource (replicated over the node addresses)
      -> ext4 on /dev/drbdN, mounted on --mount (default /srv/archipel)
        -> nfs server (state dir <mount>/nfsinfo bind-mounted on /var/lib/nfs)
          -> export <export> to --clients, reached through --service-ip

Pacemaker runs DRBD as a promotable clone and a group fs -> nfsserver ->
exportfs -> service IP colocated with, and ordered after, the DRBD promotion.
"""
from __future__ import annotations

import ipaddress
import json
import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, replace

FILES = ("corosync.conf", "cib.xml", "cluster.crm", "exports", "nfs.conf", "hypervisor.fstab",
         "params.json", "README.md")  # plus "<drbd resource>.res"

_HOST_RE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
_NIC_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9_./@+-]*$")
FSTYPES = ("ext4", "ext3", "xfs")
DRBD_VERSIONS = ("8.4", "9")
# nfsd refuses lease/grace times outside 10..3600 s (fs/nfsd/nfsctl.c).
NFSD_MIN_TIME, NFSD_MAX_TIME = 10, 3600


class HAKitError(ValueError):
    """A bad parameter; the message names the option (``--node1: ...``)."""


@dataclass(frozen=True)
class Node:
    name: str                  # must be `uname -n` on that node (DRBD, corosync and Pacemaker all match on it)
    address: str               # replication / cluster network (DRBD and corosync link 0)
    address2: str | None = None  # optional second corosync link (e.g. on the client network)

    def spec(self) -> str:
        return f"{self.name}={self.address}" + (f",{self.address2}" if self.address2 else "")


@dataclass(frozen=True)
class HAParams:
    node1: Node
    node2: Node
    service_ip: str            # IP/PREFIX (or IP/NETMASK), the floating address the hypervisors mount
    nic: str                   # interface carrying the service IP
    device: str                # LVM logical volume backing DRBD, same path on both nodes
    clients: str               # network allowed to mount the export (the hypervisors), CIDR
    cluster_name: str = "archipel"
    drbd_resource: str = "vms"
    drbd_minor: int = 1
    drbd_port: int = 7790
    drbd_version: str = "8.4"  # Debian 12's in-kernel module is 8.4; "9" for LINBIT's drbd-dkms
    mount: str = "/srv/archipel"
    fstype: str = "ext4"
    export: str = ""           # default <mount>/drives
    client_mount: str = "/vm/drives"  # where hypervisors mount it (the agent's vm_base_path)
    lease_time: int = 10
    grace_time: int = 10
    ipmi: tuple[tuple[str, str], ...] = ()  # ((node name, BMC address), ...): enables STONITH with fence_ipmilan
    ipmi_user: str = "admin"

    # ---------------------------------------------------------- derived values
    @property
    def nodes(self) -> tuple[Node, Node]:
        return (self.node1, self.node2)

    @property
    def service_interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.service_ip)

    @property
    def drbd_device(self) -> str:
        return f"/dev/drbd{self.drbd_minor}"

    @property
    def export_path(self) -> str:
        return self.export or posixpath.join(self.mount, "drives")

    @property
    def nfs_infodir(self) -> str:
        return posixpath.join(self.mount, "nfsinfo")

    @property
    def stonith(self) -> bool:
        return bool(self.ipmi)

    @property
    def ids(self) -> dict[str, str]:
        r = self.drbd_resource
        return {"drbd": f"p_drbd_{r}", "ms": f"ms_drbd_{r}", "fs": f"p_fs_{r}", "nfs": "p_nfsserver",
                "exportfs": f"p_exportfs_{r}", "ip": "p_ip_nfs", "group": "g_nfs",
                "order": "o_drbd_promote_before_nfs", "colocation": "c_nfs_on_drbd_promoted"}

    @property
    def group_members(self) -> tuple[str, ...]:
        ids = self.ids
        return (ids["fs"], ids["nfs"], ids["exportfs"], ids["ip"])

    def to_json(self) -> dict:
        data = asdict(self)
        data["node1"], data["node2"] = self.node1.spec(), self.node2.spec()
        data["ipmi"] = [f"{n}={a}" for n, a in self.ipmi]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "HAParams":
        data = dict(data)
        data["node1"] = parse_node(data["node1"], "node1")
        data["node2"] = parse_node(data["node2"], "node2")
        data["ipmi"] = tuple(parse_ipmi(s) for s in data.get("ipmi") or ())
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise HAKitError(f"params.json: unknown keys {', '.join(unknown)}")
        return validate(cls(**data))


# --------------------------------------------------------------- validation
def _ipv4(value: str, option: str) -> str:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise HAKitError(f"--{option}: {value!r} is not an IP address") from None
    if ip.version != 4:
        raise HAKitError(f"--{option}: {value!r}: only IPv4 is supported by this kit")
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        raise HAKitError(f"--{option}: {value!r} cannot be a cluster address (loopback, multicast, "
                         "unspecified or link-local)")
    return str(ip)


def _hostname(value: str, option: str) -> str:
    if not _HOST_RE.match(value or ""):
        raise HAKitError(f"--{option}: {value!r} is not a valid host name (it must be the node's "
                         "`uname -n`: letters, digits, '-' and '.')")
    return value


def parse_node(spec: str, option: str = "node1") -> Node:
    """``NAME=IP`` or ``NAME=IP,IP2`` (IP2: a second corosync link)."""
    name, sep, addrs = (spec or "").partition("=")
    if not sep or not name or not addrs:
        raise HAKitError(f"--{option}: expected NAME=IP (e.g. storage1=10.0.0.1), got {spec!r}")
    parts = addrs.split(",")
    if len(parts) > 2:
        raise HAKitError(f"--{option}: at most two addresses (NAME=IP[,IP2]), got {spec!r}")
    return Node(_hostname(name.strip(), option), _ipv4(parts[0], option),
                _ipv4(parts[1], option) if len(parts) == 2 else None)


def parse_ipmi(spec: str) -> tuple[str, str]:
    name, sep, addr = (spec or "").partition("=")
    if not sep or not name or not addr:
        raise HAKitError(f"--ipmi: expected NODE=BMC_ADDRESS, got {spec!r}")
    addr = addr.strip()
    if not _HOST_RE.match(addr):
        raise HAKitError(f"--ipmi: {addr!r} is not an address or host name")
    return (_hostname(name.strip(), "ipmi"), addr)


def _abspath(value: str, option: str) -> str:
    if not value or not _PATH_RE.match(value):
        raise HAKitError(f"--{option}: expected an absolute path without spaces or quotes, got {value!r}")
    norm = posixpath.normpath(value)
    if norm != value.rstrip("/") or "/../" in value + "/" or norm == "/":
        raise HAKitError(f"--{option}: {value!r} must be a normalised absolute path (no '..', not '/')")
    return norm


def _under(path: str, parent: str) -> bool:
    return path.startswith(parent.rstrip("/") + "/")


def validate(p: HAParams) -> HAParams:
    """Check every parameter and their consistency; returns the normalised parameters."""
    if p.node1 is None or p.node2 is None:
        raise HAKitError("--node1 and --node2 are both required")
    if p.node1.name == p.node2.name:
        raise HAKitError(f"--node2: same node name as --node1 ({p.node1.name!r}): the pair needs two nodes")
    addresses = [a for n in p.nodes for a in (n.address, n.address2) if a]
    if len(set(addresses)) != len(addresses):
        raise HAKitError(f"--node2: the nodes share an address ({p.node1.spec()} / {p.node2.spec()})")
    if bool(p.node1.address2) != bool(p.node2.address2):
        raise HAKitError("--node1/--node2: give a second link address (NAME=IP,IP2) to both nodes or to neither")

    if not p.service_ip or "/" not in p.service_ip:
        raise HAKitError(f"--service-ip: expected IP/PREFIX (e.g. 192.168.10.100/24), got {p.service_ip!r}")
    try:
        iface = ipaddress.ip_interface(p.service_ip.strip())
    except ValueError:
        raise HAKitError(f"--service-ip: {p.service_ip!r} is not IP/PREFIX") from None
    if iface.version != 4:
        raise HAKitError(f"--service-ip: {p.service_ip!r}: only IPv4 is supported by this kit")
    _ipv4(str(iface.ip), "service-ip")
    if iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise HAKitError(f"--service-ip: {iface.ip} is the network or broadcast address of {iface.network}")
    if str(iface.ip) in addresses:
        raise HAKitError(f"--service-ip: {iface.ip} is also a node address; the service IP must be a free, "
                         "floating address")
    service_ip = f"{iface.ip}/{iface.network.prefixlen}"

    if not p.nic or not _NIC_RE.match(p.nic):
        raise HAKitError(f"--nic: expected a network interface name (e.g. eth0, bond0.10), got {p.nic!r}")

    if not p.device:
        raise HAKitError("--device: the LVM logical volume backing DRBD is required (e.g. /dev/vg_archipel/lv_vms)")
    device = _abspath(p.device, "device")
    if not device.startswith("/dev/") or device.count("/") < 3:
        raise HAKitError(f"--device: expected an LVM logical volume path /dev/VG/LV or /dev/mapper/VG-LV, "
                         f"got {p.device!r}")
    if device.startswith("/dev/drbd"):
        raise HAKitError(f"--device: {device} is a DRBD device; give the LVM volume underneath it")

    try:
        clients = ipaddress.ip_network(p.clients.strip(), strict=True) if p.clients else None
    except ValueError as exc:
        raise HAKitError(f"--clients: {p.clients!r} is not a network in CIDR form (e.g. 192.168.10.0/24): {exc}") from None
    if clients is None:
        raise HAKitError("--clients: the network allowed to mount the export (the hypervisors) is required")
    if clients.version != 4:
        raise HAKitError(f"--clients: {p.clients!r}: only IPv4 is supported by this kit")
    if clients.prefixlen == 0:
        raise HAKitError("--clients: 0.0.0.0/0 would export the VM disks to the whole world")

    if not _NAME_RE.match(p.cluster_name or ""):
        raise HAKitError(f"--cluster-name: expected a letter then up to 31 letters, digits, '_' or '-', "
                         f"got {p.cluster_name!r}")
    if not _NAME_RE.match(p.drbd_resource or ""):
        raise HAKitError(f"--drbd-resource: expected a letter then up to 31 letters, digits, '_' or '-', "
                         f"got {p.drbd_resource!r}")
    if not isinstance(p.drbd_minor, int) or not 0 <= p.drbd_minor <= 1048575:
        raise HAKitError(f"--drbd-minor: expected 0..1048575, got {p.drbd_minor!r}")
    if not isinstance(p.drbd_port, int) or not 1024 <= p.drbd_port <= 65535:
        raise HAKitError(f"--drbd-port: expected 1024..65535, got {p.drbd_port!r}")
    if p.drbd_version not in DRBD_VERSIONS:
        raise HAKitError(f"--drbd-version: expected one of {', '.join(DRBD_VERSIONS)}, got {p.drbd_version!r}")

    mount = _abspath(p.mount, "mount")
    if p.fstype not in FSTYPES:
        raise HAKitError(f"--fstype: expected one of {', '.join(FSTYPES)}, got {p.fstype!r}")
    export = _abspath(p.export, "export") if p.export else posixpath.join(mount, "drives")
    if not _under(export, mount):
        raise HAKitError(f"--export: {export} is not under --mount {mount}: it would not be on the replicated volume")
    infodir = posixpath.join(mount, "nfsinfo")
    if export == infodir or _under(export, infodir) or _under(infodir, export):
        raise HAKitError(f"--export: {export} overlaps the NFS state directory {infodir}")
    client_mount = _abspath(p.client_mount, "client-mount")

    for option, value in (("lease-time", p.lease_time), ("grace-time", p.grace_time)):
        if not isinstance(value, int) or not NFSD_MIN_TIME <= value <= NFSD_MAX_TIME:
            raise HAKitError(f"--{option}: nfsd accepts {NFSD_MIN_TIME}..{NFSD_MAX_TIME} seconds, got {value!r}")
    if p.grace_time < p.lease_time:
        raise HAKitError(f"--grace-time: {p.grace_time} s is shorter than the lease time ({p.lease_time} s): "
                         "clients would not all get a chance to reclaim their state after a failover")

    ipmi = tuple(p.ipmi)
    if ipmi:
        names = sorted(n for n, _ in ipmi)
        if names != sorted(n.name for n in p.nodes):
            raise HAKitError(f"--ipmi: give exactly one BMC per node ({p.node1.name}, {p.node2.name}), got "
                             f"{', '.join(names) or 'none'}")
        if not re.match(r"^[A-Za-z0-9_.@-]{1,64}$", p.ipmi_user or ""):
            raise HAKitError(f"--ipmi-user: invalid user name {p.ipmi_user!r}")
        order = {p.node1.name: 0, p.node2.name: 1}
        ipmi = tuple(sorted(ipmi, key=lambda item: order[item[0]]))

    return replace(p, service_ip=service_ip, device=device, clients=str(clients), mount=mount,
                   export=export, client_mount=client_mount, ipmi=ipmi)


# ------------------------------------------------------------- generators
def _header(p: HAParams, comment: str = "#") -> str:
    return (f"{comment} Generated by `archipel-admin ha generate` (cluster {p.cluster_name}); "
            f"regenerate rather than edit.\n")


def drbd_resource(p: HAParams) -> str:
    """The DRBD resource, /etc/drbd.d/<resource>.res on both nodes."""
    nine = p.drbd_version == "9"
    fencing = "fencing resource-and-stonith;" if p.stonith else "fencing resource-only;"
    lines = [_header(p).rstrip(),
             f"# DRBD {p.drbd_version} syntax: /etc/drbd.d/{p.drbd_resource}.res on both nodes.",
             f"resource {p.drbd_resource} {{",
             "    disk {",
             "        on-io-error detach;",
             *([f"        {fencing}"] if not nine else []),
             "    }",
             "    net {",
             "        protocol C;",
             *([f"        {fencing}"] if nine else []),
             "        after-sb-0pri discard-zero-changes;",
             "        after-sb-1pri discard-secondary;",
             "        after-sb-2pri disconnect;",
             "    }",
             "    handlers {",
             "        # While the peer is unreachable, forbid Pacemaker to promote the outdated copy.",
             ]
    if nine:
        lines += ['        fence-peer "/usr/lib/drbd/crm-fence-peer.9.sh";',
                  '        unfence-peer "/usr/lib/drbd/crm-unfence-peer.9.sh";']
    else:
        lines += ['        fence-peer "/usr/lib/drbd/crm-fence-peer.sh";',
                  '        after-resync-target "/usr/lib/drbd/crm-unfence-peer.sh";']
    lines.append("    }")
    for node_id, node in enumerate(p.nodes):
        lines += [f"    on {node.name} {{",
                  *([f"        node-id {node_id};"] if nine else []),
                  f"        device {p.drbd_device} minor {p.drbd_minor};",
                  f"        disk {p.device};",
                  f"        address ipv4 {node.address}:{p.drbd_port};",
                  "        meta-disk internal;",
                  "    }"]
    if nine:
        lines.append(f"    connection-mesh {{ hosts {p.node1.name} {p.node2.name}; }}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def corosync_conf(p: HAParams) -> str:
    links = 2 if p.node1.address2 else 1
    out = [_header(p).rstrip(),
           "# /etc/corosync/corosync.conf on both nodes; /etc/corosync/authkey (corosync-keygen) copied to both.",
           "totem {",
           "    version: 2",
           f"    cluster_name: {p.cluster_name}",
           "    transport: knet",
           "    crypto_cipher: aes256",
           "    crypto_hash: sha256",
           "    token: 3000",
           ]
    for link in range(links):
        out += ["    interface {", f"        linknumber: {link}", "    }"]
    out += ["}", "", "nodelist {"]
    for nodeid, node in enumerate(p.nodes, start=1):
        out += ["    node {", f"        name: {node.name}", f"        nodeid: {nodeid}",
                f"        ring0_addr: {node.address}"]
        if node.address2:
            out.append(f"        ring1_addr: {node.address2}")
        out.append("    }")
    out += ["}", "",
            "quorum {",
            "    provider: corosync_votequorum",
            "    # two_node: the survivor keeps quorum when its peer dies (implies wait_for_all:",
            "    # after a full cluster stop, both nodes must be seen once before anything starts).",
            "    two_node: 1",
            "}", "",
            "logging {",
            "    to_logfile: yes",
            "    logfile: /var/log/corosync/corosync.log",
            "    to_syslog: yes",
            "    timestamp: on",
            "}"]
    return "\n".join(out) + "\n"


def _nv(parent: ET.Element, owner: str, kind: str, items: dict[str, str], suffix: str = "") -> None:
    if not items:
        return
    set_id = f"{owner}-{kind}{suffix}"
    attrs = ET.SubElement(parent, kind, id=set_id)
    for name, value in items.items():
        ET.SubElement(attrs, "nvpair", id=f"{set_id}-{name}", name=name, value=str(value))


@dataclass
class _Primitive:
    id: str
    cls: str
    type: str
    provider: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    ops: list[dict[str, str]] = field(default_factory=list)   # name, interval, timeout, [role]

    def agent(self) -> str:
        return f"{self.cls}:{self.provider}:{self.type}" if self.provider else f"{self.cls}:{self.type}"


def _primitives(p: HAParams) -> dict[str, _Primitive]:
    ids, iface = p.ids, p.service_interface
    ops = lambda *rows: [dict(zip(("name", "interval", "timeout", "role"), row)) for row in rows]  # noqa: E731
    prims = {
        "drbd": _Primitive(ids["drbd"], "ocf", "drbd", "linbit", {"drbd_resource": p.drbd_resource},
                           ops=ops(("monitor", "15s", "20s", "Promoted"), ("monitor", "30s", "20s", "Unpromoted"),
                                   ("start", "0s", "240s"), ("stop", "0s", "100s"),
                                   ("promote", "0s", "90s"), ("demote", "0s", "90s"))),
        "fs": _Primitive(ids["fs"], "ocf", "Filesystem", "heartbeat",
                         {"device": p.drbd_device, "directory": p.mount, "fstype": p.fstype,
                          "options": "noatime"},
                         ops=ops(("monitor", "20s", "40s"), ("start", "0s", "60s"), ("stop", "0s", "60s"))),
        "nfs": _Primitive(ids["nfs"], "ocf", "nfsserver", "heartbeat",
                          {"nfs_shared_infodir": p.nfs_infodir, "nfs_ip": str(iface.ip),
                           "nfs_server_scope": str(iface.ip), "nfsv4_only": "true"},
                          ops=ops(("monitor", "10s", "20s"), ("start", "0s", "60s"), ("stop", "0s", "60s"))),
        "exportfs": _Primitive(ids["exportfs"], "ocf", "exportfs", "heartbeat",
                               {"clientspec": p.clients, "directory": p.export_path, "fsid": "1",
                                "options": "rw,sync,no_root_squash,no_subtree_check,sec=sys",
                                "wait_for_leasetime_on_stop": "true"},
                               # stop waits out one lease (wait_for_leasetime_on_stop)
                               ops=ops(("monitor", "10s", "20s"), ("start", "0s", "40s"),
                                       ("stop", "0s", f"{max(120, p.lease_time + 60)}s"))),
        "ip": _Primitive(ids["ip"], "ocf", "IPaddr2", "heartbeat",
                         {"ip": str(iface.ip), "cidr_netmask": str(iface.network.prefixlen), "nic": p.nic},
                         ops=ops(("monitor", "10s", "20s"))),
    }
    for node, bmc in p.ipmi:
        prims[f"st_{node}"] = _Primitive(
            f"st_ipmi_{node}", "stonith", "fence_ipmilan", None,
            {"ip": bmc, "username": p.ipmi_user, "password_script": f"cat /etc/archipel/ipmi-{node}.password",
             "lanplus": "1", "pcmk_host_list": node, "pcmk_delay_max": "15s"},
            ops=ops(("monitor", "60s", "20s")))
    return prims


def _properties(p: HAParams) -> dict[str, str]:
    return {"stonith-enabled": "true" if p.stonith else "false",
            "no-quorum-policy": "stop",
            "cluster-name": p.cluster_name}


RSC_DEFAULTS = {"resource-stickiness": "200", "migration-threshold": "3"}


def cib_xml(p: HAParams) -> str:
    """A complete CIB (empty status) for ``crm_verify --xml-file`` / ``cibadmin --replace``."""
    ids, prims = p.ids, _primitives(p)
    cib = ET.Element("cib", {"crm_feature_set": "3.16.1", "validate-with": "pacemaker-3.9", "epoch": "1",
                             "num_updates": "0", "admin_epoch": "0"})
    conf = ET.SubElement(cib, "configuration")
    crm_config = ET.SubElement(conf, "crm_config")
    _nv(crm_config, "cib-bootstrap-options", "cluster_property_set", _properties(p))
    crm_config[0].set("id", "cib-bootstrap-options")
    for nvpair in crm_config[0]:
        nvpair.set("id", f"cib-bootstrap-options-{nvpair.get('name')}")
    nodes = ET.SubElement(conf, "nodes")
    for nodeid, node in enumerate(p.nodes, start=1):
        ET.SubElement(nodes, "node", id=str(nodeid), uname=node.name)
    resources = ET.SubElement(conf, "resources")

    def primitive(parent: ET.Element, prim: _Primitive) -> None:
        attrs = {"id": prim.id, "class": prim.cls, "type": prim.type}
        if prim.provider:
            attrs["provider"] = prim.provider
        el = ET.SubElement(parent, "primitive", attrs)
        _nv(el, prim.id, "instance_attributes", prim.params)
        _nv(el, prim.id, "meta_attributes", prim.meta)
        if prim.ops:
            ops = ET.SubElement(el, "operations")
            for op in prim.ops:
                op_id = f"{prim.id}-{op['name']}-{op['interval']}" + (f"-{op['role']}" if op.get("role") else "")
                ET.SubElement(ops, "op", {"id": op_id, **{k: v for k, v in op.items() if v}})

    for key in sorted(k for k in prims if k.startswith("st_")):
        primitive(resources, prims[key])
    clone = ET.SubElement(resources, "clone", id=ids["ms"])
    _nv(clone, ids["ms"], "meta_attributes", {"promotable": "true", "promoted-max": "1", "promoted-node-max": "1",
                                              "clone-max": "2", "clone-node-max": "1", "notify": "true"})
    primitive(clone, prims["drbd"])
    group = ET.SubElement(resources, "group", id=ids["group"])
    for key in ("fs", "nfs", "exportfs", "ip"):
        primitive(group, prims[key])

    constraints = ET.SubElement(conf, "constraints")
    ET.SubElement(constraints, "rsc_order", {"id": ids["order"], "first": ids["ms"], "first-action": "promote",
                                             "then": ids["group"], "then-action": "start", "kind": "Mandatory"})
    ET.SubElement(constraints, "rsc_colocation", {"id": ids["colocation"], "rsc": ids["group"],
                                                  "with-rsc": ids["ms"], "with-rsc-role": "Promoted",
                                                  "score": "INFINITY"})
    for node, _ in p.ipmi:   # a fencing device never runs on the node it fences
        ET.SubElement(constraints, "rsc_location", {"id": f"l_st_ipmi_{node}", "rsc": f"st_ipmi_{node}",
                                                    "node": node, "score": "-INFINITY"})
    rsc_defaults = ET.SubElement(conf, "rsc_defaults")
    _nv(rsc_defaults, "rsc-options", "meta_attributes", RSC_DEFAULTS)
    rsc_defaults[0].set("id", "rsc-options")
    for nvpair in rsc_defaults[0]:
        nvpair.set("id", f"rsc-options-{nvpair.get('name')}")
    ET.SubElement(cib, "status")
    ET.indent(cib)
    return ET.tostring(cib, encoding="unicode") + "\n"


def _crm_value(value: str) -> str:
    return f'"{value}"' if re.search(r'[\s,;#"]', value) or value == "" else value


def crm_script(p: HAParams) -> str:
    """The same configuration in crmsh syntax (``crm configure load update cluster.crm``)."""
    ids, prims = p.ids, _primitives(p)

    def prim(pr: _Primitive) -> str:
        out = f"primitive {pr.id} {pr.agent()} \\\n"
        if pr.params:
            out += "    params " + " ".join(f"{k}={_crm_value(v)}" for k, v in pr.params.items()) + " \\\n"
        if pr.meta:
            out += "    meta " + " ".join(f"{k}={_crm_value(v)}" for k, v in pr.meta.items()) + " \\\n"
        for op in pr.ops:
            out += f"    op {op['name']} " + " ".join(f"{k}={v}" for k, v in op.items() if k != "name" and v) + " \\\n"
        return out.rstrip(" \\\n") + "\n"

    lines = [_header(p).rstrip(),
             "# Load on one node with: crm configure load update cluster.crm", ""]
    for key in sorted(k for k in prims if k.startswith("st_")):
        lines.append(prim(prims[key]))
    lines += [prim(prims["drbd"]),
              f"clone {ids['ms']} {ids['drbd']} \\\n    meta promotable=true promoted-max=1 promoted-node-max=1 "
              "clone-max=2 clone-node-max=1 notify=true\n"]
    for key in ("fs", "nfs", "exportfs", "ip"):
        lines.append(prim(prims[key]))
    lines += [f"group {ids['group']} {' '.join(p.group_members)}", "",
              f"order {ids['order']} Mandatory: {ids['ms']}:promote {ids['group']}:start",
              f"colocation {ids['colocation']} inf: {ids['group']} {ids['ms']}:Promoted"]
    for node, _ in p.ipmi:
        lines.append(f"location l_st_ipmi_{node} st_ipmi_{node} -inf: {node}")
    lines += ["",
              "property cib-bootstrap-options: " + " ".join(f"{k}={v}" for k, v in _properties(p).items()),
              "rsc_defaults rsc-options: " + " ".join(f"{k}={v}" for k, v in RSC_DEFAULTS.items())]
    return "\n".join(lines) + "\n"


def exports(p: HAParams) -> str:
    opts = _primitives(p)["exportfs"].params
    return (_header(p) +
            "# The export the exportfs resource creates on the active node (`exportfs -v` shows it).\n"
            "# Reference only: Pacemaker exports it, so keep this path OUT of /etc/exports on both nodes\n"
            "# (a static export would be tried on the passive node too, where the volume is not mounted).\n"
            f"{p.export_path} {p.clients}({opts['options']},fsid={opts['fsid']})\n")


def nfs_conf(p: HAParams) -> str:
    return (_header(p) +
            "# /etc/nfs.conf.d/archipel.conf on both nodes (nfs-utils >= 2.x reads nfs.conf.d).\n"
            "# The NFSv4 lease is how long a client may stay silent before the server drops its\n"
            "# state; the grace period is how long a (re)started server waits for clients to\n"
            "# reclaim theirs, refusing new opens/locks meanwhile.  90 s/90 s by default: every\n"
            "# failover would freeze VM disk I/O for at least 90 s.  nfsd's minimum is 10 s.\n"
            "[nfsd]\n"
            f"lease-time={p.lease_time}\n"
            f"grace-time={p.grace_time}\n"
            "# NFSv4 only (the hypervisors mount with vers=4.2): no NLM/statd state to fail over.\n"
            "vers3=n\n"
            "threads=16\n")


def hypervisor_fstab(p: HAParams) -> str:
    return (_header(p) +
            "# /etc/fstab line for every hypervisor (same path everywhere: the agent's vm_base_path).\n"
            "# hard: I/O blocks (guests pause on the error policy) during a failover instead of failing.\n"
            f"{p.service_interface.ip}:{p.export_path} {p.client_mount} nfs4 "
            "vers=4.2,proto=tcp,hard,timeo=100,retrans=3,noatime,_netdev 0 0\n")


def readme(p: HAParams) -> str:
    n1, n2 = p.node1, p.node2
    res = f"{p.drbd_resource}.res"
    stonith = (f"STONITH is **on**: one `fence_ipmilan` device per node (BMCs {', '.join(f'{n}={a}' for n, a in p.ipmi)}), "
               f"password read by `password_script` from `/etc/archipel/ipmi-<node>.password`, random "
               f"`pcmk_delay_max` against fence races; DRBD uses `fencing resource-and-stonith`."
               if p.stonith else
               "STONITH is **off** (`stonith-enabled=false`): no fencing device was given (`--ipmi NODE=BMC`). "
               "DRBD's resource-level fencing (`fencing resource-only` + `crm-fence-peer`) then keeps an outdated "
               "copy from being promoted, but a replication/cluster link failure with both nodes alive can still "
               "end in a DRBD split brain. Give the nodes a second corosync link (`--node1 NAME=IP,IP2`) and, "
               "for production, IPMI fencing.")
    return f"""# HA storage kit — cluster `{p.cluster_name}`

Generated by `archipel-admin ha generate` with the parameters in `params.json`; regenerate
(`archipel-admin ha generate … --force`) rather than edit, and validate with
`archipel-admin ha check DIR`. The storage runbook is `docs/STORAGE-RUNBOOK.md`.

Stack (active/passive, on `{n1.name}` and `{n2.name}`):
`{p.device}` (LVM) → DRBD `{p.drbd_resource}` (`{p.drbd_device}`, replicated between
{n1.address} and {n2.address} port {p.drbd_port}) → {p.fstype} on `{p.mount}` → NFSv4 server
(its state, normally `/var/lib/nfs`, in `{p.nfs_infodir}` on the replicated volume) → export
`{p.export_path}` to `{p.clients}` → service IP `{p.service_ip}` on `{p.nic}`. The hypervisors mount
`{p.service_interface.ip}:{p.export_path}` on `{p.client_mount}`.

| file | install as (both nodes unless said) | what it is |
|---|---|---|
| `{res}` | `/etc/drbd.d/{res}` | DRBD {p.drbd_version} resource: protocol C, internal metadata, split-brain policies, resource-level fencing through Pacemaker (`crm-fence-peer`) |
| `corosync.conf` | `/etc/corosync/corosync.conf` | knet transport with encryption (`corosync-keygen`, copy `/etc/corosync/authkey` to both), {'two links' if n1.address2 else 'one link'}, votequorum `two_node: 1` |
| `cib.xml` | load once: `cibadmin --replace --scope configuration --xml-file cib.xml` | the Pacemaker configuration (CIB XML) |
| `cluster.crm` | or load once: `crm configure load update cluster.crm` | the same configuration in crmsh syntax |
| `exports` | nothing (reference) | the export line the `exportfs` resource creates; keep it out of `/etc/exports` |
| `nfs.conf` | `/etc/nfs.conf.d/archipel.conf` | nfsd lease {p.lease_time} s / grace {p.grace_time} s, NFSv4 only |
| `hypervisor.fstab` | `/etc/fstab` on every **hypervisor** | the NFSv4 mount (hard, same path everywhere) |
| `params.json` | nothing | the parameters, read back by `ha check` |

## Pacemaker resources
- `{p.ids['ms']}`: promotable clone of `{p.ids['drbd']}` (`ocf:linbit:drbd`, from drbd-utils), one
  Promoted instance.
- `{p.ids['group']}`: a group, started in this order and stopped in reverse:
  `{p.ids['fs']}` (`Filesystem`, `{p.drbd_device}` on `{p.mount}`) → `{p.ids['nfs']}` (`nfsserver`,
  `nfs_shared_infodir={p.nfs_infodir}` so client state and grace survive a failover,
  `nfs_server_scope` = the service IP on both nodes so NFSv4.1+ clients may reclaim) →
  `{p.ids['exportfs']}` (`exportfs`, fsid=1, `wait_for_leasetime_on_stop`) → `{p.ids['ip']}`
  (`IPaddr2`). The IP comes last: clients reach the server only once it exports, and lose it first.
- `{p.ids['order']}`: promote DRBD, then start the group. `{p.ids['colocation']}`: the group runs
  where DRBD is Promoted.
- `resource-stickiness=200`: after a failover the group stays where it is when the failed node
  comes back (fail back by hand, at a quiet time).

## Two-node quorum and fencing
`two_node: 1` in corosync keeps the survivor quorate when its peer dies, so Pacemaker's
`no-quorum-policy=stop` (the safe default) is kept: `ignore` is a leftover from corosync 1.
{stonith}

## First start (summary)
1. On both nodes: `lvcreate` the volume `{p.device}`, install `{res}`, `drbdadm create-md {p.drbd_resource}`,
   `drbdadm up {p.drbd_resource}`.
2. On `{n1.name}` only: `drbdadm primary --force {p.drbd_resource}`, `mkfs.{p.fstype} {p.drbd_device}`, mount it,
   `mkdir {p.export_path} {p.nfs_infodir}`, copy `/var/lib/nfs/.` into `{p.nfs_infodir}`, unmount,
   `drbdadm secondary {p.drbd_resource}`.
3. On both: install `corosync.conf` + authkey and `nfs.conf`; `systemctl disable --now nfs-server drbd`
   (Pacemaker starts them); start corosync and pacemaker; load `cib.xml` or `cluster.crm` once.
"""


def generate(p: HAParams) -> dict[str, str]:
    """Validated parameters -> ``{file name: contents}`` (see :data:`FILES`)."""
    p = validate(p)
    return {
        f"{p.drbd_resource}.res": drbd_resource(p),
        "corosync.conf": corosync_conf(p),
        "cib.xml": cib_xml(p),
        "cluster.crm": crm_script(p),
        "exports": exports(p),
        "nfs.conf": nfs_conf(p),
        "hypervisor.fstab": hypervisor_fstab(p),
        "params.json": json.dumps(p.to_json(), indent=2) + "\n",
        "README.md": readme(p),
    }


EXAMPLE = HAParams(
    node1=Node("storage1", "10.0.0.1", "192.168.10.11"),
    node2=Node("storage2", "10.0.0.2", "192.168.10.12"),
    service_ip="192.168.10.100/24",
    nic="eth0",
    device="/dev/vg_archipel/lv_vms",
    clients="192.168.10.0/24",
)
