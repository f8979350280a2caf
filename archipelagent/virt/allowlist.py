"""The elements and attributes of a libvirt ``<domain>`` the agent knows to be safe.

libvirt keeps adding features, and each one that reaches the host (a dump
file, locked memory, a host socket, a vIOMMU, a fixed vsock CID...) was a
hole while the policy listed what to *refuse*.  Here it is the other way
round: every element and attribute of a user's definition must be listed in
:data:`TABLE`, with its allowed values where they matter; anything else is
refused with the element named.  The rules in :mod:`policy` still judge the
values that need context (paths in the VM folder, loopback, networks).

The table is text, one line per element::

    devices/watchdog   model action=reset|poweroff|shutdown|pause|none|inject-nmi

* the path is the element's tags from the root (``devices/*/`` matches any
  device, nested ``backingStore`` chains count as one level);
* ``name`` allows any value, ``name=a|b`` only those values (case-sensitive,
  as libvirt reads them), ``name!`` or ``name=a|b!`` only for admins' VMs;
* flags: ``[admin]`` the element only for admins' VMs; ``[subtree]`` its
  descendants are not checked (SMBIOS strings, admins' tuning, disk I/O
  limits); ``[free]`` neither its attributes nor its descendants are
  (``<metadata>``; host devices, which a rule refuses unless the hypervisor
  allows them and then judges as a whole).

It was built from what the agent writes (:mod:`domainxml`), what libvirt
9.0 writes back for it (``XMLDesc(INACTIVE)``: controllers, addresses,
``<audio>``, ``<cpu mode>``, ``<vmport state>``, ``<resource>``,
``<seclabel>``...), and what Archipel's client sends.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from lxml import etree

__all__ = ["TABLE", "Spec", "SPECS", "schema_path", "check_allowlist"]

TABLE = r"""
# ---------------------------------------------------------------- identity
(root)                      type id
name
uuid
genid
title
description
metadata                    [free]
# ---------------------------------------------------------------- sizes
memory                      unit dumpCore=off
currentMemory               unit
maxMemory                   unit slots
vcpu                        placement=static|auto current cpuset!
vcpus
vcpus/vcpu                  id enabled hotpluggable order
iothreads                   [admin]
iothreadids                 [admin]
iothreadids/iothread        id
# ---------------------------------------------------------------- host tuning: admins only
memtune                     [admin] [subtree]
cputune                     [admin] [subtree]
numatune                    [admin] [subtree]
blkiotune                   [admin] [subtree]
memoryBacking
memoryBacking/hugepages
memoryBacking/hugepages/page [admin] size unit nodeset
memoryBacking/nosharepages
memoryBacking/source        type=anonymous|memfd
memoryBacking/access        mode=private
memoryBacking/allocation    mode=immediate|ondemand threads
memoryBacking/discard
resource
resource/partition
# ---------------------------------------------------------------- boot
os                          firmware=efi|bios
os/type                     arch machine
os/firmware
os/firmware/feature         enabled name
os/boot                     dev=hd|cdrom|fd|network
os/bootmenu                 enable=yes|no timeout
os/bios                     useserial=yes|no rebootTimeout
os/smbios                   mode=emulate|sysinfo
os/loader                   readonly=yes|no secure=yes|no type=rom|pflash stateless=yes|no format=raw|qcow2
os/nvram                    template type=file format=raw|qcow2 templateFormat=raw|qcow2
os/nvram/source             file
os/kernel
os/initrd
os/cmdline
os/dtb
os/acpi
os/acpi/table               type=raw|rawset|slic|msdm
sysinfo                     type=smbios|fwcfg [subtree]
# ---------------------------------------------------------------- platform
features
features/acpi
features/apic               eoi=on|off
features/pae
features/hap                state=on|off
features/viridian
features/privnet
features/pvspinlock         state=on|off
features/gic                version
features/vmport             state=on|off
features/smm                state=on|off
features/smm/tseg           unit
features/vmcoreinfo         state=on|off
features/htm                state=on|off
features/ioapic             driver=kvm|qemu
features/hpt                resizing maxpagesize
features/msrs               unknown=ignore|fault
features/ccf-assist         state=on|off
features/cfpc               value
features/sbbc               value
features/ibs                value
features/async-teardown     enabled=yes|no
features/hyperv             mode=custom|passthrough
features/hyperv/*           state=on|off retries value
features/hyperv/stimer/direct state=on|off
features/kvm
features/kvm/*              state=on|off size
cpu                         mode=custom|host-model|host-passthrough|maximum match=exact|minimum|strict check=none|partial|full migratable=on|off
cpu/model                   fallback=allow|forbid vendor_id
cpu/vendor
cpu/topology                sockets dies clusters cores threads
cpu/feature                 policy=force|require|optional|disable|forbid name
cpu/cache                   level mode=emulate|passthrough|disable
cpu/maxphysaddr             mode=emulate|passthrough bits limit
cpu/numa
cpu/numa/cell               id cpus memory unit discard=yes|no
cpu/numa/cell/distances
cpu/numa/cell/distances/sibling id value
clock                       offset=utc|localtime|timezone|variable timezone adjustment basis=utc|localtime
clock/timer                 name track tickpolicy present frequency mode
clock/timer/catchup         threshold slew limit
on_poweroff
on_reboot
on_crash
pm
pm/suspend-to-mem           enabled=yes|no
pm/suspend-to-disk          enabled=yes|no
seclabel                    type model relabel
seclabel/label
seclabel/imagelabel
# ---------------------------------------------------------------- devices
devices
devices/emulator
devices/*/address           type domain bus slot function multifunction controller target unit port reg cssid ssid devno iobase irq base
devices/*/alias             name
devices/*/boot              order loadparm
devices/*/acpi              index
# disks: files in the VM folder or the library (block/lun: host devices, see policy._check_disk)
devices/disk                type=file|block device=disk|cdrom|floppy|lun snapshot=internal|external|no model
devices/disk/driver         name=qemu type=raw|qcow2 cache=default|none|writethrough|writeback|directsync|unsafe error_policy=stop|report|ignore|enospace rerror_policy=stop|report|ignore io=threads|native|io_uring ioeventfd=on|off event_idx=on|off copy_on_read=on|off discard=ignore|unmap detect_zeroes=off|on|unmap iothread queues queue_size
devices/disk/source         file dev index startupPolicy=mandatory|requisite|optional
devices/disk/source/dataStore type=file
devices/disk/source/dataStore/format type=raw
devices/disk/source/dataStore/source file
devices/disk/backingStore   type=file index
devices/disk/backingStore/format type=raw|qcow2
devices/disk/backingStore/source file
devices/disk/target         dev bus=virtio|scsi|sata|ide|usb|fdc|sd tray=open|closed removable=on|off rotation_rate
devices/disk/readonly
devices/disk/shareable
devices/disk/transient      shareBacking=yes|no
devices/disk/serial
devices/disk/wwn
devices/disk/vendor
devices/disk/product
devices/disk/geometry       cyls heads secs trans
devices/disk/blockio        logical_block_size physical_block_size
devices/disk/iotune         [subtree]
devices/controller          type=ide|fdc|scsi|sata|usb|ccid|virtio-serial|pci index model ports vectors
devices/controller/model    name
devices/controller/target   chassisNr chassis port busNr index hotplug=on|off
devices/controller/driver   queues cmd_per_lun max_sectors ioeventfd=on|off iothread
devices/controller/master   startport
# network: libvirt networks and allowed bridges; clean-traffic for non-admins (policy._check_interface)
devices/interface           type=network|bridge|hostdev trustGuestRxFilters=no
devices/interface/mac       address
devices/interface/source    network bridge portgroup
devices/interface/model     type
devices/interface/driver    name=qemu|vhost txmode=iothread|timer ioeventfd=on|off event_idx=on|off queues rx_queue_size tx_queue_size
devices/interface/driver/host csum=on|off gso=on|off tso4=on|off tso6=on|off ecn=on|off ufo=on|off mrg_rxbuf=on|off
devices/interface/driver/guest csum=on|off tso4=on|off tso6=on|off ecn=on|off ufo=on|off
devices/interface/target    dev
devices/interface/link      state=up|down
devices/interface/mtu       size
devices/interface/rom       bar=on|off enabled=yes|no file
devices/interface/filterref filter
devices/interface/filterref/parameter [admin] name value
devices/interface/bandwidth
devices/interface/bandwidth/inbound average peak burst floor!
devices/interface/bandwidth/outbound average peak burst
# character devices: nothing on the host, or a file/socket in the VM folder (never tcp/udp)
devices/serial              type=pty|null|vc|spicevmc|spiceport|qemu-vdagent|file|pipe|unix|dev tty
devices/parallel            type=pty|null|vc|spicevmc|spiceport|file|pipe|unix|dev tty
devices/console             type=pty|null|vc|spicevmc|spiceport|qemu-vdagent|file|pipe|unix|dev tty
devices/channel             type=pty|null|vc|spicevmc|spiceport|qemu-vdagent|file|pipe|unix|dev tty
devices/serial/source       path mode=bind|connect append=on|off channel
devices/serial/target       type port name state=connected|disconnected
devices/serial/target/model name
devices/serial/log          file append=on|off
devices/parallel/source     path mode=bind|connect append=on|off channel
devices/parallel/target     type port name state=connected|disconnected
devices/parallel/target/modelname
devices/parallel/log        file append=on|off
devices/console/source      path mode=bind|connect append=on|off channel
devices/console/target      type port name state=connected|disconnected
devices/console/target/modelname
devices/console/log         file append=on|off
devices/channel/source      path mode=bind|connect append=on|off channel
devices/channel/target      type port name state=connected|disconnected
devices/channel/target/modelname
devices/channel/log         file append=on|off
# input and consoles
devices/input               type=tablet|mouse|keyboard|passthrough|evdev bus=usb|ps2|virtio|xen model
devices/input/source        evdev dev grab grabToggle repeat
devices/graphics            type=vnc|spice port autoport=yes|no websocket listen passwd keymap passwdValidTo connected=keep|disconnect|fail sharePolicy=allow-exclusive|force-shared|ignore defaultMode=any|secure|insecure tlsPort socket
devices/graphics/listen     type=address|socket|none address socket
devices/graphics/channel    name mode=any|secure|insecure
devices/graphics/image      compression
devices/graphics/jpeg       compression
devices/graphics/zlib       compression
devices/graphics/playback   compression
devices/graphics/streaming  mode
devices/graphics/clipboard  copypaste=yes|no
devices/graphics/mouse      mode=server|client
devices/graphics/filetransfer enable=yes|no
devices/graphics/gl         enable=yes|no rendernode
devices/video
devices/video/model         type=vga|cirrus|qxl|virtio|bochs|ramfb|none vram ram vgamem vram64 heads primary=yes|no
devices/video/model/acceleration accel3d=no accel2d=yes|no
devices/video/driver        name=qemu
devices/sound               model
devices/sound/codec         type
devices/sound/audio         id
devices/audio               id type=none|spice
# other guest devices
devices/memballoon          model=virtio|virtio-transitional|virtio-non-transitional|none autodeflate=on|off freePageReporting=on|off
devices/memballoon/stats    period
devices/rng                 model=virtio|virtio-transitional|virtio-non-transitional
devices/rng/rate            period bytes
devices/rng/backend         model=random|builtin|egd type=unix
devices/rng/backend/source  path mode=bind|connect
devices/watchdog            model=i6300esb|ib700|diag288|itco action=reset|shutdown|poweroff|pause|none|inject-nmi
devices/panic               model
devices/vsock               model=virtio|virtio-transitional|virtio-non-transitional
devices/vsock/cid           auto=yes
devices/tpm                 model=tpm-tis|tpm-crb
devices/tpm/backend         type=emulator|passthrough version=1.2|2.0 persistent_state=yes|no
devices/tpm/backend/source  type=file|dir path
devices/tpm/backend/active_pcr_banks
devices/tpm/backend/active_pcr_banks/sha1
devices/tpm/backend/active_pcr_banks/sha256
devices/tpm/backend/active_pcr_banks/sha384
devices/tpm/backend/active_pcr_banks/sha512
devices/hub                 type=usb
devices/memory              model=dimm|virtio-mem access=private discard=yes|no
devices/memory/target
devices/memory/target/size  unit
devices/memory/target/node
devices/memory/target/block unit
devices/memory/target/requested unit
# host devices: judged as a whole by policy._host_device (refused unless allowed)
devices/hostdev             [free]
devices/redirdev            [free]
devices/smartcard           [free]
"""


@dataclass(frozen=True)
class Spec:
    """What one element may carry."""

    attrs: dict[str, frozenset[str] | None] = field(default_factory=dict)   # None: any value
    admin_attrs: frozenset[str] = frozenset()
    admin: bool = False
    subtree: bool = False
    free: bool = False


def _parse_table(text: str) -> dict[str, Spec]:
    specs: dict[str, Spec] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, *words = line.split()
        flags = {w for w in words if w.startswith("[")}
        attrs: dict[str, frozenset[str] | None] = {}
        admin_attrs = set()
        for word in words:
            if word in flags:
                continue
            if word.endswith("!"):
                word = word[:-1]
                admin_attrs.add(word.split("=", 1)[0])
            name, _, values = word.partition("=")
            attrs[name] = frozenset(values.split("|")) if values else None
        unknown = flags - {"[admin]", "[subtree]", "[free]"}
        if unknown or path in specs:
            raise ValueError(f"allowlist line {line!r}: unknown flag or duplicate path")
        free = "[free]" in flags
        specs[path] = Spec(attrs, frozenset(admin_attrs), "[admin]" in flags,
                           free or "[subtree]" in flags, free)
    return specs


SPECS: dict[str, Spec] = _parse_table(TABLE)


def schema_path(el: etree._Element) -> str:
    """The table key of ``el``: its tags from the root, one level per backing chain."""
    tags: list[str] = []
    while el.getparent() is not None:
        if not (tags and tags[-1] == "backingStore" and el.tag == "backingStore"):
            tags.append(el.tag)
        el = el.getparent()
    return "/".join(reversed(tags)) or "(root)"


def _candidates(path: str) -> Iterator[str]:
    """The exact path, then its wildcard form: ``devices/*/address`` (any device),
    ``features/hyperv/*`` (any Hyper-V or KVM enlightenment)."""
    yield path
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "devices":
        yield f"devices/*/{parts[2]}"
    if len(parts) == 3 and parts[0] == "features":
        yield f"features/{parts[1]}/*"


