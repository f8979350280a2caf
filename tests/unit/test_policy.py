"""The domain policy: hostile definitions are refused with the element named,
legitimate ones pass, and paths are judged where they really lead."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
from lxml import etree

from archipelagent.errors import ArchipelError
from archipelagent.virt import allowlist
from archipelagent.virt.domainxml import default_domain
from archipelagent.virt.policy import (
    MAX_XML_BYTES, NIC_FILTER, PolicyContext, PolicyViolation, check_domain, disk_sources,
    element_path, memory_kib, parse_untrusted, vcpus,
)

UUID = "0b7e1c2a-3d4f-4a5b-8c6d-7e8f9a0b1c2d"
NAME = "student-vm"
HOSTILE = sorted((Path(__file__).parent / "hostile_domains").glob("*.xml"))
HOST_MEMORY_KIB, HOST_CPUS = 8 * 1024 ** 2, 4          # the host's capacity (libvirt nodeinfo)
MAX_MEMORY_KIB, MAX_VCPUS = 4 * 1024 ** 2, 8           # vm_max_memory, vm_max_vcpus


@pytest.fixture
def ctx(tmp_path) -> PolicyContext:
    vm_folder = tmp_path / "vms" / UUID
    library = tmp_path / "iso"
    vm_folder.mkdir(parents=True)
    library.mkdir()
    return PolicyContext(uuid=UUID, name=NAME, vm_folder=vm_folder, library_paths=(library,),
                         allowed_networks=frozenset({"default", "students"}),
                         allowed_bridges=frozenset({"br-students"}),
                         host_memory_kib=HOST_MEMORY_KIB, host_cpus=HOST_CPUS,
                         max_memory_kib=MAX_MEMORY_KIB, max_vcpus=MAX_VCPUS)


def fill(text: str, ctx: PolicyContext) -> str:
    library = str(ctx.library_paths[0]) if ctx.library_paths else "/nonexistent-library"
    return (text.replace("@UUID@", ctx.uuid).replace("@NAME@", ctx.name)
            .replace("@VM@", str(ctx.vm_folder)).replace("@ISO@", library))


def domain(ctx: PolicyContext, devices: str = "", top: str = "", os_extra: str = "") -> str:
    return fill(f"""<domain type='kvm'>
  <name>@NAME@</name>
  <uuid>@UUID@</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{os_extra}</os>
  {top}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {devices}
  </devices>
