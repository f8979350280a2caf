"""The definition policy through the real agent and libvirt (issue 10, items 8 and 9).

A student (an account with only ``alloc`` on the hypervisor, owner of its VM)
sends the definitions that passed before the policy became an allowlist at
element level: ``define`` on its VM and ``alloc`` with a ``<domain>`` must both
answer -50 naming the element, and libvirt must be left as it was.  A NIC on an
allowed network gets libvirt's ``clean-traffic`` filter and the VM really starts.
"""
from __future__ import annotations

import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import grant
from vm_helpers import CONTROL, DEFINITION, HV_NS, alloc, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError


def definition(name: str, uuid: str | None, *, devices: str = "", top: str = "",
               memory: str = "<memory unit='MiB'>128</memory>", vcpu: str = "<vcpu>1</vcpu>") -> ET.Element:
    """A small valid definition plus the parts under test (no <uuid> when ``uuid`` is None)."""
    return ET.fromstring(f"""<domain type='kvm'>
  <name>{name}</name>{f"<uuid>{uuid}</uuid>" if uuid else ""}
  {memory}{vcpu}
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>{top}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'><target port='0'/></serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/>{devices}
  </devices>
</domain>""")


# (id, parts of the definition, element the refusal names): the definitions of item 9 and
# the denylist gaps of item 8.  {ldap_port}/{http_port}: the rig's slapd and ejabberd HTTP API.
CASES = [
    ("serial_tcp_to_ldap", dict(devices="<serial type='tcp'><source mode='connect' host='127.0.0.1' "
                                        "service='{ldap_port}'/><target port='1'/></serial>"),
     "devices/serial[2]"),
    ("channel_tcp_to_ejabberd_api", dict(devices="<channel type='tcp'><source mode='connect' host='localhost' "
                                                 "service='{http_port}'/><target type='virtio' name='org.example.0'/>"
                                                 "</channel>"),
     "devices/channel"),
    ("console_udp_loopback", dict(devices="<console type='udp'><source mode='connect' host='127.0.0.1' "
                                          "service='53'/><target type='serial' port='0'/></console>"),
     "devices/console"),
    ("blkiotune_host_device", dict(top="<blkiotune><device><path>/dev/sda</path><weight>1000</weight>"
                                       "</device></blkiotune>"),
     "blkiotune/device/path"),
    ("blkiotune_weight", dict(top="<blkiotune><weight>1000</weight></blkiotune>"), "blkiotune"),
    ("iommu", dict(devices="<iommu model='intel'/>"), "devices/iommu"),
    ("memory_one_tib", dict(memory="<memory unit='TiB'>1</memory>"), "memory"),
    ("vcpus_255", dict(vcpu="<vcpu current='1'>255</vcpu>"), "vcpu"),
    ("watchdog_dump", dict(devices="<watchdog model='i6300esb' action='dump'/>"), "devices/watchdog"),
    ("memory_locked", dict(top="<memoryBacking><locked/></memoryBacking>"), "memoryBacking/locked"),
    ("memtune", dict(top="<memtune><hard_limit unit='GiB'>4</hard_limit></memtune>"), "memtune"),
    ("vsock_fixed_cid", dict(devices="<vsock model='virtio'><cid auto='no' address='2'/></vsock>"),
     "devices/vsock/cid"),
    ("nic_permissive_filter", dict(devices="<interface type='network'><source network='default'/>"
                                           "<filterref filter='allow-arp'/></interface>"),
     "devices/interface/filterref"),
    ("nic_network_not_allowed", dict(devices="<interface type='network'><source network='lab'/></interface>"),
     "devices/interface/source"),
    ("unknown_element", dict(top="<perf><event name='cmt' enabled='yes'/></perf>"), "perf"),
]


def case_parts(stack, case: str) -> tuple[dict, str]:
    _, parts, element = next(c for c in CASES if c[0] == case)
    ports = {"ldap_port": stack.ldap_port, "http_port": stack.http_port}
    return {k: v.format(**ports) for k, v in parts.items()}, element


