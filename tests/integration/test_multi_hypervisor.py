"""Several hypervisors on one rig (rig/hypervisors.py): namespaced libvirtds, one agent each,
all on the session's ejabberd and slapd, one shared storage."""
from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import admin_client, grant
from hypervisor_fixtures import running_agents
from vm_helpers import CONTROL, alloc, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

HV_NS = "archipel:hypervisor:control"


@pytest.fixture(scope="module")
def hypervisors(stack):
    members = stack.start_hypervisors(2)
    yield members
    stack.hypervisors.stop()


@pytest_asyncio.fixture(scope="module")
async def hv_admin(stack):
    client = await admin_client(stack, "multi-hv")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module")
async def hv_agents(stack, hypervisors, hv_admin):
    async with running_agents(stack, hypervisors, hv_admin) as agents:
        yield agents



def test_hypervisors_are_isolated_and_joined(stack, hypervisors):
    """Each libvirtd has its own host identity and namespaces; they reach each other only
    over the rig's veths, and the shared storage is one folder at the same path in each."""
    a, b = hypervisors
    hostnames = set()
    for hv in hypervisors:
        conn = libvirt.open(hv.libvirt_uri)
        try:
            hostnames.add(conn.getURI())
            assert conn.getCapabilities().count(hv.libvirtd.host_uuid) == 1
        finally:
            conn.close()
    # b's libvirtd answers on qemu+tcp from a's namespace (the path of p2p migration)...
    probe = f"import socket; socket.create_connection(('{b.address}', 16509), 3).close()"
    subprocess.run(["ip", "netns", "exec", a.netns, "python3", "-c", probe], check=True)
    # ...and the rig put no address on the host's own interfaces
    host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert a.address not in host_addrs and b.address not in host_addrs
    # shared storage: written in a's mount namespace, read in b's, at the same path
    marker = stack.hypervisors.shared_path / "written-by-a"
    subprocess.run([*a.nsenter(), "sh", "-c", f"echo hello > {marker}"], check=True)
    seen = subprocess.run([*b.nsenter(), "cat", str(marker)], capture_output=True, text=True, check=True)
    assert seen.stdout == "hello\n"
    assert not marker.exists()  # the host sees the empty mount point, not the storage
    assert (stack.hypervisors.shared_backing / "written-by-a").read_text() == "hello\n"


async def test_two_hypervisor_entities_online(stack, hv_agents, hv_admin):
    """Both agents' hypervisor entities are online and answer, each from its own libvirtd."""
    hosts = set()
    for a in hv_agents:
        await hv_admin.see(a.jid)
        presence = await hv_admin.wait_presence(
            lambda p, jid=a.full_jid: str(p["from"]) == jid and p["type"] in ("available", ""), timeout=20)
        assert presence["type"] != "unavailable"
        info = await hv_admin.acp(a.full_jid, HV_NS, "migrationinfo")
        hosts.add(info[0].get("libvirt_uri"))
    assert len(hosts) == 2


