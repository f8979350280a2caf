"""Class networks across two hypervisors, network rights and the network policy (issue 13),
against the real stack: two namespaced libvirtds (rig/hypervisors.py), one agent each, the
rig's LDAP people (teacher1, student1, student2, stranger1 log in with their LDAP passwords).

A teacher defines a class network once on hv-1 and grants its use to the LDAP group
``students``; a student's VM on hv-1 and another's on hv-2 (diskless, ``<boot dev='network'/>``:
QEMU's iPXE ROM asks DHCP with no guest image) both get a lease from the one dnsmasq on hv-1,
the second across the VXLAN between the hypervisors.  NICs on a network not granted or on a host
bridge are refused; each student NIC carries libvirt's clean-traffic binding with its MAC.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import PERMS_NS, admin_client, client_for
from hypervisor_fixtures import running_agents
from vm_helpers import CONTROL, DEFINITION, HV_NS, vm_full, wait_vm_ready
from xmpp_client import AcpError

NET_NS = "archipel:hypervisor:network"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def hypervisors(stack):
    members = stack.start_hypervisors(2)
    yield members
    stack.hypervisors.stop()


@pytest_asyncio.fixture(scope="module")
async def net_admin(stack):
    client = await admin_client(stack, "networks")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module")
async def hv_agents(stack, hypervisors, net_admin):
    def settings(hv):
        return {"VIRTUALMACHINE": {"vm_allowed_networks": ""},  # rights only
                # one VNI: each test's class network reuses the previous one's (test_a_vni_freed_elsewhere…)
                "NETWORKS": {"vxlan_device": "mig0", "network_namespace": hv.netns, "vxlan_vni_range": "1000-1000"}}

    async with running_agents(stack, hypervisors, net_admin, settings) as agents:
        yield agents



@pytest_asyncio.fixture(scope="module")
async def people(stack, hv_agents):
    clients = {}
    for uid in ("teacher1", "student1", "student2", "stranger1"):
        user = stack.user(uid)
        clients[uid] = await client_for(stack, user["jid"], user["password"], f"net-{uid}").connect()
    yield clients
    for client in clients.values():
        await client.close()


def item(ptype: str, target: str, name: str) -> ET.Element:
    return ET.Element("permission", {"permission_type": ptype, "permission_target": target,
                                     "permission_name": name, "permission_value": "true"})


def network_xml(name: str, third: int, extra: str = "") -> ET.Element:
    return ET.fromstring(f"<network><name>{name}</name>{extra}<ip address='10.200.{third}.1' prefix='24'>"
                         f"<dhcp><range start='10.200.{third}.100' end='10.200.{third}.200'/></dhcp></ip></network>")


def diskless(network: str | None = None, bridge: str | None = None) -> ET.Element:
    source = f"<interface type='network'><source network='{network}'/>" if network else \
        f"<interface type='bridge'><source bridge='{bridge}'/>"
    return ET.fromstring(f"""<domain type='qemu'>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {source}<model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>""")


async def expect_error(coro, code: int, *fragments: str) -> AcpError:
    with pytest.raises(AcpError) as err:
        await coro
    assert err.value.code == code, err.value
    for fragment in fragments:
        assert fragment in err.value.text, err.value
    return err.value


async def adhoc_error(client, to: str, node: str, **fields) -> str:
    """The error note of an ad-hoc command submitted with ``fields`` (the form path)."""
    plugin = client.xmpp.plugin["xep_0050"]
    first = await plugin.send_command(to, node, timeout=10)
    form = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    for var, value in fields.items():
        form.add_field(var=var, value=value)
    done = await plugin.send_command(to, node, action="complete", sessionid=first["command"]["sessionid"],
                                     payload=form, timeout=30)
    notes = done["command"]["notes"]
    assert notes and notes[0][0] == "error", notes
    return notes[0][1]


def libvirt_call(uri: str, fn):
    conn = libvirt.open(uri)
    try:
        return fn(conn)
    finally:
        conn.close()


def nic_mac(uri: str, uuid: str) -> str:
    def read(conn):
        root = ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(0))
        return root.find("devices/interface/mac").get("address")
    return libvirt_call(uri, read)


async def wait_leases(uri: str, network: str, macs: set[str], timeout: float = 120) -> dict[str, str]:
    """MAC → IP of the leases of ``network`` on that libvirtd (its dnsmasq), once all ``macs`` have one."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        leases = await asyncio.to_thread(libvirt_call, uri, lambda c: c.networkLookupByName(network).DHCPLeases())
        found = {lease["mac"]: lease["ipaddr"] for lease in leases}
        if macs <= set(found):
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"leases {found}, expected {macs}")
        await asyncio.sleep(1)