def lookup(el: etree._Element) -> tuple[str, Spec | None]:
    path = schema_path(el)
    for key in _candidates(path):
        if key in SPECS:
            return path, SPECS[key]
    return path, None


def check_allowlist(root: etree._Element, *, admin: bool,
                    refuse: Callable[[etree._Element, str], Exception],
                    judged_whole: Callable[[etree._Element], bool] = lambda el: False) -> None:
    """Refuse (``raise refuse(el, reason)``) the first element or attribute not in the table.

    ``admin``: the VM's owner is an admin; only then ``[admin]`` entries count.
    Free-form subtrees, and those ``judged_whole`` says a rule accepted as a
    whole (host devices the hypervisor allows), are not entered.
    """
    stack = [root]
    while stack:
        el = stack.pop()
        if judged_whole(el):
            continue
        path, spec = lookup(el)
        if spec is None:
            raise refuse(el, f"<{el.tag}> is not a known safe part of a definition; "
                             "not accepted")
        if spec.admin and not admin:
            raise refuse(el, f"<{el.tag}> is only accepted in an administrator's VM")
        if spec.free:
            continue
        for attr, value in el.attrib.items():
            if attr not in spec.attrs:
                raise refuse(el, f"attribute '{attr}' of <{el.tag}> is not a known safe attribute; "
                                 "not accepted")
            if attr in spec.admin_attrs and not admin:
                raise refuse(el, f"attribute '{attr}' of <{el.tag}> is only accepted in an "
                                 "administrator's VM")
            allowed = spec.attrs[attr]
            if allowed is not None and value not in allowed:
                shown = ", ".join(sorted(allowed))
                raise refuse(el, f"{attr}='{value}' is not allowed for <{el.tag}> (allowed: {shown})")
        if not spec.subtree:
            stack.extend(reversed(list(el.iterchildren(etree.Element))))