FIRMWARE_VM = """<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def _state(uri: str, name: str):
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(name)
        return dom.state()[0], bool(dom.isPersistent())
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


@pytest.mark.parametrize("running", [True, False], ids=["live", "shut-off"])
def test_p2p_migration_between_namespaced_hypervisors(stack, hypervisors, running):
    """The flags of the agent's policy (hypervisor/migration.py) move a VM whose disk is on the
    shared storage from hv-1 to hv-2, peer to peer over the namespaces' network: live for a
    running VM, definition only for a shut-off one."""
    from archipelagent.hypervisor.migration import migration_flags

    a, b = hypervisors
    name = f"mig-{'live' if running else 'off'}-{uuid.uuid4().hex[:6]}"
    disk = stack.hypervisors.shared_path / f"{name}.qcow2"
    subprocess.run([*a.nsenter(), "qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    conn = libvirt.open(a.libvirt_uri)
    try:
        dom = conn.defineXML(FIRMWARE_VM.format(type=stack.domain_type, name=name, disk=disk))
        if running:
            dom.create()
        t0 = time.monotonic()
        # the rig's shared folder is a bind mount libvirt cannot know is shared: unsafe
        dom.migrateToURI3(b.migration_uri, {}, migration_flags(running, unsafe=True))
        elapsed = time.monotonic() - t0
    finally:
        conn.close()
    print(f"migration {'live' if running else 'offline'} hv-1 -> hv-2: {elapsed:.2f}s")
    assert _state(a.libvirt_uri, name) is None  # undefined on the source
    expected = libvirt.VIR_DOMAIN_RUNNING if running else libvirt.VIR_DOMAIN_SHUTOFF
    assert _state(b.libvirt_uri, name) == (expected, True)
    conn = libvirt.open(b.libvirt_uri)
    try:
        dom = conn.lookupByName(name)
        if running:
            dom.destroy()
        dom.undefine()
    finally:
        conn.close()


async def _peer_states(client, agent) -> dict[str, str]:
    query = await client.acp(agent.full_jid, HV_NS, "peers")
    return {el.get("jid"): el.get("state") for el in query}


async def _wait_peer_state(client, agent, peer_jid: str, state: str, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        states = await _peer_states(client, agent)
        if states.get(peer_jid) == state:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{agent.jid} sees {states}, expected {peer_jid} {state}")
        await asyncio.sleep(0.3)


async def test_hypervisors_know_each_other_through_the_shared_roster_group(stack, hv_agents, hv_admin, new_user):
    """Each agent sees the other through ejabberd's shared roster group; one that stops is gone
    and comes back when it restarts; a stranger may not ask."""
    a, b = hv_agents
    await _wait_peer_state(hv_admin, a, b.jid, "online")
    await _wait_peer_state(hv_admin, b, a.jid, "online")
    assert a.jid not in await _peer_states(hv_admin, a)  # not itself
    stranger = await new_user("peers")
    with pytest.raises(AcpError) as refused:
        await stranger.acp(a.full_jid, HV_NS, "peers")
    assert refused.value.is_permission_error
    b.process.stop()
    await _wait_peer_state(hv_admin, a, b.jid, "gone")
    b.process.start()
    await b.wait_ready(hv_admin)
    await _wait_peer_state(hv_admin, a, b.jid, "online")


async def test_live_migration_moves_the_vm_and_its_entity(stack, hypervisors, hv_agents, hv_admin, new_user):
    """migrate: needs migrate on the VM and on the destination; the running VM moves to hv-2
    (libvirt on both sides), commands answer -43 meanwhile, and the entity comes back online
    from hv-2 with the same JID, its owner's rights and no password anywhere it should not be."""
    a, b = hv_agents
    hv_a, hv_b = hypervisors
    await _wait_peer_state(hv_admin, a, b.jid, "online")
    owner = await new_user("migowner")
    stranger = await new_user("migstranger")
    owner_jid = owner.xmpp.boundjid.bare
    await grant(hv_admin, a.full_jid, owner_jid, "alloc")
    vm_name = f"mig-{uuid.uuid4().hex[:6]}"
    vm_jid = await alloc(owner, a.full_jid, vm_name)
    vm_uuid = vm_jid.split("@")[0]
    on_a, on_b = f"{vm_jid}/{hv_a.name}", f"{vm_jid}/{hv_b.name}"
    await wait_vm_ready(owner, on_a)
    await owner.see(vm_jid)
    await owner.acp(on_a, CONTROL, "create")
    await wait_libvirt_state(hv_a, vm_uuid, libvirt.VIR_DOMAIN_RUNNING)

    # refused: a stranger (no migrate on the VM); the owner before holding migrate on hv-2;
    # a destination that is no peer
    with pytest.raises(AcpError) as refused:
        await stranger.acp(on_a, CONTROL, "migrate", {"hypervisorjid": b.full_jid})
    assert refused.value.is_permission_error
    with pytest.raises(AcpError) as refused:
        await owner.acp(on_a, CONTROL, "migrate", {"hypervisorjid": b.full_jid})
    assert refused.value.is_permission_error, refused.value
    with pytest.raises(AcpError) as refused:
        await owner.acp(on_a, CONTROL, "migrate", {"hypervisorjid": f"{owner_jid}/tests"})
    assert refused.value.code == -46
    assert await asyncio.to_thread(_state_by_uuid, hv_a.libvirt_uri, vm_uuid) == libvirt.VIR_DOMAIN_RUNNING

    await grant(hv_admin, b.full_jid, owner_jid, "migrate")
    owner.presences = []
    t0 = time.monotonic()
    await owner.acp(on_a, CONTROL, "migrate", {"hypervisorjid": b.full_jid})
    with pytest.raises(AcpError) as busy:  # the migration lasts seconds; the reply came after the flag
        await owner.acp(on_a, CONTROL, "suspend")
    assert busy.value.code == -43
    with pytest.raises(AcpError) as busy:  # also through the hypervisor
        await hv_admin.acp(a.full_jid, HV_NS, "free", {"jid": vm_jid})
    assert busy.value.code == -43
    arrived = await owner.wait_presence(
        lambda p: str(p["from"]) == on_b and p["type"] != "unavailable", timeout=60)
    elapsed = time.monotonic() - t0
    print(f"migrate command to presence from the destination: {elapsed:.2f}s")
    assert arrived["from"].bare == vm_jid  # the same JID
    await wait_libvirt_state(hv_b, vm_uuid, libvirt.VIR_DOMAIN_RUNNING)
    await wait_libvirt_state(hv_a, vm_uuid, None)
    # the owner still controls it, now through hv-2; hv-1 forgot it
    await wait_vm_ready(owner, on_b)
    info = await owner.acp(on_b, CONTROL, "info")
    assert info[0].get("state") is not None
    await _wait_forgotten(hv_admin, a, vm_jid)
    # never offline for the owner: hv-2's resource was available before hv-1's went away
    left = await owner.wait_presence(lambda p: str(p["from"]) == on_a and p["type"] == "unavailable", timeout=20)
    assert left["status"] == "Migrated"
    migrating = [p for p in owner.presences if str(p["from"]) == on_a and p["status"].startswith("Migrating")]
    assert migrating and migrating[0]["show"] == "dnd"  # sent before the reply: always seen
    seen = [(str(p["from"]), p["type"]) for p in owner.presences]
    assert seen.index((on_b, "available")) < seen.index((on_a, "unavailable")), seen
    roster_b = await hv_admin.acp(b.full_jid, HV_NS, "rostervm")
    assert f"{vm_jid}/{hv_b.name}" in [el.text for el in roster_b]
    with pytest.raises(AcpError):
        await stranger.acp(on_b, CONTROL, "info")  # rights followed: still a stranger there
    # the vCard (on ejabberd, republished by hv-2's agent) still names the VM
    vcard = await owner.xmpp.plugin["xep_0054"].get_vcard(vm_jid, timeout=10)
    assert vcard["vcard_temp"]["FN"] == vm_name and vcard["vcard_temp"]["ROLE"] == "virtualmachine"
    # the owner followed: hv-2 counts the VM in the owner's usage, hv-1 no more
    usage_b = await owner.acp(b.full_jid, "archipel:quota", "usage")
    assert vm_jid in [el.get("jid") for el in usage_b[0] if el.tag.endswith("vm")]
    usage_a = await owner.acp(a.full_jid, "archipel:quota", "usage")
    assert vm_jid not in [el.get("jid") for el in usage_a[0] if el.tag.endswith("vm")]
    # the hand-over file is gone; the VM's password is in no agent's output
    assert not (stack.hypervisors.shared_backing / vm_uuid / ".archipel-handover.json").exists()
    password = _vm_password(b.lib_dir / "hypervisor.sqlite3", vm_uuid)
    assert password and _vm_password(a.lib_dir / "hypervisor.sqlite3", vm_uuid) is None
    for agent in (a, b):
        assert password not in (agent.lib_dir / "agent.out").read_text(errors="replace")
    await owner.acp(on_b, CONTROL, "destroy")