</domain>""", ctx)


def refused(xml: str, ctx: PolicyContext) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as info:
        check_domain(xml, ctx)
    return info.value


# ------------------------------------------------------------------ corpus

def test_corpus_is_large_enough():
    assert len(HOSTILE) >= 25


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p.stem)
def test_hostile_definition_is_refused(path, ctx):
    text = path.read_text()
    tries = re.search(r"<!-- tries: (.+?) -->", text)
    expect = re.search(r"<!-- expect: (.+?) -->", text)
    assert tries and expect, f"{path.name} must say what it tries and what is expected"
    error = refused(fill(text, ctx), ctx)
    assert error.element == expect.group(1), error.message
    assert error.message.startswith(f"definition refused: {expect.group(1)}: ")
    assert error.reason and error.reason in error.message


def test_violation_is_an_archipel_error():
    error = PolicyViolation("devices/disk[2]/source", "file '/etc/shadow' is outside the VM folder")
    assert isinstance(error, ArchipelError)
    assert (error.code, error.condition) == (-50, "not-acceptable")
    assert error.message == ("definition refused: devices/disk[2]/source: "
                             "file '/etc/shadow' is outside the VM folder")


def test_disk_outside_folder_message(ctx):
    xml = domain(ctx, "<disk type='file'><source file='@VM@/a.qcow2'/><target dev='vda'/></disk>"
                      "<disk type='file'><source file='/etc/shadow'/><target dev='vdb'/></disk>")
    error = refused(xml, ctx)
    assert error.message == ("definition refused: devices/disk[2]/source: "
                             "file '/etc/shadow' is outside the VM folder")


# ------------------------------------------------------------------ parsing

def test_oversized_document_is_refused(ctx):
    padding = "<!--" + "x" * MAX_XML_BYTES + "-->"
    error = refused(domain(ctx) + padding, ctx)
    assert error.element == "(document)"


def test_malformed_xml_is_refused(ctx):
    assert refused("<domain type='kvm'><name>x</domain>", ctx).element == "(document)"


def test_utf16_doctype_is_refused(ctx):
    xml = "<?xml version='1.0' encoding='UTF-16'?><!DOCTYPE d [<!ENTITY e 'x'>]>" + domain(ctx)
    assert refused(xml.encode("utf-16"), ctx).element == "!DOCTYPE"


def test_bytes_and_str_both_parse(ctx):
    assert check_domain(domain(ctx).encode(), ctx).tag == "domain"
    assert check_domain(domain(ctx), ctx).tag == "domain"


def test_element_path_is_readable():
    root = parse_untrusted("<domain><devices><disk/><disk><source/></disk></devices></domain>")
    assert element_path(root.find("devices/disk[2]/source")) == "devices/disk[2]/source"
    assert element_path(root) == "domain"


# ------------------------------------------------------------------ accepted

def test_default_domain_is_accepted(ctx):
    root = check_domain(default_domain(UUID, NAME), ctx)
    assert root.findtext("uuid") == UUID


def test_qcow2_disk_in_vm_folder_is_accepted(ctx):
    xml = domain(ctx, "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                      "<source file='@VM@/disk0.qcow2'/><target dev='vda' bus='virtio'/></disk>")
    root = check_domain(xml, ctx)
    assert disk_sources(root) == [ctx.vm_folder / "disk0.qcow2"]


def test_cdrom_from_iso_library_is_accepted(ctx):
    xml = domain(ctx, "<disk type='file' device='cdrom'><source file='@ISO@/debian-12.iso'/>"
                      "<target dev='hdc' bus='ide'/><readonly/></disk>")
    check_domain(xml, ctx)


def test_readonly_disk_from_library_is_accepted(ctx):
    xml = domain(ctx, "<disk type='file' device='disk'><source file='@ISO@/golden.img'/>"
                      "<target dev='vdb' bus='virtio'/><readonly/></disk>")
    check_domain(xml, ctx)


def test_overlay_on_golden_image_is_accepted(ctx):
    xml = domain(ctx, "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                      "<source file='@VM@/overlay.qcow2'/><backingStore type='file'><format type='qcow2'/>"
                      "<source file='@ISO@/golden.qcow2'/><backingStore/></backingStore>"
                      "<target dev='vda' bus='virtio'/></disk>")
    check_domain(xml, ctx)


def test_empty_cdrom_is_accepted(ctx):
    check_domain(domain(ctx, "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>"), ctx)


def test_interface_on_allowed_network_is_accepted(ctx):
    xml = domain(ctx, "<interface type='network'><mac address='52:54:00:aa:bb:cc'/>"
                      "<source network='students'/><model type='virtio'/></interface>")
    check_domain(xml, ctx)


def test_any_network_when_unrestricted(ctx):
    open_ctx = PolicyContext(uuid=UUID, name=NAME, vm_folder=ctx.vm_folder)
    check_domain(domain(ctx, "<interface type='network'><source network='lab'/></interface>"), open_ctx)


def test_interface_on_allowed_bridge_is_accepted_for_an_admin_only(ctx):
    xml = domain(ctx, "<interface type='bridge'><source bridge='br-students'/></interface>")
    check_domain(xml, dataclasses.replace(ctx, owner_is_admin=True))
    with pytest.raises(PolicyViolation) as err:  # a host bridge: never a non-admin's (issue 13)
        check_domain(xml, ctx)
    assert err.value.element == "devices/interface/source" and "is a host bridge" in err.value.reason


def test_vnc_on_loopback_is_accepted(ctx):
    xml = domain(ctx, "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'>"
                      "<listen type='address' address='127.0.0.1'/></graphics>"
                      "<graphics type='spice' autoport='yes' listen='::1'/>")
    check_domain(xml, ctx)


def test_vnc_without_listen_gets_loopback(ctx):
    root = check_domain(domain(ctx, "<graphics type='vnc' autoport='yes'/>"), ctx)
    assert root.find("devices/graphics").get("listen") == "127.0.0.1"


def test_file_serial_and_unix_channel_are_accepted(ctx):
    xml = domain(ctx, "<serial type='file'><source path='@VM@/serial.log'/><target port='0'/></serial>"
                      "<console type='pty'><log file='@VM@/console.log'/><target type='serial'/></console>"
                      "<channel type='unix'><source mode='bind'/>"
                      "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>")
    check_domain(xml, ctx)


def test_uefi_firmware_is_accepted(ctx):
    xml = domain(ctx, os_extra="<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
                               "<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>@VM@/VARS.fd</nvram>")
    check_domain(xml, ctx)


def test_harmless_devices_are_accepted(ctx):
    xml = domain(ctx, "<watchdog model='i6300esb' action='reset'/><panic model='isa'/>"
                      "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
                      "<vsock model='virtio'><cid auto='yes'/></vsock>"
                      "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"
                      "<audio id='1' type='none'/><sound model='ich9'/>"
                      "<input type='tablet' bus='usb'/><memballoon model='virtio'/>",
                 top="<sysinfo type='smbios'><system><entry name='serial'>/slash/looking</entry></system></sysinfo>"
                     "<seclabel type='dynamic' model='dac' relabel='yes'><label>+0:+0</label>"
                     "<imagelabel>+0:+0</imagelabel></seclabel>"
                     "<metadata><x:any xmlns:x='urn:x' path='/etc/shadow'/></metadata>")
    root = check_domain(xml, ctx)
    assert root.find("seclabel/label") is None      # output-only part dropped


def test_uuid_is_compared_case_insensitively_and_canonicalised(ctx):
    root = check_domain(domain(ctx).replace(UUID, UUID.upper()), ctx)
    assert root.findtext("uuid") == UUID


def test_missing_name_is_set(ctx):
    root = check_domain(domain(ctx).replace(f"<name>{NAME}</name>", ""), ctx)
    assert root.findtext("name") == NAME


def test_description_is_stripped(ctx):
    xml = domain(ctx, top="<description>vm@example.org::::secretpassword</description>")
    root = check_domain(xml, ctx)
    assert root.find("description") is None
    assert b"::::" not in etree.tostring(root)


def test_live_definition_runtime_paths_are_normalised(ctx):
    xml = domain(ctx, "<console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/>"
                      "<target type='serial' port='0'/></console>"
                      "<channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/"
                      "domain-1-x/org.qemu.guest_agent.0'/><target type='virtio' name='org.qemu.guest_agent.0'/>"
                      "</channel>")
    root = check_domain(xml, ctx)
    assert root.find("devices/console").get("tty") is None
    assert root.find("devices/channel/source").get("path") is None


# ------------------------------------------------------------------ real paths on disk

def test_symlink_in_vm_folder_to_etc_passwd_is_refused(ctx):
    link = ctx.vm_folder / "disk.img"
    os.symlink("/etc/passwd", link)
    error = refused(domain(ctx, f"<disk type='file'><source file='{link}'/><target dev='vda'/></disk>"), ctx)
    assert error.element == "devices/disk/source"
    assert "resolves to '/etc/passwd'" in error.reason


def test_symlinked_directory_escape_is_refused(ctx, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.qcow2").write_bytes(b"")
    os.symlink(outside, ctx.vm_folder / "sub")
    error = refused(domain(ctx, f"<disk type='file'><source file='{ctx.vm_folder}/sub/x.qcow2'/>"
                                "<target dev='vda'/></disk>"), ctx)
    assert error.element == "devices/disk/source"


def test_dotdot_traversal_is_refused(ctx):
    path = f"{ctx.vm_folder}/../{UUID}/../../../etc/passwd"
    error = refused(domain(ctx, f"<disk type='file'><source file='{path}'/><target dev='vda'/></disk>"), ctx)
    assert "outside the VM folder" in error.reason


def test_dotdot_that_stays_inside_is_accepted(ctx):
    (ctx.vm_folder / "a").mkdir()
    path = f"{ctx.vm_folder}/a/../disk.qcow2"
    check_domain(domain(ctx, f"<disk type='file'><source file='{path}'/><target dev='vda'/></disk>"), ctx)


def test_symlink_inside_folder_to_folder_file_is_accepted(ctx):
    (ctx.vm_folder / "real.qcow2").write_bytes(b"")
    os.symlink(ctx.vm_folder / "real.qcow2", ctx.vm_folder / "link.qcow2")
    check_domain(domain(ctx, f"<disk type='file'><source file='{ctx.vm_folder}/link.qcow2'/>"
                             "<target dev='vda'/></disk>"), ctx)


def test_symlinked_vm_folder_itself_is_followed(tmp_path):
    real = tmp_path / "storage" / UUID
    real.mkdir(parents=True)
    (tmp_path / "mnt").symlink_to(tmp_path / "storage")
    ctx = PolicyContext(uuid=UUID, name=NAME, vm_folder=tmp_path / "mnt" / UUID)
    check_domain(domain(ctx, f"<disk type='file'><source file='{real}/d.qcow2'/><target dev='vda'/></disk>"), ctx)


def test_vm_folder_itself_is_not_a_disk(ctx):
    refused(domain(ctx, f"<disk type='file'><source file='{ctx.vm_folder}'/><target dev='vda'/></disk>"), ctx)


def test_sibling_folder_with_common_prefix_is_refused(ctx):
    sibling = Path(str(ctx.vm_folder) + "-evil")
    sibling.mkdir()
    error = refused(domain(ctx, f"<disk type='file'><source file='{sibling}/d.qcow2'/>"
                                "<target dev='vda'/></disk>"), ctx)
    assert error.element == "devices/disk/source"


# ------------------------------------------------------------------ host devices allowed

def test_allow_host_devices_accepts_hostdev_and_block_disk(ctx):
    admin_ctx = PolicyContext(uuid=UUID, name=NAME, vm_folder=ctx.vm_folder, allow_host_devices=True)
    xml = domain(ctx, "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                      "<address domain='0x0000' bus='0x00' slot='0x19' function='0x0'/></source>"
                      "<rom file='/usr/share/roms/nic.rom'/></hostdev>"
                      "<disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb'/></disk>"
                      "<disk type='block' device='lun'><source dev='/dev/sdc'/><target dev='sda' bus='scsi'/></disk>")
    root = check_domain(xml, admin_ctx)
    assert disk_sources(root) == [Path("/dev/sdb"), Path("/dev/sdc")]


def test_allow_host_devices_still_refuses_host_files(ctx):
    admin_ctx = PolicyContext(uuid=UUID, name=NAME, vm_folder=ctx.vm_folder, allow_host_devices=True)
    error = refused(domain(ctx, "<disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk>"),
                    admin_ctx)
    assert error.element == "devices/disk/source"


def test_custom_domain_types_and_emulators(ctx):
    qemu_only = PolicyContext(uuid=UUID, name=NAME, vm_folder=ctx.vm_folder,
                              domain_types=frozenset({"qemu"}), emulators=("/opt/qemu/bin/qemu",))
    assert refused(domain(ctx), qemu_only).element == "domain"
    xml = domain(ctx).replace("type='kvm'", "type='qemu'")
    assert refused(xml, qemu_only).element == "devices/emulator"
    check_domain(xml.replace("/usr/bin/qemu-system-x86_64", "/opt/qemu/bin/qemu"), qemu_only)


# ------------------------------------------------------------------ quota helpers

@pytest.mark.parametrize("memory, kib", [
    ("<memory>1024</memory>", 1024),
    ("<memory unit='b'>1025</memory>", 2),
    ("<memory unit='KiB'>131072</memory>", 131072),
    ("<memory unit='k'>64</memory>", 64),
    ("<memory unit='MiB'>128</memory>", 131072),
    ("<memory unit='M'>2</memory>", 2048),
    ("<memory unit='MB'>1</memory>", 977),
    ("<memory unit='GiB'>2</memory>", 2 * 1024 ** 2),
    ("<memory unit='g'>1</memory>", 1024 ** 2),
    ("<memory unit='TiB'>1</memory>", 1024 ** 3),
    ("<memory unit='bytes'>4096</memory>", 4),
])
def test_memory_kib_units(memory, kib):
    assert memory_kib(parse_untrusted(f"<domain>{memory}</domain>")) == kib


def test_memory_kib_counts_numa_cells_and_dimms():
    root = parse_untrusted("<domain><memory unit='MiB'>128</memory><cpu><numa>"
                           "<cell id='0' cpus='0' memory='1' unit='GiB'/><cell id='1' cpus='1' memory='1048576'/>"
                           "</numa></cpu><devices><memory model='dimm'><target><size unit='MiB'>512</size>"
                           "</target></memory></devices></domain>")
    assert memory_kib(root) == 2 * 1024 ** 2 + 512 * 1024


def test_vcpus():
    assert vcpus(parse_untrusted("<domain><vcpu current='2'>4</vcpu></domain>")) == 4
    assert vcpus(parse_untrusted("<domain/>")) == 1


def test_vcpu_current_above_maximum_is_refused(ctx):
    assert refused(domain(ctx).replace("<vcpu>1</vcpu>", "<vcpu current='8'>2</vcpu>"), ctx).element == "vcpu"


def test_missing_memory_is_refused(ctx):
    assert refused(domain(ctx).replace("<memory unit='MiB'>128</memory>", ""), ctx).element == "memory"


# ------------------------------------------------------------------ allowlist (issue 10, items 8-9)

LIBVIRT_WRITTEN = sorted((Path(__file__).parent / "libvirt_domains").glob("*.xml"))


def admin_ctx(ctx: PolicyContext, **changes) -> PolicyContext:
    return dataclasses.replace(ctx, owner_is_admin=True, **changes)


@pytest.mark.parametrize("path", LIBVIRT_WRITTEN, ids=lambda p: p.stem)
def test_definitions_libvirt_writes_back_are_accepted(path, ctx):
    """What libvirt returns for the agent's own definitions (the clone path re-checks it)."""
    check_domain(fill(path.read_text(), ctx), ctx)


