"""The one place that decides whether a user's ``<domain>`` may be defined.

libvirt runs whatever a definition asks for with the rights of libvirtd
(root on our hypervisors): a disk on ``/etc/shadow``, a serial port on a host
socket, ``qemu:commandline``, a host PCI device.  Archipel defined user XML
as-is; we refuse, with an error naming the offending element, anything that
reaches outside the VM's own folder or onto the host.

How it decides
--------------
1. The text is parsed defensively (:func:`parse_untrusted`): size limit, no
   DTD, no entities, no network, no XInclude, no processing instructions.
2. Identity: root ``<domain>``, allowed ``type``, ``<uuid>`` and ``<name>``
   of the entity (each set when absent).
3. Sizes: memory and vCPUs within the host's capacity and the configured
   maxima (``vm_max_memory``, ``vm_max_vcpus``), quota or not.
4. One rule per feature (``_RULES``): host devices, disks, char devices,
   interfaces (``clean-traffic`` on every NIC of a non-admin's VM),
   graphics, firmware paths...  Each rule that accepts a host path records
   it as judged.
5. A sweep refuses every absolute path no rule judged unless it lies
   inside the VM folder.
6. The allowlist (:mod:`archipelagent.virt.allowlist`): every element and
   attribute must be a known safe one, with an allowed value where it
   matters; what the table does not know is refused.  A libvirt feature we
   do not know yet cannot pass.

Callers must define the *returned* element (``etree.tostring(el)``), never
the original text: the checks hold for what was parsed, and a few harmless
normalisations are applied (see :func:`check_domain`).

Not covered here (by design): quotas (see :func:`memory_kib`,
:func:`vcpus`, :func:`disk_sources`) and the *contents* of image files - a
qcow2 in the VM folder may name a backing file in its header, which the
storage module must check (``qemu-img info --backing-chain``) before use.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import re
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from lxml import etree

from archipelagent import xmlsafe
from archipelagent.errors import ArchipelError
from archipelagent.virt import allowlist

__all__ = [
    "PolicyContext", "PolicyViolation", "check_domain", "parse_untrusted",
    "element_path", "memory_kib", "vcpus", "disk_sources", "set_disk_error_policy",
    "MAX_XML_BYTES", "DEFAULT_EMULATORS", "DEFAULT_FIRMWARE_PATHS", "NIC_FILTER",
]

MAX_XML_BYTES = xmlsafe.MAX_XML_BYTES

DEFAULT_EMULATORS = (
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/qemu-system-i386",
    "/usr/bin/kvm",
    "/usr/bin/qemu-kvm",
    "/usr/libexec/qemu-kvm",
)

# Read-only firmware shipped by the distribution (loader and nvram templates).
DEFAULT_FIRMWARE_PATHS = (
    Path("/usr/share/OVMF"),
    Path("/usr/share/qemu"),
    Path("/usr/share/seabios"),
    Path("/usr/share/edk2"),
    Path("/usr/share/AAVMF"),
)

RNG_SOURCES = frozenset({"/dev/random", "/dev/urandom", "/dev/hwrng"})

# Char device types that touch nothing on the host, or need a path in the VM folder.
# tcp/udp are refused, loopback or not: a guest would reach the host's own
# services on 127.0.0.1 (LDAP, ejabberd's HTTP API, libvirt's migration ports).
CHAR_TYPES_SAFE = frozenset({"pty", "null", "vc", "spicevmc", "spiceport", "qemu-vdagent"})
CHAR_TYPES_PATH = frozenset({"file", "pipe", "unix", "dev"})
CHAR_TYPES_NET = frozenset({"tcp", "udp"})

# libvirt's anti-spoofing filter (MAC, IP, ARP; libvirt-daemon-config-nwfilter):
# on every NIC of a VM whose owner is not an admin.
NIC_FILTER = "clean-traffic"
CHAR_DEVICE_TAGS = ("serial", "parallel", "console", "channel")

# libvirt writes guest-agent sockets here itself; a path copied from a live
# definition is dropped so that libvirt generates it again.
LIBVIRT_CHANNEL_DIR = "/var/lib/libvirt/qemu/channel/target/"

# Elements that may appear once at most: libvirt reads only the first, we
# would check only the first.
SINGLETONS = ("name", "uuid", "memory", "currentMemory", "maxMemory", "vcpu", "os",
              "devices", "memoryBacking", "cpu", "resource", "on_poweroff",
              "on_reboot", "on_crash")

XINCLUDE_NS = "http://www.w3.org/2001/XInclude"


class PolicyViolation(ArchipelError):
    """A definition was refused; ``element`` says where, ``reason`` says why."""

    code = -50
    condition = "not-acceptable"

    def __init__(self, element: str, reason: str):
        super().__init__(f"definition refused: {element}: {reason}")
        self.element = element
        self.reason = reason


@dataclass(frozen=True)
class PolicyContext:
    """What one VM entity may use; built by the agent from config and state."""

    uuid: str
    name: str
    vm_folder: Path
    library_paths: tuple[Path, ...] = ()
    allowed_networks: frozenset[str] | None = None   # the owner's: network rights + vm_allowed_networks; None: any
    allowed_bridges: frozenset[str] = frozenset()      # host bridges, for admins' VMs only
    allow_host_devices: bool = False
    domain_types: frozenset[str] = frozenset({"kvm", "qemu"})
    emulators: tuple[str, ...] = DEFAULT_EMULATORS
    firmware_paths: tuple[Path, ...] = DEFAULT_FIRMWARE_PATHS
    # The VM's owner is an admin: host tuning (memtune, cputune...) and any
    # NIC filter; else every NIC gets NIC_FILTER.
    owner_is_admin: bool = False
    # Size caps, whatever the quotas say (None: no cap of that kind).
    host_memory_kib: int | None = None
    host_cpus: int | None = None
    max_memory_kib: int | None = None       # [VIRTUALMACHINE] vm_max_memory
    max_vcpus: int | None = None            # [VIRTUALMACHINE] vm_max_vcpus


# --------------------------------------------------------------- parsing

def parse_untrusted(xml: str | bytes) -> etree._Element:
    """Parse a user's definition with the agent's one safe parser (:mod:`archipelagent.xmlsafe`)."""
    try:
        return xmlsafe.parse(xml, max_bytes=MAX_XML_BYTES)
    except xmlsafe.UnsafeXML as exc:
        raise PolicyViolation(exc.where, exc.reason) from None


# --------------------------------------------------------------- naming

def _display_name(el: etree._Element) -> str:
    qname = etree.QName(el)
    if qname.namespace is None:
        return qname.localname
    if el.prefix:
        return f"{el.prefix}:{qname.localname}"
    return f"{{{qname.namespace}}}{qname.localname}"


def element_path(el: etree._Element) -> str:
    """A readable path from the root, e.g. ``devices/disk[2]/source``."""
    parts = []
    while el.getparent() is not None:
        parent = el.getparent()
        name = _display_name(el)
        same = [sib for sib in parent if sib.tag == el.tag]
        if len(same) > 1:
            name += f"[{same.index(el) + 1}]"
        parts.append(name)
        el = parent
    return "/".join(reversed(parts)) or _display_name(el)


def _refuse(el: etree._Element, reason: str) -> PolicyViolation:
    return PolicyViolation(element_path(el), reason)


# --------------------------------------------------------------- walking

def _walk(root: etree._Element) -> Iterator[etree._Element]:
    """Every element except the free-form top-level ``<metadata>``."""
    yield root
    for child in root.iterchildren(etree.Element):
        if child.tag == "metadata":
            continue
        yield from child.iter(etree.Element)


def _devices(root: etree._Element, *tags: str) -> Iterator[etree._Element]:
    for devices in root.iterchildren("devices"):
        yield from devices.iterchildren(*tags)


class _Judged:
    """Path-bearing values a rule has already decided on; the sweep skips them."""

    def __init__(self):
        self._values: set[tuple[etree._Element, str | None]] = set()
        self._trees: set[etree._Element] = set()
        self._host: set[etree._Element] = set()

    def host_device(self, el: etree._Element) -> None:
        """An allowed host device: judged as a whole, the allowlist does not enter it."""
        self._trees.add(el)
        self._host.add(el)

    def is_host_device(self, el: etree._Element) -> bool:
        return el in self._host

    def value(self, el: etree._Element, attr: str | None = None) -> None:
        self._values.add((el, attr))

    def tree(self, el: etree._Element) -> None:
        self._trees.add(el)

    def has_value(self, el: etree._Element, attr: str | None) -> bool:
        return (el, attr) in self._values

    def has_tree(self, el: etree._Element) -> bool:
        return el in self._trees

    def covers(self, el: etree._Element) -> bool:
        """``el`` lies in a subtree already judged as a whole."""
        return any(node in self._trees for node in itertools.chain([el], el.iterancestors()))


# --------------------------------------------------------------- paths

def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _within(real: Path, base: Path) -> bool:
    base = _real(base)
    return real != base and real.is_relative_to(base)


def _require_path(el: etree._Element, attr: str | None, ctx: PolicyContext,
                  judged: _Judged, *, label: str = "path",
                  also: Iterable[Path] = (), also_name: str = "") -> None:
    """The value (attribute, or text when ``attr`` is None) must resolve,
    symlinks and ``..`` included, inside the VM folder or one of ``also``."""
    value = el.text if attr is None else el.get(attr)
    if value is None:
        return
    if not os.path.isabs(value):
        raise _refuse(el, f"{label} '{value}' is not an absolute path")
    try:
        real = _real(value)
    except (OSError, ValueError):
        raise _refuse(el, f"{label} '{value}' cannot be resolved") from None
    bases = (ctx.vm_folder, *also)
    if any(_within(real, base) for base in bases):
        judged.value(el, attr)
        return
    where = "the VM folder" + (f" and {also_name}" if also_name else "")
    shown = f"'{value}'" if str(real) == os.path.normpath(value) else f"'{value}' resolves to '{real}',"
    raise _refuse(el, f"{label} {shown} is outside {where}")


def _in_any(value: str | None, bases: Iterable[Path]) -> bool:
    if not value or not os.path.isabs(value):
        return False
    try:
        real = _real(value)
    except (OSError, ValueError):
        return False
    return any(_within(real, base) for base in bases)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_device(el: etree._Element, ctx: PolicyContext, judged: _Judged, what: str) -> None:
    """Host devices need the hypervisor's ``allow_host_devices``."""
    if not ctx.allow_host_devices:
        raise _refuse(el, f"{what} gives the VM a host device; not allowed on this hypervisor")
    judged.host_device(el)