async def test_shut_off_vm_moves_its_definition(stack, hypervisors, hv_agents, hv_admin):
    """A shut-off VM moves too: its definition goes to hv-2, nothing starts, the entity follows."""
    a, b = hv_agents
    hv_a, hv_b = hypervisors
    await _wait_peer_state(hv_admin, a, b.jid, "online")
    vm_jid = await alloc(hv_admin, a.full_jid, f"migoff-{uuid.uuid4().hex[:6]}")
    vm_uuid = vm_jid.split("@")[0]
    await wait_vm_ready(hv_admin, f"{vm_jid}/{hv_a.name}")
    await hv_admin.acp(f"{vm_jid}/{hv_a.name}", CONTROL, "migrate", {"hypervisorjid": b.full_jid})
    await wait_vm_ready(hv_admin, f"{vm_jid}/{hv_b.name}")
    await wait_libvirt_state(hv_b, vm_uuid, libvirt.VIR_DOMAIN_SHUTOFF)
    await wait_libvirt_state(hv_a, vm_uuid, None)
    info = await hv_admin.acp(f"{vm_jid}/{hv_b.name}", CONTROL, "info")
    assert info[0].get("state") == str(libvirt.VIR_DOMAIN_SHUTOFF)


async def test_failed_migration_leaves_the_vm_on_the_source(stack, hypervisors, hv_agents, hv_admin):
    """libvirt fails (the destination's libvirtd is down): the source keeps the running VM,
    commands are served again, the hand-over file is removed, nothing is left on hv-2."""
    a, b = hv_agents
    hv_a, hv_b = hypervisors
    await _wait_peer_state(hv_admin, a, b.jid, "online")
    vm_jid = await alloc(hv_admin, a.full_jid, f"migfail-{uuid.uuid4().hex[:6]}")
    vm_uuid = vm_jid.split("@")[0]
    on_a = f"{vm_jid}/{hv_a.name}"
    await wait_vm_ready(hv_admin, on_a)
    await hv_admin.see(vm_jid)
    await hv_admin.acp(on_a, CONTROL, "create")
    await wait_libvirt_state(hv_a, vm_uuid, libvirt.VIR_DOMAIN_RUNNING)
    await asyncio.to_thread(hv_b.libvirtd.stop, destroy_domains=True)
    try:
        hv_admin.presences = []
        await hv_admin.acp(on_a, CONTROL, "migrate", {"hypervisorjid": b.full_jid})
        await hv_admin.wait_presence(
            lambda p: str(p["from"]) == on_a and p["status"] == "Running", timeout=60)
        assert await asyncio.to_thread(_state_by_uuid, hv_a.libvirt_uri, vm_uuid) == libvirt.VIR_DOMAIN_RUNNING
        await hv_admin.acp(on_a, CONTROL, "suspend")  # served again, not -43
        await hv_admin.acp(on_a, CONTROL, "resume")
        assert not (stack.hypervisors.shared_backing / vm_uuid / ".archipel-handover.json").exists()
    finally:
        await asyncio.to_thread(hv_b.libvirtd.start, False, netns=hv_b.netns)
    assert await asyncio.to_thread(_state_by_uuid, hv_b.libvirt_uri, vm_uuid) is None
    await hv_admin.acp(on_a, CONTROL, "destroy")


