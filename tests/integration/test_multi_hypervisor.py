"""Several hypervisors on one rig (rig/hypervisors.py): namespaced libvirtds, one agent each,
all on the session's ejabberd and slapd, one shared storage."""
from __future__ import annotations

import asyncio
import subprocess

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import admin_client
from hypervisor_fixtures import hypervisor_agent

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
    agents = [hypervisor_agent(stack, hv) for hv in hypervisors]
    for a in agents:
        a.process.start()
    try:
        await asyncio.gather(*(a.wait_ready(hv_admin) for a in agents))
        yield agents
    finally:
        for a in agents:
            a.process.stop()


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