def test_missing_uuid_is_the_entitys(ctx):
    root = check_domain(domain(ctx).replace(f"<uuid>{UUID}</uuid>", ""), ctx)
    assert root.findtext("uuid") == UUID


def test_nic_of_a_non_admin_gets_clean_traffic(ctx):
    xml = domain(ctx, "<interface type='network'><source network='students'/></interface>"
                      "<interface type='network'><source network='default'/>"
                      "<filterref filter='clean-traffic'/></interface>")
    root = check_domain(xml, ctx)
    for iface in root.iterfind("devices/interface"):
        assert [f.get("filter") for f in iface.iterfind("filterref")] == [NIC_FILTER]


def test_two_filterrefs_are_refused(ctx):
    xml = domain(ctx, "<interface type='network'><source network='students'/>"
                      "<filterref filter='clean-traffic'/><filterref filter='clean-traffic'/></interface>")
    assert refused(xml, ctx).element == "devices/interface/filterref[2]"


def test_admins_nic_keeps_its_filter_and_gets_none_added(ctx):
    xml = domain(ctx, "<interface type='network'><source network='students'/>"
                      "<filterref filter='allow-arp'><parameter name='IP' value='10.0.0.7'/></filterref>"
                      "</interface><interface type='network'><source network='students'/></interface>")
    root = check_domain(xml, admin_ctx(ctx))
    assert [f.get("filter") for f in root.iterfind("devices/interface/filterref")] == ["allow-arp"]


