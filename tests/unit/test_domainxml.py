"""Domain XML builders: what they write passes our policy and libvirt's parser."""
from __future__ import annotations

import dataclasses
import random
import re
import uuid as uuidlib
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from archipelagent.virt.domainxml import (
    QEMU_MAC_PREFIX, clone_domain, default_domain, domain_name, domain_uuid, random_mac, set_name,
)
from archipelagent.virt.policy import PolicyContext, PolicyViolation, check_domain

MAC_RE = re.compile(r"52:54:00(:[0-9a-f]{2}){3}")


@pytest.fixture(scope="module")
def test_driver():
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


def define_and_undefine(conn, xml: str) -> str:
    """libvirt's own parser accepts ``xml``; return its view of the domain."""
    dom = conn.defineXML(xml)
    try:
        return dom.XMLDesc(0)
    finally:
        dom.undefine()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuidlib.uuid4().hex[:8]}"


def source_domain(tmp_path, vm_uuid: str, name: str) -> tuple[str, PolicyContext]:
    folder = tmp_path / vm_uuid
    folder.mkdir(parents=True)
    library = tmp_path / "iso"
    library.mkdir(exist_ok=True)
    xml = f"""<domain type='kvm'>
  <name>{name}</name>
  <uuid>{vm_uuid}</uuid>
  <description>{vm_uuid}@example.org::::s3cret</description>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <sysinfo type='smbios'><system><entry name='uuid'>{vm_uuid}</entry></system></sysinfo>
  <os><type arch='x86_64' machine='pc'>hvm</type><smbios mode='sysinfo'/></os>
  <seclabel type='dynamic' model='dac' relabel='yes'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{folder}/disk0.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='{library}/debian.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:11:22:33'/>
      <source network='default'/>
      <target dev='vnet7'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:44:55:66'/>
      <source network='default'/>
    </interface>
    <graphics type='vnc' port='5907' autoport='no' listen='127.0.0.1'/>
  </devices>
</domain>"""
    ctx = PolicyContext(uuid=vm_uuid, name=name, vm_folder=folder, library_paths=(library,),
                        allowed_networks=frozenset({"default"}))
    return xml, ctx


# ------------------------------------------------------------------ default_domain

def test_default_domain_passes_policy(tmp_path):
    vm_uuid = str(uuidlib.uuid4())
    ctx = PolicyContext(uuid=vm_uuid, name="blank", vm_folder=tmp_path / vm_uuid)
    root = check_domain(default_domain(vm_uuid, "blank"), ctx)
    assert root.get("type") == "kvm"
    assert root.find("devices/graphics").get("listen") == "127.0.0.1"


def test_default_domain_parameters(tmp_path):
    vm_uuid = str(uuidlib.uuid4())
    xml = default_domain(vm_uuid.upper(), "big", domain_type="qemu", memory_kib=1048576, vcpus=4)
    root = etree.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("uuid") == vm_uuid
    assert root.findtext("memory") == "1048576" and root.findtext("vcpu") == "4"
    check_domain(xml, PolicyContext(uuid=vm_uuid, name="big", vm_folder=tmp_path))


def test_default_domain_is_accepted_by_libvirt(test_driver):
    vm_uuid, name = str(uuidlib.uuid4()), unique_name("default")
    described = define_and_undefine(test_driver, default_domain(vm_uuid, name))
    root = etree.fromstring(described)
    assert root.findtext("uuid") == vm_uuid and root.findtext("name") == name
    assert root.find("devices/serial").get("type") == "pty"


# ------------------------------------------------------------------ clone_domain

def test_clone_changes_identity_macs_paths_and_drops_state(tmp_path):
    src_uuid, new_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    xml, src_ctx = source_domain(tmp_path, src_uuid, "source")
    check_domain(xml, src_ctx)
    new_folder = tmp_path / new_uuid
    old_disk = f"{src_ctx.vm_folder}/disk0.qcow2"
    clone = clone_domain(xml, uuid=new_uuid, name="copy",
                         path_map={old_disk: f"{new_folder}/disk0.qcow2"}, rng=random.Random(7))
    root = etree.fromstring(clone)
    assert root.findtext("uuid") == new_uuid and root.findtext("name") == "copy"
    assert root.find("description") is None
    assert "::::" not in clone
    assert root.find("seclabel") is None
    assert root.findtext("sysinfo/system/entry[@name='uuid']") == new_uuid
    macs = [m.get("address") for m in root.iterfind("devices/interface/mac")]
    assert len(macs) == 2 and len(set(macs)) == 2
    assert all(MAC_RE.fullmatch(mac) for mac in macs)
    assert not {"52:54:00:11:22:33", "52:54:00:44:55:66"} & set(macs)
    assert root.find("devices/interface/target") is None
    sources = [s.get("file") for s in root.iterfind("devices/disk/source")]
    assert sources == [f"{new_folder}/disk0.qcow2", f"{src_ctx.library_paths[0]}/debian.iso"]
    graphics = root.find("devices/graphics")
    assert graphics.get("port") is None and graphics.get("autoport") == "yes"
    new_folder.mkdir()
    check_domain(clone, PolicyContext(uuid=new_uuid, name="copy", vm_folder=new_folder,
                                      library_paths=src_ctx.library_paths,
                                      allowed_networks=frozenset({"default"})))


