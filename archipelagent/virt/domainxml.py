"""Domain XML the agent writes itself: a default definition, clones, renames.

Pure functions from text to text (lxml inside).  Everything they produce
passes :func:`archipelagent.virt.policy.check_domain` for the target VM's
context, provided the paths in ``path_map`` point into its folder.
"""
from __future__ import annotations

import random
from typing import Mapping

from lxml import etree
from lxml.builder import E

from archipelagent.virt.policy import DEFAULT_EMULATORS, parse_untrusted, set_disk_error_policy

__all__ = ["default_domain", "clone_domain", "set_name", "domain_uuid", "domain_name",
           "random_mac", "QEMU_MAC_PREFIX"]

QEMU_MAC_PREFIX = "52:54:00"    # QEMU/KVM's locally administered unicast range


def _text(root: etree._Element, tag: str) -> str | None:
    el = root.find(tag)
    return None if el is None or el.text is None else el.text.strip()


def _set_text(root: etree._Element, tag: str, value: str, *, index: int = 0) -> None:
    el = root.find(tag)
    if el is None:
        el = etree.Element(tag)
        root.insert(index, el)
    el.text = value


def _serialize(root: etree._Element) -> str:
    etree.indent(root, space="  ")
    return etree.tostring(root, encoding="unicode") + "\n"


def default_domain(uuid: str, name: str, *, domain_type: str = "kvm",
                   memory_kib: int = 131072, vcpus: int = 1,
                   emulator: str = DEFAULT_EMULATORS[0], arch: str = "x86_64",
                   machine: str = "pc") -> str:
    """A blank VM: no disk yet, a serial console, VNC on loopback.

    The user adds disks and an ISO afterwards; until then it boots into the
    BIOS' "No bootable device", which keeps it ``running``.  Any disk here
    gets ``error_policy='stop'`` (pause on I/O error), as in every definition
    the policy checks.
    """
    root = E.domain(
        E.name(name),
        E.uuid(uuid.lower()),
        E.memory(str(memory_kib), unit="KiB"),
        E.currentMemory(str(memory_kib), unit="KiB"),
        E.vcpu(str(vcpus), placement="static"),
        E.os(E.type("hvm", arch=arch, machine=machine), E.boot(dev="hd"), E.boot(dev="cdrom")),
        E.features(E.acpi(), E.apic()),
        E.clock(offset="utc"),
        E.on_poweroff("destroy"),
        E.on_reboot("restart"),
        E.on_crash("destroy"),
        E.devices(
            E.emulator(emulator),
            E.serial(E.target(port="0"), type="pty"),
            E.console(E.target(type="serial", port="0"), type="pty"),
            E.input(type="tablet", bus="usb"),
            E.graphics(E.listen(type="address", address="127.0.0.1"),
                       type="vnc", port="-1", autoport="yes", listen="127.0.0.1"),
            E.video(E.model(type="vga")),
            E.memballoon(model="none"),
        ),
        type=domain_type,
    )
    set_disk_error_policy(root)
    return _serialize(root)


def random_mac(rng: random.Random) -> str:
    """A MAC in QEMU's 52:54:00 range (locally administered, unicast)."""
    return QEMU_MAC_PREFIX + "".join(f":{rng.randrange(256):02x}" for _ in range(3))


def _new_macs(root: etree._Element, rng: random.Random) -> None:
    used: set[str] = set()
    for mac in root.iterfind("devices/interface/mac"):
        address = random_mac(rng)
        while address in used:
            address = random_mac(rng)
        used.add(address)
        mac.set("address", address)


def _rewrite_paths(root: etree._Element, path_map: Mapping[str, str]) -> None:
    """Replace every attribute or text equal to a key of ``path_map``
    (disk sources, backing stores, nvram, char device paths...)."""
    if not path_map:
        return
    for el in root.iter(etree.Element):
        if el.getparent() is root and el.tag == "metadata":
            continue
        for attr, value in el.attrib.items():
            if value in path_map:
                el.set(attr, path_map[value])
        if el.text is not None and el.text.strip() in path_map:
            el.text = path_map[el.text.strip()]


def _drop(elements) -> None:
    for el in list(elements):
        el.getparent().remove(el)


def clone_domain(xml: str, *, uuid: str, name: str, path_map: Mapping[str, str],
                 rng: random.Random | None = None) -> str:
    """The definition of a copy: new identity, new MACs, its own files.

    Dropped so that libvirt regenerates them for the copy: ``<description>``
    (Archipel kept the source's account there), interface target devices,
    graphics ports, seclabels, the VM generation ID, a fixed vsock CID.
    ``rng`` is injectable for reproducible MACs (default: SystemRandom).
    """
    rng = rng or random.SystemRandom()
    root = parse_untrusted(xml)
    root.attrib.pop("id", None)
    _set_text(root, "name", name, index=0)
    _set_text(root, "uuid", uuid.lower(), index=1)
    for entry in root.iterfind("sysinfo/system/entry[@name='uuid']"):
        entry.text = uuid.lower()       # libvirt refuses an SMBIOS uuid that differs
    _drop(root.iterchildren("description"))
    _drop(root.iterfind("devices/interface/target"))
    _drop(el for el in root.iter("seclabel"))
    for genid in root.iterchildren("genid"):
        genid.text = None
    for cid in root.iterfind("devices/vsock/cid"):
        cid.attrib.pop("address", None)
        cid.set("auto", "yes")
    for graphics in root.iterfind("devices/graphics"):
        for attr in ("port", "tlsPort"):
            graphics.attrib.pop(attr, None)
        graphics.set("autoport", "yes")
        if "websocket" in graphics.attrib:
            graphics.set("websocket", "-1")
    _new_macs(root, rng)
    _rewrite_paths(root, path_map)
    set_disk_error_policy(root)
    return _serialize(root)


def set_name(xml: str, name: str) -> str:
    """The same definition under another ``<name>``."""
    root = parse_untrusted(xml)
    _set_text(root, "name", name, index=0)
    return _serialize(root)


def domain_uuid(xml: str) -> str | None:
    """The ``<uuid>`` in lowercase, or None when the definition has none."""
    value = _text(parse_untrusted(xml), "uuid")
    return value.lower() if value else None


def domain_name(xml: str) -> str | None:
    return _text(parse_untrusted(xml), "name")