def test_admins_may_tune_the_host(ctx):
    top = ("<memtune><hard_limit unit='GiB'>1</hard_limit></memtune>"
           "<cputune><shares>2048</shares><vcpupin vcpu='0' cpuset='0'/></cputune>"
           "<numatune><memory mode='strict' nodeset='0'/></numatune>"
           "<blkiotune><weight>800</weight><device><path>/dev/sda</path><weight>500</weight></device></blkiotune>"
           "<memoryBacking><hugepages><page size='2' unit='M' nodeset='0'/></hugepages></memoryBacking>")
    xml = domain(ctx, top=top).replace("<vcpu>1</vcpu>", "<vcpu cpuset='0-1'>1</vcpu>")
    check_domain(xml, admin_ctx(ctx))
    assert refused(xml, ctx).element == "blkiotune/device/path"     # a host path for a non-admin
    cpuset = domain(ctx).replace("<vcpu>1</vcpu>", "<vcpu cpuset='0-1'>1</vcpu>")
    assert refused(cpuset, ctx).reason == "attribute 'cpuset' of <vcpu> is only accepted in an administrator's VM"


def test_non_admin_blkiotune_weight_alone_is_refused(ctx):
    error = refused(domain(ctx, top="<blkiotune><weight>800</weight></blkiotune>"), ctx)
    assert (error.element, error.reason) == ("blkiotune", "<blkiotune> is only accepted in an administrator's VM")