def test_clone_is_deterministic_with_an_injected_rng(tmp_path):
    xml, _ = source_domain(tmp_path, str(uuidlib.uuid4()), "source")
    new_uuid = str(uuidlib.uuid4())
    first = clone_domain(xml, uuid=new_uuid, name="c", path_map={}, rng=random.Random(1))
    second = clone_domain(xml, uuid=new_uuid, name="c", path_map={}, rng=random.Random(1))
    assert first == second


def test_clone_of_a_clone_differs(tmp_path):
    xml, _ = source_domain(tmp_path, str(uuidlib.uuid4()), "source")
    one = clone_domain(xml, uuid=str(uuidlib.uuid4()), name="a", path_map={})
    two = clone_domain(xml, uuid=str(uuidlib.uuid4()), name="b", path_map={})
    macs = lambda x: [m.get("address") for m in etree.fromstring(x).iterfind("devices/interface/mac")]
    assert macs(one) != macs(two)


def test_clone_is_accepted_by_libvirt(tmp_path, test_driver):
    src_uuid, new_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    xml, src_ctx = source_domain(tmp_path, src_uuid, unique_name("src"))
    name = unique_name("clone")
    clone = clone_domain(xml, uuid=new_uuid, name=name,
                         path_map={f"{src_ctx.vm_folder}/disk0.qcow2": f"{tmp_path}/{new_uuid}/disk0.qcow2"})
    described = etree.fromstring(define_and_undefine(test_driver, clone))
    assert described.findtext("uuid") == new_uuid and described.findtext("name") == name
    assert described.find("description") is None


def test_clone_drops_fixed_vsock_cid_and_resets_genid():
    vm_uuid = str(uuidlib.uuid4())
    xml = default_domain(vm_uuid, "v").replace(
        "<memballoon", "<vsock model='virtio'><cid auto='no' address='42'/></vsock><memballoon").replace(
        "<memory", "<genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90e</genid><memory")
    root = etree.fromstring(clone_domain(xml, uuid=str(uuidlib.uuid4()), name="w", path_map={}))
    cid = root.find("devices/vsock/cid")
    assert cid.get("auto") == "yes" and cid.get("address") is None
    assert not root.findtext("genid")


def test_random_mac_is_local_unicast_in_qemu_range():
    rng = random.Random(0)
    for _ in range(100):
        mac = random_mac(rng)
        assert mac.startswith(QEMU_MAC_PREFIX + ":") and MAC_RE.fullmatch(mac)
        first_octet = int(mac[:2], 16)
        assert first_octet & 0b10 and not first_octet & 0b01


# ------------------------------------------------------------------ small helpers

def test_name_and_uuid_helpers():
    vm_uuid = str(uuidlib.uuid4())
    xml = default_domain(vm_uuid, "before")
    assert domain_uuid(xml) == vm_uuid
    assert domain_name(xml) == "before"
    renamed = set_name(xml, "after")
    assert domain_name(renamed) == "after" and domain_uuid(renamed) == vm_uuid


def test_helpers_on_definition_without_name_or_uuid():
    xml = "<domain type='kvm'><memory>1024</memory></domain>"
    assert domain_uuid(xml) is None and domain_name(xml) is None
    assert domain_name(set_name(xml, "named")) == "named"


# ------------------------------------------------------------------ clones of libvirt's own XML

LIBVIRT_WRITTEN = sorted((Path(__file__).parent / "libvirt_domains").glob("*.xml"))


@pytest.mark.parametrize("path", LIBVIRT_WRITTEN, ids=lambda p: p.stem)
def test_clone_of_what_libvirt_writes_passes_for_a_students_copy(tmp_path, path):
    """The clone path re-checks libvirt's XMLDesc(INACTIVE): every element libvirt adds on
    its own must pass, and the student's copy gets the anti-spoofing filter on its NICs."""
    src_uuid, new_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    src_folder, new_folder, library = tmp_path / src_uuid, tmp_path / new_uuid, tmp_path / "iso"
    for folder in (src_folder, new_folder, library):
        folder.mkdir()
    xml = (path.read_text().replace("@UUID@", src_uuid).replace("@NAME@", "src")
           .replace("@VM@", str(src_folder)).replace("@ISO@", str(library)))
    path_map = {str(src_folder / n): str(new_folder / n) for n in ("disk0.qcow2", "d.qcow2", "VARS.fd")}
    clone = clone_domain(xml, uuid=new_uuid, name="copy", path_map=path_map, rng=random.Random(3))
    root = check_domain(clone, PolicyContext(
        uuid=new_uuid, name="copy", vm_folder=new_folder, library_paths=(library,),
        allowed_networks=frozenset({"default"}), allowed_bridges=frozenset({"br-students"}),
        host_memory_kib=8 * 1024 ** 2, host_cpus=4))
    for iface in root.iterfind("devices/interface"):
        assert [f.get("filter") for f in iface.iterfind("filterref")] == ["clean-traffic"]


def test_clone_of_an_admins_tuned_vm_is_refused_for_a_student(tmp_path):
    vm_uuid, new_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    xml = default_domain(vm_uuid, "tuned").replace("<vcpu", "<memtune><hard_limit>1048576</hard_limit></memtune><vcpu")
    clone = clone_domain(xml, uuid=new_uuid, name="copy", path_map={})
    ctx = PolicyContext(uuid=new_uuid, name="copy", vm_folder=tmp_path)
    with pytest.raises(PolicyViolation) as err:
        check_domain(clone, ctx)
    assert err.value.element == "memtune"
    check_domain(clone, dataclasses.replace(ctx, owner_is_admin=True))