async def test_class_network_spans_hypervisors_with_one_dhcp(stack, hypervisors, hv_agents, net_admin, people):
    hv1, hv2 = hv_agents
    teacher, s1, s2, stranger = (people[u] for u in ("teacher1", "student1", "student2", "stranger1"))
    for hv in hv_agents:  # the site's rights: teachers define networks, students (and the stranger) alloc
        await net_admin.acp(hv.full_jid, PERMS_NS, "set", children=[
            item("group", "teachers", "network_define"), item("group", "teachers", "network_grant"),
            item("group", "teachers", "network_grants"), item("group", "teachers", "network_undefine"),
            item("group", "students", "alloc"), item("group", "students", "network_getnames"),
            item("group", "students", "message"), item("group", "students", "network_get"),
            item("user", stranger.jid, "alloc")])
    name, third = f"cls{uuidlib.uuid4().hex[:6]}", random.randint(10, 250)

    # the network policy: what a teacher may not define, each with its error reply
    await expect_error(teacher.acp(hv1.full_jid, NET_NS, "define", children=[ET.fromstring(
        f"<network><name>{name}</name><forward mode='bridge'/><bridge name='mig0'/></network>")]),
        -50, "network/forward")
    await expect_error(teacher.acp(hv1.full_jid, NET_NS, "define", children=[ET.fromstring(
        f"<network><name>{name}</name><forward mode='nat' dev='mig0'/></network>")]), -50, "network/forward")
    await expect_error(teacher.acp(hv1.full_jid, NET_NS, "define", children=[
        ET.fromstring(f"<network><name>{name}</name><ip address='192.168.3.1' prefix='24'/></network>")]),
        -50, "outside the address pool")
    await expect_error(s1.acp(hv1.full_jid, NET_NS, "define", children=[network_xml(name, third)]), -1)  # no right

    # once, on hv-1: a class network; its DHCP is there
    reply = await teacher.acp(hv1.full_jid, NET_NS, "define", {"scope": "class"}, children=[network_xml(name, third)])
    vni = int(reply[0].get("vni"))
    assert reply[0].get("bridge") == f"acn{vni}"
    await expect_error(teacher.acp(hv1.full_jid, NET_NS, "define", children=[
        network_xml(f"o{name}", third)]), -50, "overlaps")
    # not granted yet: student1 may not attach
    await expect_error(s1.acp(hv1.full_jid, HV_NS, "alloc", children=[diskless(name)]), -50,
                       "devices/interface/source", f"network '{name}' is not granted")
    await teacher.acp(hv1.full_jid, NET_NS, "grant",
                      {"network": name, "target_type": "group", "target": "students", "right": "use"})
    grants = await teacher.acp(hv1.full_jid, NET_NS, "grants", {"network": name})
    assert {(g.get("target_type"), g.get("target"), g.get("right")) for g in grants[0]} >= {
        ("group", "students", "use"), ("user", teacher.jid, "all")}
    note = await adhoc_error(teacher, hv1.full_jid, f"{NET_NS}#define", network=(
        f"<network><name>f{name}</name><forward mode='bridge'/><bridge name='mig0'/></network>"))
    assert "network/forward" in note, note
    assert name in await s1.chat(hv1.full_jid, "list networks")  # the chat word, same rights
    names = await s2.acp(hv2.full_jid, NET_NS, "getnames")  # hv-2 learnt it from the shared catalogue
    assert name in {n.get("name") for n in names}

    # refused: the stranger (not in students), a host bridge, a define swapping in a bridge
    await expect_error(stranger.acp(hv2.full_jid, HV_NS, "alloc", children=[diskless(name)]), -50,
                       f"network '{name}' is not granted")
    await expect_error(s1.acp(hv1.full_jid, HV_NS, "alloc", children=[diskless(bridge="mig0")]), -50,
                       "is a host bridge")

    uuids = []
    try:
        for client, hv in ((s1, hv1), (s2, hv2)):
            jid = (await client.acp(hv.full_jid, HV_NS, "alloc", children=[diskless(name)]))[0].get("jid")
            uuids.append((hv, jid.split("@")[0]))
            full = vm_full(jid, hv.jid)
            await wait_vm_ready(client, full)
            if client is s1:
                await expect_error(client.acp(full, DEFINITION, "define", children=[diskless(bridge="mig0")]),
                                   -50, "is a host bridge")
                note = await adhoc_error(client, full, f"{DEFINITION}#define",
                                         domain=ET.tostring(diskless(bridge="mig0"), encoding="unicode"))
                assert "is a host bridge" in note, note
            await client.acp(full, CONTROL, "create")
        uri1, uri2 = (h.libvirt_uri for h in hypervisors)
        macs = {nic_mac(uri, uuid) for uri, (_hv, uuid) in zip((uri1, uri2), uuids)}
        leases = await wait_leases(uri1, name, macs)  # hv-1's dnsmasq served both, hv-2's across the VXLAN
        subnet = ipaddress.IPv4Network(f"10.200.{third}.0/24")
        assert all(ipaddress.IPv4Address(ip) in subnet for ip in leases.values())
        assert libvirt_call(uri2, lambda c: c.networkLookupByName(name).DHCPLeases()) == []  # no DHCP on hv-2
        # anti-spoofing: each NIC has its clean-traffic binding with its own MAC (libvirt drops other source MACs)
        for uri, (_hv, uuid) in zip((uri1, uri2), uuids):
            mac = nic_mac(uri, uuid)
            bindings = libvirt_call(uri, lambda c: [ET.fromstring(b.XMLDesc()) for b in c.listAllNWFilterBindings()])
            mine = [b for b in bindings if b.find("mac").get("address") == mac]
            assert [b.find("filterref").get("filter") for b in mine] == ["clean-traffic"]
            params = {p.get("name"): p.get("value") for p in mine[0].iter("parameter")}
            assert params.get("MAC") == mac
    finally:
        for hv, uuid in uuids:
            try:
                await net_admin.acp(hv.full_jid, HV_NS, "free", {"jid": f"{uuid}@{stack.domain}"})
            except AcpError:
                pass
    # the teacher undefines it once; hv-2's half goes at its next sync
    await teacher.acp(hv1.full_jid, NET_NS, "undefine", {"uuid": name})
    await net_admin.acp(hv2.full_jid, NET_NS, "getnames")
    assert name not in libvirt_call(hypervisors[1].libvirt_uri, lambda c: c.listNetworks() + c.listDefinedNetworks())