# --------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"\d{1,20}")
_SCALE_LETTERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def _unit_bytes(unit: str) -> int | None:
    """Bytes per unit, as libvirt's virScaleInteger reads it (case-insensitive)."""
    low = unit.lower()
    if low in ("b", "byte", "bytes"):
        return 1
    exponent = _SCALE_LETTERS.get(low[:1])
    if exponent is None:
        return None
    rest = low[1:]
    if rest in ("", "ib"):
        return 1024 ** exponent
    if rest == "b":
        return 1000 ** exponent
    return None


def _to_kib(value: str | None, unit: str | None, where: etree._Element, what: str) -> int:
    """A size with its unit (libvirt's default KiB) in KiB, rounded up."""
    text = (value or "").strip()
    if not _SIZE_RE.fullmatch(text):
        raise _refuse(where, f"{what} '{value}' is not a non-negative integer")
    per_unit = _unit_bytes(unit) if unit is not None else 1024
    if per_unit is None:
        raise _refuse(where, f"unknown unit '{unit}'")
    return -(-int(text) * per_unit // 1024)


def _element_kib(el: etree._Element, what: str) -> int:
    return _to_kib(el.text, el.get("unit"), el, what)


def memory_kib(domain_el: etree._Element) -> int:
    """Guest memory at boot in KiB, for quota checks.

    libvirt sizes the guest from its NUMA cells plus memory devices when
    present, whatever ``<memory>`` says; the larger figure is returned so a
    small ``<memory>`` cannot hide a large NUMA layout.
    """
    memory = domain_el.find("memory")
    declared = _element_kib(memory, "memory") if memory is not None else 0
    cells = sum(_to_kib(cell.get("memory"), cell.get("unit"), cell, "NUMA cell memory")
                for cell in domain_el.iterfind("cpu/numa/cell"))
    dimms = sum(_element_kib(size, "memory device size")
                for size in domain_el.iterfind("devices/memory/target/size"))
    return max(declared, cells + dimms)


def vcpus(domain_el: etree._Element) -> int:
    """Maximum vCPUs (libvirt's default is 1), for quota checks."""
    vcpu = domain_el.find("vcpu")
    if vcpu is None:
        return 1
    text = (vcpu.text or "").strip()
    if not text.isdigit():
        raise _refuse(vcpu, f"vcpu count '{vcpu.text}' is not a positive integer")
    return int(text)


def disk_sources(domain_el: etree._Element) -> list[Path]:
    """Main source of every disk (file or block device), in document order.

    Backing stores are left out: they are shared read-only images, not the
    VM's own usage.  Empty cdrom drives have no source.
    """
    sources = []
    for disk in _devices(domain_el, "disk"):
        source = disk.find("source")
        if source is None:
            continue
        path = source.get("file") or source.get("dev")
        if path:
            sources.append(Path(path))
    return sources


# --------------------------------------------------------------- identity

def _check_root(root: etree._Element) -> None:
    if root.tag != "domain":
        raise PolicyViolation(_display_name(root), "the definition must be a <domain> element")


def _check_namespaces(root: etree._Element) -> None:
    """Foreign elements/attributes are hypervisor-specific passthroughs
    (``qemu:commandline``, ``qemu:override``...); only ``<metadata>`` may hold them."""
    for el in root.iter(etree.Element):
        if etree.QName(el).namespace == XINCLUDE_NS:
            raise _refuse(el, "XInclude is not accepted")
    for el in _walk(root):
        if etree.QName(el).namespace is not None:
            raise _refuse(el, "elements in a foreign namespace are only accepted inside <metadata>")
        for attr in el.attrib:
            namespace = etree.QName(attr).namespace
            if namespace is not None:
                prefix = next((p for p, ns in el.nsmap.items() if ns == namespace and p), None)
                shown = f"{prefix}:{etree.QName(attr).localname}" if prefix else attr
                raise _refuse(el, f"attribute '{shown}' is in a foreign namespace")


def _check_identity(root: etree._Element, ctx: PolicyContext) -> None:
    """The definition belongs to this entity: its type, uuid and name."""
    dom_type = root.get("type")
    if dom_type not in ctx.domain_types:
        allowed = ", ".join(sorted(ctx.domain_types))
        raise PolicyViolation("domain", f"domain type '{dom_type}' is not allowed (allowed: {allowed})")
    for tag in SINGLETONS:
        found = root.findall(tag)
        if len(found) > 1:
            raise _refuse(found[1], f"<{tag}> may appear only once")
    uuid_el = root.find("uuid")
    if uuid_el is None:             # the entity's (alloc with a <domain>: the client cannot know it)
        uuid_el = etree.Element("uuid")
        uuid_el.text = ctx.uuid
        root.insert(0, uuid_el)
    try:
        same = uuidlib.UUID((uuid_el.text or "").strip()) == uuidlib.UUID(ctx.uuid)
    except ValueError:
        same = False
    if not same:
        raise _refuse(uuid_el, f"'{uuid_el.text}' is not this VM's uuid {ctx.uuid}")
    uuid_el.text = ctx.uuid.lower()     # libvirt sees exactly the form we compared
    name_el = root.find("name")
    if name_el is None:
        name_el = etree.SubElement(root, "name")
        name_el.text = ctx.name
        root.insert(0, name_el)
    elif name_el.text != ctx.name:
        raise _refuse(name_el, f"'{name_el.text}' is not this VM's name '{ctx.name}' (rename it instead)")


def _check_sizes(root: etree._Element) -> None:
    memory = root.find("memory")
    if memory is None:
        raise PolicyViolation("memory", "missing")
    for tag in ("memory", "currentMemory", "maxMemory"):
        el = root.find(tag)
        if el is not None and _element_kib(el, tag) <= 0:
            raise _refuse(el, f"{tag} must be positive")
    memory_kib(root)    # NUMA cells and memory devices parse too
    vcpu = root.find("vcpu")
    if vcpu is not None:
        count = vcpus(root)
        if count <= 0:
            raise _refuse(vcpu, "vcpu count must be positive")
        current = vcpu.get("current")
        if current is not None and not (current.isdigit() and 0 < int(current) <= count):
            raise _refuse(vcpu, f"current vcpus '{current}' must be between 1 and {count}")


def _size_limits(ctx: PolicyContext) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(limit, what it is) for memory (KiB) and vCPUs, from the host and the config."""
    memory, cpus = [], []
    if ctx.host_memory_kib:
        memory.append((ctx.host_memory_kib, "this host's memory"))
    if ctx.max_memory_kib:
        memory.append((ctx.max_memory_kib, "the hypervisor's maximum (vm_max_memory)"))
    if ctx.host_cpus:
        cpus.append((ctx.host_cpus, "this host's CPUs"))
    if ctx.max_vcpus:
        cpus.append((ctx.max_vcpus, "the hypervisor's maximum (vm_max_vcpus)"))
    return memory, cpus


def _check_size_limits(root: etree._Element, ctx: PolicyContext) -> None:
    """Memory and vCPUs capped by the host's capacity and the configured maxima,
    whatever the quotas say (an unlimited user must not take the whole host)."""
    memory_caps, cpu_caps = _size_limits(ctx)
    if memory_caps:
        limit, what = min(memory_caps)
        sizes = [(memory_kib(root), root.find("memory"))]
        max_memory = root.find("maxMemory")
        if max_memory is not None:
            sizes.append((_element_kib(max_memory, "maxMemory"), max_memory))
        for kib, el in sizes:
            if kib > limit:
                raise _refuse(el, f"{kib} KiB is more than {what}: {limit} KiB")
    if cpu_caps:
        limit, what = min(cpu_caps)
        count = vcpus(root)
        if count > limit:
            raise PolicyViolation("vcpu", f"{count} vCPUs is more than {what}: {limit}")


def _strip_description(root: etree._Element) -> None:
    """Archipel kept ``jid::::password`` in ``<description>``; we never keep
    secrets in domain XML, so whatever a user puts there is dropped."""
    for desc in root.findall("description"):
        root.remove(desc)


# --------------------------------------------------------------- rules

def _rule_os(root, ctx, judged):
    """Kernel, firmware and ACPI tables are read by QEMU from host paths."""
    library = (ctx.library_paths, "the read-only library")
    firmware = ((*ctx.firmware_paths, *ctx.library_paths), "the firmware and library folders")
    for os_el in root.iterchildren("os"):
        for child in os_el.iterchildren(etree.Element):
            if child.tag in ("kernel", "initrd", "dtb"):
                _require_path(child, None, ctx, judged, label=child.tag, also=library[0], also_name=library[1])
            elif child.tag == "loader":
                _require_path(child, None, ctx, judged, label="loader", also=firmware[0], also_name=firmware[1])
            elif child.tag == "nvram":
                _check_nvram(child, ctx, judged, firmware)
            elif child.tag == "acpi":
                for table in child.iter("table"):
                    _require_path(table, None, ctx, judged, label="ACPI table",
                                  also=library[0], also_name=library[1])
            elif child.tag in ("bootloader", "bootloader_args", "init", "initarg", "initdir"):
                raise _refuse(child, "runs a program of the host; not accepted")
            elif child.tag == "cmdline":
                judged.value(child)


def _check_nvram(nvram, ctx, judged, firmware):
    """NVRAM is written by the guest: only in the VM folder; its template is read-only."""
    _require_path(nvram, None, ctx, judged, label="nvram")
    _require_path(nvram, "template", ctx, judged, label="nvram template",
                  also=firmware[0], also_name=firmware[1])
    if nvram.get("type", "file") != "file":
        raise _refuse(nvram, f"nvram type '{nvram.get('type')}' is not allowed")
    for source in nvram.iterchildren("source"):
        _require_path(source, "file", ctx, judged, label="nvram file")


def _rule_sysinfo(root, ctx, judged):
    """fw_cfg entries may load a host file into the guest."""
    for sysinfo in root.iterchildren("sysinfo"):
        for entry in sysinfo.iter("entry"):
            _require_path(entry, "file", ctx, judged, label="fw_cfg file",
                          also=ctx.library_paths, also_name="the read-only library")
        judged.tree(sysinfo)    # SMBIOS strings are free text


def _rule_lifecycle(root, ctx, judged):
    for on_crash in root.iterchildren("on_crash"):
        if (on_crash.text or "").strip().startswith("coredump"):
            raise _refuse(on_crash, "core dumps are written on the host; not accepted")


def _rule_seclabels(root, ctx, judged):
    """The site's security driver decides confinement, not the user."""
    for label in _walk(root):
        if label.tag != "seclabel":
            continue
        if label.get("relabel") == "no":
            raise _refuse(label, "relabel='no' would bypass the security driver")
        if label.get("type") in ("none", "static") or label.get("model") == "none":
            raise _refuse(label, f"seclabel type '{label.get('type')}' chooses the confinement; "
                                 "the hypervisor's security driver decides")
        for child in list(label):
            if child.tag == "baselabel" or (child.tag == "label" and label.getparent() is not root):
                raise _refuse(child, "a user-chosen security label is not accepted")
            if child.tag in ("label", "imagelabel"):      # output only for dynamic labels
                label.remove(child)


def _rule_memory_backing(root, ctx, judged):
    for source in root.iterfind("memoryBacking/source"):
        if source.get("type") == "file":
            raise _refuse(source, "guest memory backed by a host file is not accepted")


def _rule_resource(root, ctx, judged):
    for partition in root.iterfind("resource/partition"):
        if (partition.text or "").strip() != "/machine":
            raise _refuse(partition, "the cgroup partition is chosen by the hypervisor")
        judged.value(partition)


def _rule_harmless_text(root, ctx, judged):
    """Free text and host-side tuning that may look like paths."""
    for el in root.iterchildren("title"):
        judged.tree(el)
    if ctx.owner_is_admin:          # host block device names: tuning, admins only (allowlist)
        for el in root.iterfind("blkiotune/device/path"):
            judged.tree(el)
    for disk in _devices(root, "disk"):
        for el in disk.iterchildren("serial", "vendor", "product", "wwn"):
            judged.value(el)


def _rule_emulator(root, ctx, judged):
    for emulator in _devices(root, "emulator"):
        if (emulator.text or "").strip() not in ctx.emulators:
            raise _refuse(emulator, f"emulator '{emulator.text}' is not one of this hypervisor's")
        judged.value(emulator)


def _rule_forbidden(root, ctx, judged):
    """Features that always share something of the host with the guest."""
    reasons = {
        "shmem": "shared host memory between guests is not accepted",
        "filesystem": "host directory passthrough is not accepted",
        "lease": "host lock space leases are not accepted",
    }
    for el in _walk(root):
        if el.tag in reasons:
            raise _refuse(el, reasons[el.tag])


def _rule_host_devices(root, ctx, judged):
    for el in _walk(root):
        if el.tag == "hostdev":
            _host_device(el, ctx, judged, "<hostdev>")
    for el in _devices(root, "redirdev"):
        _host_device(el, ctx, judged, "<redirdev> USB redirection")
    for el in _devices(root, "smartcard"):
        _host_device(el, ctx, judged, f"smartcard mode '{el.get('mode')}'")
    for el in _devices(root, "input"):
        if el.get("type") in ("passthrough", "evdev"):
            _host_device(el, ctx, judged, f"input type '{el.get('type')}'")


def _rule_disks(root, ctx, judged):
    for disk in _devices(root, "disk"):
        _check_disk(disk, ctx, judged)
    set_disk_error_policy(root)


# Guest disks pause the guest on an I/O error instead of reporting it to the
# guest (which may then corrupt its filesystem); the agent resumes such guests
# once the storage recovers (archipelagent/storage/health.py).
DISK_ERROR_POLICY = "stop"


def set_disk_error_policy(root: etree._Element) -> None:
    """Every writable file/block disk gets ``error_policy``/``rerror_policy`` 'stop' on
    its ``<driver>`` (``<driver name='qemu'/>`` is added when absent).  CD-ROMs,
    floppies and read-only disks are left as they are (QEMU refuses werror there)."""
    for disk in _devices(root, "disk"):
        if disk.get("type", "file") not in ("file", "block") or disk.get("device", "disk") != "disk":
            continue
        if disk.find("readonly") is not None:
            continue
        driver = disk.find("driver")
        if driver is None:
            driver = etree.Element("driver", name="qemu")
            disk.insert(0, driver)
        driver.set("error_policy", DISK_ERROR_POLICY)
        driver.set("rerror_policy", DISK_ERROR_POLICY)


def _check_disk(disk, ctx, judged):
    """Disks are files in the VM folder; read-only ones may come from the library."""
    disk_type = disk.get("type", "file")
    device = disk.get("device", "disk")
    if device == "lun":
        _host_device(disk, ctx, judged, "device='lun' (SCSI passthrough)")
    if disk_type == "block":
        _host_device(disk, ctx, judged, "disk type 'block'")
        return
    if judged.has_tree(disk):
        return
    if disk_type != "file":
        raise _refuse(disk, f"disk type '{disk_type}' is not allowed (only 'file')")
    for child in disk.iter("mirror", "encryption", "auth", "reservations"):
        raise _refuse(child, f"<{child.tag}> is not accepted in a user definition")
    readonly = device == "cdrom" or disk.find("readonly") is not None
    library = ctx.library_paths if readonly else ()
    for source in disk.iterchildren("source"):
        if not readonly and _in_any(source.get("file"), ctx.library_paths):
            raise _refuse(source, f"file '{source.get('file')}' is in the read-only library; "
                                  "only a cdrom or a <readonly/> disk may use it")
        _require_path(source, "file", ctx, judged, label="file", also=library,
                      also_name="the read-only library" if readonly else "")
        for store in source.iterchildren("dataStore"):
            _check_store(store, ctx, judged, read_only=False)
    for store in disk.iter("backingStore"):
        _check_store(store, ctx, judged, read_only=True)


def _check_store(store, ctx, judged, *, read_only):
    """A backing or data store: an empty ``<backingStore/>`` means none."""
    if len(store) == 0 and not store.attrib:
        return
    if store.get("type", "file") != "file":
        raise _refuse(store, f"{store.tag} type '{store.get('type')}' is not allowed (only 'file')")
    library = ctx.library_paths if read_only else ()
    for source in store.iterchildren("source"):
        _require_path(source, "file", ctx, judged, label="file", also=library,
                      also_name="the read-only library" if read_only else "")


def _rule_chardevs(root, ctx, judged):
    for dev in _devices(root, *CHAR_DEVICE_TAGS):
        _check_char_backend(dev, dev.get("type", "pty"), ctx, judged)
        for log in dev.iterchildren("log"):
            _require_path(log, "file", ctx, judged, label="log file")


def _check_char_backend(owner, char_type, ctx, judged):
    """Where a character device's host end goes: nowhere, a file in the VM
    folder, or a loopback socket."""
    if char_type == "pty":
        owner.attrib.pop("tty", None)               # runtime state from a live definition
        for source in owner.findall("source"):
            owner.remove(source)
    elif char_type in CHAR_TYPES_SAFE:
        pass
    elif char_type in CHAR_TYPES_PATH:
        for source in owner.iterchildren("source"):
            path = source.get("path")
            if (char_type == "unix" and owner.tag == "channel" and path
                    and path.startswith(LIBVIRT_CHANNEL_DIR) and ".." not in path):
                del source.attrib["path"]
                continue
            _require_path(source, "path", ctx, judged, label=f"{char_type} path")
    elif char_type in CHAR_TYPES_NET:
        raise _refuse(owner, f"a {char_type} character device opens a network socket on the host "
                             "(even on loopback it reaches the host's services); not accepted")
    else:
        raise _refuse(owner, f"character device type '{char_type}' is not allowed")


def _rule_interfaces(root, ctx, judged):
    for iface in _devices(root, "interface"):
        _check_interface(iface, ctx, judged)


_INTERFACE_CHILD_REASONS = {
    "script": "runs a script on the host",
    "downscript": "runs a script on the host",
    "virtualport": "sets host switch port parameters",
    "vlan": "chooses a VLAN of the host network",
}


def _check_interface(iface, ctx, judged):
    """Only libvirt networks and bridges the user may use, nothing on the host side."""
    iface_type = iface.get("type")
    if iface_type == "hostdev":
        _host_device(iface, ctx, judged, "interface type 'hostdev'")
        return
    if iface_type not in ("network", "bridge"):
        raise _refuse(iface, f"interface type '{iface_type}' is not allowed (only 'network' and 'bridge')")
    for child in iface.iterchildren(etree.Element):
        if child.tag in _INTERFACE_CHILD_REASONS:
            raise _refuse(child, _INTERFACE_CHILD_REASONS[child.tag])
        if child.tag == "backend" and any(child.get(a) for a in ("tap", "vhost", "logFile")):
            raise _refuse(child, "opens a host device or file for the interface")
        if child.tag == "target" and child.get("managed") == "no":
            raise _refuse(child, "reuses an existing host tap device")
    source = iface.find("source")
    if source is None:
        raise _refuse(iface, f"interface type '{iface_type}' without a <source>")
    if source.get("portid"):
        raise _refuse(source, "attaching to an existing network port is not accepted")
    if iface_type == "network":
        network = source.get("network")
        if not network or (ctx.allowed_networks is not None and network not in ctx.allowed_networks):
            raise _refuse(source, f"network '{network}' is not granted to the VM's owner "
                                  "(its manager grants 'use': archipel:hypervisor:network grant)")
    else:
        bridge = source.get("bridge")
        if not ctx.owner_is_admin:  # host bridges are for admins; others use a network granted to them
            raise _refuse(source, f"bridge '{bridge}' is a host bridge: only an admin's VM may use one; "
                                  "attach the NIC to a network granted to you")
        if bridge not in ctx.allowed_bridges:
            raise _refuse(source, f"bridge '{bridge}' is not allowed")
    if not ctx.owner_is_admin:
        _require_nic_filter(iface)


def _require_nic_filter(iface: etree._Element) -> None:
    """A non-admin's NIC always has libvirt's anti-spoofing filter, and only it:
    added when absent, any other filter refused (parameters too: the allowlist)."""
    filters = iface.findall("filterref")
    for ref in filters:
        if ref.get("filter") != NIC_FILTER:
            raise _refuse(ref, f"filter '{ref.get('filter')}' is not allowed; the VM's interfaces "
                               f"use '{NIC_FILTER}' (anti-spoofing)")
    if len(filters) > 1:
        raise _refuse(filters[1], "<filterref> may appear only once")
    if not filters:
        etree.SubElement(iface, "filterref", filter=NIC_FILTER)


def _rule_graphics(root, ctx, judged):
    """Consoles listen on loopback only; the agent's proxy exposes them."""
    for graphics in _devices(root, "graphics"):
        _check_graphics(graphics, ctx, judged)


def _check_graphics(graphics, ctx, judged):
    gtype = graphics.get("type")
    if gtype not in ("vnc", "spice"):
        raise _refuse(graphics, f"graphics type '{gtype}' is not allowed (only 'vnc' and 'spice')")
    judged.value(graphics, "passwd")
    listen = graphics.get("listen")
    if listen is not None and not _is_loopback(listen):
        raise _refuse(graphics, f"listens on '{listen}'; only 127.0.0.1 is allowed")
    _require_path(graphics, "socket", ctx, judged, label="socket")
    listens = graphics.findall("listen")
    for el in listens:
        ltype = el.get("type", "address")
        if ltype == "address":
            address = el.get("address")
            if address is None:
                el.set("address", "127.0.0.1")
            elif not _is_loopback(address):
                raise _refuse(el, f"listens on '{address}'; only 127.0.0.1 is allowed")
        elif ltype == "socket":
            _require_path(el, "socket", ctx, judged, label="socket")
        elif ltype != "none":
            raise _refuse(el, f"listen type '{ltype}' is not allowed")
    if listen is None and not listens and graphics.get("socket") is None:
        graphics.set("listen", "127.0.0.1")     # not the host's vnc_listen default
    for gl in graphics.iterchildren("gl"):
        if gl.get("rendernode") or gl.get("enable") == "yes":    # no node named: the host's default GPU
            _host_device(gl, ctx, judged, "a host render node")


def _rule_audio(root, ctx, judged):
    for audio in _devices(root, "audio"):
        audio_type = audio.get("type")
        if audio_type == "file":
            raise _refuse(audio, "writes guest audio to a host file")
        if audio_type not in ("none", "spice"):
            raise _refuse(audio, f"audio type '{audio_type}' uses the host's sound system")


def _rule_tpm(root, ctx, judged):
    for tpm in _devices(root, "tpm"):
        backend = tpm.find("backend")
        backend_type = backend.get("type") if backend is not None else None
        if backend_type == "passthrough":
            _host_device(tpm, ctx, judged, "TPM passthrough")
        elif backend_type == "emulator":
            for child in backend.iterchildren("encryption"):
                raise _refuse(child, "uses a secret of the host")
            for source in backend.iter("source"):
                _require_path(source, "path", ctx, judged, label="TPM state")
        else:
            raise _refuse(tpm, f"TPM backend '{backend_type}' is not allowed")


def _rule_other_devices(root, ctx, judged):
    for rng in _devices(root, "rng"):
        for backend in rng.iterchildren("backend"):
            model = backend.get("model")
            if model == "random":
                if backend.text is not None and backend.text not in RNG_SOURCES:
                    raise _refuse(backend, f"'{backend.text}' is not a random number source")
                judged.value(backend)
            elif model == "egd":
                _check_char_backend(backend, backend.get("type"), ctx, judged)
            elif model != "builtin":
                raise _refuse(backend, f"rng backend model '{model}' is not allowed")
    for memory in _devices(root, "memory"):
        for path in memory.iterfind("source/path"):
            _require_path(path, None, ctx, judged, label="memory backing file")
    for pstore in _devices(root, "pstore"):
        for path in pstore.iterchildren("path"):
            _require_path(path, None, ctx, judged, label="pstore file")
    for rom in _walk(root):
        if rom.tag == "rom" and not judged.covers(rom):
            _require_path(rom, "file", ctx, judged, label="ROM file",
                          also=ctx.library_paths, also_name="the read-only library")


def _sweep_paths(root, ctx, judged):
    """Last line: any absolute path no rule judged must be in the VM folder."""
    def elements(el):
        if judged.has_tree(el):
            return
        yield el
        for child in el.iterchildren(etree.Element):
            if not (el is root and child.tag == "metadata"):
                yield from elements(child)

    for el in elements(root):
        if el.text and el.text.strip().startswith("/") and not judged.has_value(el, None):
            _require_path(el, None, ctx, judged, label="path")
        for attr, value in el.attrib.items():
            if value.strip().startswith("/") and not judged.has_value(el, attr):
                _require_path(el, attr, ctx, judged, label="path" if attr == "path" else f"'{attr}' path")


Rule = Callable[[etree._Element, PolicyContext, _Judged], None]

_RULES: tuple[Rule, ...] = (
    _rule_os, _rule_sysinfo, _rule_lifecycle, _rule_seclabels, _rule_memory_backing,
    _rule_resource, _rule_harmless_text, _rule_emulator, _rule_forbidden,
    _rule_host_devices, _rule_disks, _rule_chardevs, _rule_interfaces,
    _rule_graphics, _rule_audio, _rule_tpm, _rule_other_devices,
)


def check_domain(xml: str | bytes, ctx: PolicyContext) -> etree._Element:
    """Parse and check a user's definition for ``ctx``; return the element to define.

    Raises :class:`PolicyViolation` naming the first offending element.
    Normalisations applied to the returned element: ``<uuid>`` in canonical
    form; ``<uuid>`` and ``<name>`` of the entity added when absent; ``<description>`` removed; output-only
    parts of a live definition dropped (pty ``tty``/source, dynamic seclabel
    ``label``/``imagelabel``, libvirt's own guest-agent socket paths);
    VNC/SPICE without a listen address get ``127.0.0.1``; writable disks get
    ``error_policy='stop'`` and ``rerror_policy='stop'`` (:func:`set_disk_error_policy`);
    interfaces of a non-admin's VM get ``<filterref filter='clean-traffic'/>``.
    """
    root = parse_untrusted(xml)
    _check_root(root)
    _check_namespaces(root)
    _check_identity(root, ctx)
    _check_sizes(root)
    _check_size_limits(root, ctx)
    _strip_description(root)
    judged = _Judged()
    for rule in _RULES:
        rule(root, ctx, judged)
    _sweep_paths(root, ctx, judged)
    allowlist.check_allowlist(root, admin=ctx.owner_is_admin, refuse=_refuse,
                              judged_whole=judged.is_host_device)
    return root