CASE_IDS = [case[0] for case in CASES]


def libvirt_xml(stack, uuid: str) -> str:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        conn.close()


def domain_named(stack, name: str) -> bool:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


@pytest_asyncio.fixture(scope="module")
async def student(agent, admin, new_user):
    """A plain account that may only allocate VMs (not an admin, no LDAP group)."""
    client = await new_user("tenant")
    await grant(admin, agent.full_jid, client.jid, "alloc")
    yield client
    await grant(admin, agent.full_jid, client.jid, "alloc", value=False)


@pytest_asyncio.fixture(scope="module")
async def student_vm(agent, admin, student):
    jid = await alloc(student, agent.full_jid, unique_name("pol"))
    await wait_vm_ready(student, vm_full(jid, agent.jid))
    yield jid
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


def assert_refused(err: AcpError, element: str) -> None:
    assert err.code == -50 and err.condition == "not-acceptable", err
    assert err.text.startswith(f"definition refused: {element}: "), err.text


@pytest.mark.parametrize("case", CASE_IDS)
async def test_define_of_a_hostile_definition_is_refused_and_libvirt_unchanged(
        agent, stack, student, student_vm, case):
    parts, element = case_parts(stack, case)
    uuid = student_vm.split("@")[0]
    name = ET.fromstring(libvirt_xml(stack, uuid)).findtext("name")
    before = libvirt_xml(stack, uuid)
    with pytest.raises(AcpError) as err:
        await student.acp(vm_full(student_vm, agent.jid), DEFINITION, "define",
                          children=[definition(name, uuid, **parts)])
    assert_refused(err.value, element)
    assert libvirt_xml(stack, uuid) == before


@pytest.mark.parametrize("case", CASE_IDS)
async def test_alloc_with_a_hostile_domain_is_refused_and_nothing_defined(agent, stack, student, case):
    parts, element = case_parts(stack, case)
    name = unique_name("hostile")
    with pytest.raises(AcpError) as err:
        await student.acp(agent.full_jid, HV_NS, "alloc", {"name": name}, children=[definition(name, None, **parts)])
    assert_refused(err.value, element)
    assert not domain_named(stack, name)


async def test_size_refusals_name_the_limit(agent, stack, student, student_vm):
    uuid = student_vm.split("@")[0]
    name = ET.fromstring(libvirt_xml(stack, uuid)).findtext("name")
    with pytest.raises(AcpError) as err:
        await student.acp(vm_full(student_vm, agent.jid), DEFINITION, "define",
                          children=[definition(name, uuid, memory="<memory unit='TiB'>1</memory>")])
    # the shipped config's vm_max_memory (16384 MiB) is below the rig host's memory
    assert ("definition refused: memory: 1073741824 KiB is more than the hypervisor's maximum "
            "(vm_max_memory): 16777216 KiB") in err.value.text
    with pytest.raises(AcpError) as err:
        await student.acp(vm_full(student_vm, agent.jid), DEFINITION, "define",
                          children=[definition(name, uuid, vcpu="<vcpu current='1'>255</vcpu>")])
    conn = libvirt.open(stack.libvirt_uri)
    try:
        host_cpus = conn.getInfo()[2]
    finally:
        conn.close()
    expected = (f"this host's CPUs: {host_cpus}" if host_cpus <= 8
                else "the hypervisor's maximum (vm_max_vcpus): 8")
    assert f"definition refused: vcpu: 255 vCPUs is more than {expected}" in err.value.text


async def test_an_admin_is_capped_too(agent, admin, stack):
    name = unique_name("big")
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, "alloc", {"name": name},
                        children=[definition(name, None, memory="<memory unit='TiB'>1</memory>")])
    assert_refused(err.value, "memory")
    assert not domain_named(stack, name)