async def test_migrationprepare_is_for_peers_and_checks_the_requester(stack, hv_agents, hv_admin, new_user):
    """Only a peer hypervisor may announce a migration, only for a requester holding migrate on
    the destination, with a UUID that is one and not already there."""
    import configparser
    from agent_fixtures import client_for

    a, b = hv_agents
    await _wait_peer_state(hv_admin, b, a.jid, "online")
    user = await new_user("prep")
    user_jid = user.xmpp.boundjid.bare
    fresh = str(uuid.uuid4())
    # not a peer: even the admin (root admin of every agent) is refused
    with pytest.raises(AcpError) as refused:
        await hv_admin.acp(b.full_jid, HV_NS, "migrationprepare", {"requester": hv_admin.xmpp.boundjid.bare,
                                                                   "uuid": fresh})
    assert refused.value.is_permission_error
    # as the peer hv-1 (its account, another resource)
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(a.process.config_path)
    peer = await client_for(stack, a.jid, conf["HYPERVISOR"]["hypervisor_xmpp_password"], "peer-test").connect()
    try:
        with pytest.raises(AcpError) as refused:  # the requester does not hold migrate on hv-2
            await peer.acp(b.full_jid, HV_NS, "migrationprepare", {"requester": user_jid, "uuid": fresh})
        assert refused.value.is_permission_error
        await grant(hv_admin, b.full_jid, user_jid, "migrate")
        with pytest.raises(AcpError) as refused:
            await peer.acp(b.full_jid, HV_NS, "migrationprepare", {"requester": user_jid, "uuid": "nope"})
        assert refused.value.code == -46
        reply = await peer.acp(b.full_jid, HV_NS, "migrationprepare", {"requester": user_jid, "uuid": fresh})
        hv_b = stack.hypervisors.members[1]
        assert reply[0].get("libvirt_uri") == hv_b.migration_uri
    finally:
        await peer.close()