GUEST_DHCP = """cat > /bound.sh <<'SCRIPT'
#!/bin/sh
[ "$1" = bound ] && ifconfig "$interface" "$ip" netmask "$subnet" && echo "LEASE $ip" > /dev/ttyS0
exit 0
SCRIPT
chmod +x /bound.sh
ip link set eth0 up
udhcpc -i eth0 -s /bound.sh -q -n -t 60 -T 2 || echo NO-LEASE > /dev/ttyS0
"""

# hv-2's guest: reach hv-1's across the VXLAN, then send with a spoofed MAC (clean-traffic must drop it)
GUEST_PINGER = GUEST_DHCP + """
ok=no
for i in $(seq 1 60); do ping -c 1 -W 2 {peer} >/dev/null 2>&1 && ok=yes && break; sleep 1; done
echo "PING-$ok" > /dev/ttyS0
ip link set eth0 down; ip link set eth0 address 52:54:00:de:ad:99; ip link set eth0 up
ip neigh flush dev eth0
if ping -c 3 -W 2 {peer} >/dev/null 2>&1; then echo SPOOF-PASSED > /dev/ttyS0; else echo SPOOF-DROPPED > /dev/ttyS0; fi
"""


def guest_domain(kernel: str, initrd: str, network: str, mac: str, console: str) -> ET.Element:
    from rig.guest import os_element
    return ET.fromstring(f"""<domain type='qemu'>
  <memory unit='MiB'>128</memory><vcpu>1</vcpu>
  {os_element(kernel, initrd)}
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='network'><mac address='{mac}'/><source network='{network}'/><model type='virtio'/></interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>""")


async def wait_console(path, marker: str, timeout: float = 300) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        if marker in text:
            return text
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{marker!r} not on the console:\n{text[-3000:]}")
        await asyncio.sleep(1)