@pytest.fixture
def default_network(stack):
    """A transient isolated libvirt network 'default' (a bridge without address: no host IP, no dnsmasq)."""
    bridge = f"apb{uuidlib.uuid4().hex[:10]}"
    conn = libvirt.open(stack.libvirt_uri)
    try:
        net = conn.networkCreateXML(f"<network><name>default</name><bridge name='{bridge}' stp='off'/></network>")
        yield net
        net.destroy()
    finally:
        conn.close()


def nwfilter_bindings(stack) -> list[str]:
    out = subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "nwfilter-binding-list"],
                         check=True, capture_output=True, text=True).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


async def test_students_nic_gets_clean_traffic_and_the_vm_starts(agent, admin, stack, student, default_network):
    conn = libvirt.open(stack.libvirt_uri)
    try:
        filters = conn.listNWFilters()
    finally:
        conn.close()
    assert "clean-traffic" in filters, "the rig's libvirtd lacks libvirt's nwfilters (libvirt-daemon-config-nwfilter)"
    jid = await alloc(student, agent.full_jid, unique_name("nic"))
    full = vm_full(jid, agent.jid)
    uuid = jid.split("@")[0]
    try:
        await wait_vm_ready(student, full)
        name = ET.fromstring(libvirt_xml(stack, uuid)).findtext("name")
        await student.acp(full, DEFINITION, "define", children=[definition(
            name, uuid, devices="<interface type='network'><source network='default'/><model type='virtio'/>"
                                "</interface>")])
        iface = ET.fromstring(libvirt_xml(stack, uuid)).find("devices/interface")
        assert [f.get("filter") for f in iface.iter("filterref")] == ["clean-traffic"]
        await student.acp(full, CONTROL, "create")
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
        conn = libvirt.open(stack.libvirt_uri)
        try:
            live = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(0))
        finally:
            conn.close()
        tap = live.find("devices/interface/target").get("dev")
        assert [tap, "clean-traffic"] in nwfilter_bindings(stack)      # libvirt applied the filter
        await student.acp(full, CONTROL, "destroy")
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF)
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_admins_nic_gets_no_filter_added(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("anic"))
    full = vm_full(jid, agent.jid)
    uuid = jid.split("@")[0]
    try:
        await wait_vm_ready(admin, full)
        name = ET.fromstring(libvirt_xml(stack, uuid)).findtext("name")
        await admin.acp(full, DEFINITION, "define", children=[definition(
            name, uuid, devices="<interface type='network'><source network='default'/></interface>",
            top="<memtune><soft_limit unit='MiB'>512</soft_limit></memtune>")])
        root = ET.fromstring(libvirt_xml(stack, uuid))
        assert root.find("devices/interface/filterref") is None and root.find("memtune") is not None
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_students_clone_of_libvirts_own_xml_passes(agent, admin, stack, student):
    """clone re-checks what libvirt wrote (controllers, addresses, <audio>, <cpu>...) for the
    student's copy: it passes, and the copy's NIC carries clean-traffic."""
    await grant(admin, agent.full_jid, student.jid, "clone")
    jid = await alloc(student, agent.full_jid, unique_name("csrc"))
    uuid, full = jid.split("@")[0], vm_full(jid, agent.jid)
    copies = []
    try:
        await wait_vm_ready(student, full)
        name = ET.fromstring(libvirt_xml(stack, uuid)).findtext("name")
        await student.acp(full, DEFINITION, "define", children=[definition(
            name, uuid, devices="<interface type='network'><source network='default'/></interface>"
                                "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
                                "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>")])
        reply = await student.acp(agent.full_jid, HV_NS, "clone", {"jid": jid, "name": unique_name("ccopy")})
        copies.append(reply[0].get("jid"))
        copy = ET.fromstring(libvirt_xml(stack, copies[0].split("@")[0]))
        assert [f.get("filter") for f in copy.iter("filterref")] == ["clean-traffic"]
        assert copy.find("devices/controller") is not None      # libvirt's own additions went through
    finally:
        for vm in [jid, *copies]:
            await admin.acp(agent.full_jid, HV_NS, "free", {"jid": vm})
        await grant(admin, agent.full_jid, student.jid, "clone", value=False)