async def _wait_forgotten(client, agent, vm_jid: str, timeout: float = 40) -> None:
    """Until the source's rostervm no longer lists the VM (it waits for the VM's presence from
    the destination first; its record and rights go before the listing does)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        roster = await client.acp(agent.full_jid, HV_NS, "rostervm")
        if vm_jid not in [(el.text or "").split("/")[0] for el in roster]:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{agent.jid} still lists {vm_jid}")
        await asyncio.sleep(0.2)


async def test_destination_agent_killed_mid_way(stack, hypervisors, hv_agents, hv_admin):
    """The destination's agent is SIGKILLed once the migration started: the libvirtds finish it,
    the source forgets the VM (after waiting for its presence), and the destination's agent,
    restarted, adopts the VM from the hand-over file (or had adopted it before dying): the VM
    runs on hv-2 only, its entity is online from hv-2, nothing is left on hv-1."""
    a, b = hv_agents
    hv_a, hv_b = hypervisors
    await _wait_peer_state(hv_admin, a, b.jid, "online")
    vm_jid = await alloc(hv_admin, a.full_jid, f"migkill-{uuid.uuid4().hex[:6]}")
    vm_uuid = vm_jid.split("@")[0]
    on_a, on_b = f"{vm_jid}/{hv_a.name}", f"{vm_jid}/{hv_b.name}"
    await wait_vm_ready(hv_admin, on_a)
    await hv_admin.acp(on_a, CONTROL, "create")
    await wait_libvirt_state(hv_a, vm_uuid, libvirt.VIR_DOMAIN_RUNNING)
    await hv_admin.acp(on_a, CONTROL, "migrate", {"hypervisorjid": b.full_jid})
    b.process.kill()
    await wait_libvirt_state(hv_b, vm_uuid, libvirt.VIR_DOMAIN_RUNNING, timeout=60)
    await wait_libvirt_state(hv_a, vm_uuid, None)
    await _wait_forgotten(hv_admin, a, vm_jid, timeout=60)  # after its 30 s wait
    b.process.start()
    await b.wait_ready(hv_admin)
    await wait_vm_ready(hv_admin, on_b)
    assert _vm_password(a.lib_dir / "hypervisor.sqlite3", vm_uuid) is None
    assert _vm_password(b.lib_dir / "hypervisor.sqlite3", vm_uuid)
    assert not (stack.hypervisors.shared_backing / vm_uuid / ".archipel-handover.json").exists()
    await hv_admin.acp(on_b, CONTROL, "destroy")


def _vm_password(db, vm_uuid: str):
    import sqlite3
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT password FROM vms WHERE uuid = ?", (vm_uuid,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def _state_by_uuid(uri: str, vm_uuid: str):
    conn = libvirt.open(uri)
    try:
        return conn.lookupByUUIDString(vm_uuid).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()