@pytest.mark.parametrize("pinger", ["student", "admin"])
async def test_linux_guests_on_two_hypervisors_reach_each_other(stack, hypervisors, hv_agents, net_admin, people,
                                                                 pinger):
    """Two tiny Linux guests (TCG), one per hypervisor, lease with udhcpc from hv-1's dnsmasq, ping
    each other across the VXLAN; the second's spoofed MAC is dropped by clean-traffic when a student
    owns it, and passes from an admin's VM (no filter): the test sees the difference the filter makes."""
    from rig.guest import tiny_linux

    hv1, hv2 = hv_agents
    teacher, s1 = people["teacher1"], people["student1"]
    s2 = people["student2"] if pinger == "student" else net_admin
    for hv in hv_agents:
        await net_admin.acp(hv.full_jid, PERMS_NS, "set", children=[
            item("group", "teachers", "network_define"), item("group", "teachers", "network_grant"),
            item("group", "students", "alloc")])
    name, third = f"png{uuidlib.uuid4().hex[:6]}", random.randint(10, 250)
    macs = ("52:54:00:aa:00:01", "52:54:00:aa:00:02")
    net = network_xml(name, third)
    dhcp = net.find("ip/dhcp")
    for i, mac in enumerate(macs):
        ET.SubElement(dhcp, "host", {"mac": mac, "ip": f"10.200.{third}.{11 + i}"})
    await teacher.acp(hv1.full_jid, NET_NS, "define", {"scope": "class"}, children=[net])
    await teacher.acp(hv1.full_jid, NET_NS, "grant",
                      {"network": name, "target_type": "group", "target": "students", "right": "use"})
    shared, backing = stack.hypervisors.shared_path, stack.hypervisors.shared_backing
    made, consoles = [], []
    try:
        for i, (client, hv) in enumerate(((s1, hv1), (s2, hv2))):
            jid = (await client.acp(hv.full_jid, HV_NS, "alloc"))[0].get("jid")
            uuid = jid.split("@")[0]
            made.append((hv, jid))
            script = GUEST_DHCP if i == 0 else GUEST_PINGER.format(peer=f"10.200.{third}.11")
            await asyncio.to_thread(tiny_linux, backing / uuid, script)
            full = vm_full(jid, hv.jid)
            await wait_vm_ready(client, full)
            await client.acp(full, DEFINITION, "define", children=[guest_domain(
                str(shared / uuid / "vmlinuz"), str(shared / uuid / "initrd.gz"), name, macs[i],
                str(shared / uuid / "console.log"))])
            await client.acp(full, CONTROL, "create")
            consoles.append(backing / uuid / "console.log")
        await wait_console(consoles[0], f"LEASE 10.200.{third}.11")
        text = await wait_console(consoles[1], "SPOOF-")
        assert f"LEASE 10.200.{third}.12" in text and "PING-yes" in text, text[-3000:]
        assert ("SPOOF-DROPPED" if pinger == "student" else "SPOOF-PASSED") in text, text[-3000:]
        leases = await wait_leases(hypervisors[0].libvirt_uri, name, set(macs))
        assert leases == {macs[0]: f"10.200.{third}.11", macs[1]: f"10.200.{third}.12"}
    finally:
        for hv, jid in made:
            try:
                await net_admin.acp(hv.full_jid, HV_NS, "free", {"jid": jid})
            except AcpError:
                pass
        await teacher.acp(hv1.full_jid, NET_NS, "undefine", {"uuid": name})


def links_in(netns: str) -> dict[str, dict]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


async def test_a_vni_freed_elsewhere_is_reused_cleanly(stack, hypervisors, hv_agents, net_admin):
    """hv-2 still holds the half of a class network undefined on hv-1 when a new one gets its VNI:
    its next sync removes the old network without taking the new one's bridge and VXLAN port."""
    hv1, hv2 = hv_agents
    first, second = f"va{uuidlib.uuid4().hex[:6]}", f"vb{uuidlib.uuid4().hex[:6]}"
    await net_admin.acp(hv1.full_jid, NET_NS, "define", {"scope": "class"}, children=[network_xml(first, 7)])
    await net_admin.acp(hv2.full_jid, NET_NS, "getnames")  # hv-2 builds its half
    await net_admin.acp(hv1.full_jid, NET_NS, "undefine", {"uuid": first})  # hv-2 is not told
    reply = await net_admin.acp(hv1.full_jid, NET_NS, "define", {"scope": "class"}, children=[network_xml(second, 8)])
    vni = reply[0].get("vni")
    try:
        await net_admin.acp(hv2.full_jid, NET_NS, "getnames")  # hv-2's sync: old half out, new one in
        links = links_in(hypervisors[1].netns)
        assert f"acn{vni}" in links and links.get(f"acv{vni}", {}).get("master") == f"acn{vni}", sorted(links)
        uri2 = hypervisors[1].libvirt_uri
        assert libvirt_call(uri2, lambda c: c.networkLookupByName(second).isActive()) == 1
        assert first not in libvirt_call(uri2, lambda c: c.listNetworks() + c.listDefinedNetworks())
    finally:
        await net_admin.acp(hv1.full_jid, NET_NS, "undefine", {"uuid": second})