def test_admins_are_still_bound_by_the_allowlist(ctx):
    assert refused(domain(ctx, "<watchdog model='i6300esb' action='dump'/>"), admin_ctx(ctx)).element == \
        "devices/watchdog"
    assert refused(domain(ctx, top="<memoryBacking><locked/></memoryBacking>"), admin_ctx(ctx)).element == \
        "memoryBacking/locked"
    assert refused(domain(ctx, "<iommu model='intel'/>"), admin_ctx(ctx)).element == "devices/iommu"


def test_unknown_attribute_value_names_the_allowed_ones(ctx):
    error = refused(domain(ctx, "<watchdog model='i6300esb' action='dump'/>"), ctx)
    assert error.reason == ("action='dump' is not allowed for <watchdog> "
                            "(allowed: inject-nmi, none, pause, poweroff, reset, shutdown)")


def test_nested_backing_chain_counts_as_one_level(ctx):
    xml = domain(ctx, "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                      "<source file='@VM@/top.qcow2'/><backingStore type='file'><format type='qcow2'/>"
                      "<source file='@VM@/mid.qcow2'/><backingStore type='file'><format type='raw'/>"
                      "<source file='@ISO@/base.img'/><backingStore/></backingStore></backingStore>"
                      "<target dev='vda' bus='virtio'/></disk>")
    check_domain(xml, ctx)


def test_allowed_host_devices_are_judged_whole(ctx):
    allowed = dataclasses.replace(ctx, allow_host_devices=True)
    xml = domain(ctx, "<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' "
                      "bus='0x02' slot='0x00' function='0x1'/></source></interface>")
    check_domain(xml, allowed)
    assert refused(xml, ctx).element == "devices/interface"


def test_allowlist_table_refuses_duplicates_and_unknown_flags():
    with pytest.raises(ValueError):
        allowlist._parse_table("devices/disk\ndevices/disk type")
    with pytest.raises(ValueError):
        allowlist._parse_table("devices/disk [sometimes]")


def test_schema_path():
    root = parse_untrusted("<domain><devices><disk><backingStore><backingStore><source/>"
                           "</backingStore></backingStore></disk></devices></domain>")
    assert allowlist.schema_path(root) == "(root)"
    assert allowlist.schema_path(root.find(".//source")) == "devices/disk/backingStore/source"


# ------------------------------------------------------------------ size caps

@pytest.mark.parametrize("memory, vcpu, element, reason", [
    ("<memory unit='KiB'>4194305</memory>", "<vcpu>1</vcpu>", "memory",
     "4194305 KiB is more than the hypervisor's maximum (vm_max_memory): 4194304 KiB"),
    ("<memory unit='MiB'>128</memory>", "<vcpu>5</vcpu>", "vcpu", "5 vCPUs is more than this host's CPUs: 4"),
    ("<memory unit='MiB'>128</memory>", "<vcpu current='1'>255</vcpu>", "vcpu",
     "255 vCPUs is more than this host's CPUs: 4"),
])
def test_sizes_beyond_the_caps_are_refused(ctx, memory, vcpu, element, reason):
    xml = domain(ctx).replace("<memory unit='MiB'>128</memory>", memory).replace("<vcpu>1</vcpu>", vcpu)
    error = refused(xml, ctx)
    assert (error.element, error.reason) == (element, reason)


def test_sizes_at_the_caps_are_accepted_and_the_smaller_cap_wins(ctx):
    at_caps = domain(ctx).replace("<memory unit='MiB'>128</memory>", f"<memory>{MAX_MEMORY_KIB}</memory>")
    check_domain(at_caps.replace("<vcpu>1</vcpu>", f"<vcpu>{HOST_CPUS}</vcpu>"), ctx)
    small_host = dataclasses.replace(ctx, host_memory_kib=1024 * 1024)
    assert refused(at_caps, small_host).reason == f"{MAX_MEMORY_KIB} KiB is more than this host's memory: 1048576 KiB"
    config_only = dataclasses.replace(ctx, host_cpus=None, max_vcpus=2)
    assert refused(domain(ctx).replace("<vcpu>1</vcpu>", "<vcpu>3</vcpu>"), config_only).reason == \
        "3 vCPUs is more than the hypervisor's maximum (vm_max_vcpus): 2"


def test_admins_are_capped_too(ctx):
    xml = domain(ctx).replace("<memory unit='MiB'>128</memory>", "<memory unit='TiB'>1</memory>")
    assert refused(xml, admin_ctx(ctx)).element == "memory"
