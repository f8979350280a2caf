"""Maintenance mode on three namespaced hypervisors (hypervisor/maintenance.py): hv-1 with six
VMs (four running, two shut off) is emptied by migration to hv-2 and hv-3 (hv-3 limited to two
VMs by hypervisor_max_vms), refuses alloc and incoming migrations meanwhile, and takes VMs
again after ``off``.  The admin CLI drives it like any client."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import admin_client
from agent_process import REPO
from hypervisor_fixtures import running_agents
from vm_helpers import CONTROL, alloc, wait_vm_ready
from xmpp_client import AcpError

HV_NS = "archipel:hypervisor:control"


@pytest.fixture(scope="module")
def hypervisors(stack):
    members = stack.start_hypervisors(3)
    yield members
    stack.hypervisors.stop()


@pytest_asyncio.fixture(scope="module")
async def admin(stack):
    client = await admin_client(stack, "maintenance")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module")
async def agents(stack, hypervisors, admin):
    def limits(hv):  # hv-3 takes at most 2 VMs (placement's per-host limit)
        return {"HYPERVISOR": {"hypervisor_max_vms": "2"}} if hv.index == 3 else None

    async with running_agents(stack, hypervisors, admin, limits) as handles:
        yield handles



def _states(hv) -> dict[str, int]:
    conn = libvirt.open(hv.libvirt_uri)
    try:
        return {d.UUIDString(): d.state()[0] for d in conn.listAllDomains()}
    finally:
        conn.close()


async def _peers_online(admin, agent, count: int) -> None:
    for _ in range(100):
        query = await admin.acp(agent.full_jid, HV_NS, "peers")
        if sum(el.get("state") == "online" for el in query) == count:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{agent.jid} does not see {count} peers online")


async def _status(admin, agent) -> dict:
    query = await admin.acp(agent.full_jid, HV_NS, "maintenance", {"mode": "status"})
    el = query[0]
    return {**el.attrib, "refused": {r.get("jid"): r.get("reason") for r in el}}


def admin_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archipelagent.admin.cli", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


async def test_refusals(stack, agents, admin, new_user):
    """A stranger may not; a bad mode is a clear argument error; peerinfo is for peers only."""
    a = agents[0]
    stranger = await new_user("maintstranger")
    with pytest.raises(AcpError) as refused:
        await stranger.acp(a.full_jid, HV_NS, "maintenance", {"mode": "on"})
    assert refused.value.is_permission_error
    with pytest.raises(AcpError) as bad:
        await admin.acp(a.full_jid, HV_NS, "maintenance", {"mode": "maybe"})
    assert bad.value.code == -46 and "on, off or status" in bad.value.text
    with pytest.raises(AcpError) as refused:
        await admin.acp(a.full_jid, HV_NS, "peerinfo")
    assert refused.value.is_permission_error
    assert (await _status(admin, a))["mode"] == "off"


async def test_evacuation_of_six_vms(stack, hypervisors, agents, admin, tmp_path):
    a, b, c = agents
    hv_a, hv_b, hv_c = hypervisors
    await _peers_online(admin, a, 2)
    vms = []
    for i in range(6):
        jid = await alloc(admin, a.full_jid, f"evac-{i}-{uuid.uuid4().hex[:4]}")
        await wait_vm_ready(admin, f"{jid}/{hv_a.name}")
        if i < 4:
            await admin.acp(f"{jid}/{hv_a.name}", CONTROL, "create")
        vms.append(jid)
    running = {j.split("@")[0] for j in vms[:4]}
    summary = stack.write_summary(tmp_path / "summary.json", hypervisor_full_jid=a.full_jid)

    done = await asyncio.to_thread(admin_cli, "--summary", str(summary), "maintenance", "on")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("maintenance on")
    with pytest.raises(AcpError) as refused:
        await admin.acp(a.full_jid, HV_NS, "alloc", {"name": f"nope-{uuid.uuid4().hex[:4]}"})
    assert refused.value.code == -49 and "maintenance" in refused.value.text
    for _ in range(600):
        status = await _status(admin, a)
        if status["evacuating"] == "no":
            break
        await asyncio.sleep(0.5)
    assert status == {**status, "mode": "on", "total": "6", "moved": "6", "failed": "0", "remaining": "0"}, status
    on_a, on_b, on_c = [await asyncio.to_thread(_states, hv) for hv in hypervisors]
    assert not (set(on_a) & {j.split("@")[0] for j in vms})
    placed = {**on_b, **on_c}
    for jid in vms:
        u = jid.split("@")[0]
        expected = libvirt.VIR_DOMAIN_RUNNING if u in running else libvirt.VIR_DOMAIN_SHUTOFF
        assert placed.get(u) == expected, (u, placed.get(u))
    assert len(set(on_c) & {j.split("@")[0] for j in vms}) <= 2  # hv-3's limit
    # every entity answers from its new host
    for jid in vms:
        u = jid.split("@")[0]
        host = hv_b if u in on_b else hv_c
        await wait_vm_ready(admin, f"{jid}/{host.name}")

    # an incoming migration is refused while in maintenance
    moved = next(j for j in vms if j.split("@")[0] in on_b)
    with pytest.raises(AcpError) as refused:
        await admin.acp(f"{moved}/{hv_b.name}", CONTROL, "migrate", {"hypervisorjid": a.full_jid})
    assert "maintenance" in refused.value.text
    # the CLI's status
    done = await asyncio.to_thread(admin_cli, "--summary", str(summary), "maintenance", "status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["moved"] == "6"

    done = await asyncio.to_thread(admin_cli, "--summary", str(summary), "maintenance", "off")
    assert done.returncode == 0, done.stderr
    back = await alloc(admin, a.full_jid, f"back-{uuid.uuid4().hex[:4]}")
    await wait_vm_ready(admin, f"{back}/{hv_a.name}")
    await admin.acp(f"{moved}/{hv_b.name}", CONTROL, "migrate", {"hypervisorjid": a.full_jid})
    await wait_vm_ready(admin, f"{moved}/{hv_a.name}")


async def test_a_vm_that_fits_nowhere_stays_with_the_reason(stack, hypervisors, agents, admin):
    """hv-3's peers are gone (their agents stopped): its VMs stay, each with the reason; hv-3
    shows it and comes back with off."""
    a, b, c = agents
    hv_c = hypervisors[2]
    jid = await alloc(admin, c.full_jid, f"stuck-{uuid.uuid4().hex[:4]}")
    await wait_vm_ready(admin, f"{jid}/{hv_c.name}")
    a.process.stop()
    b.process.stop()
    try:
        await _peers_online(admin, c, 0)
        await admin.acp(c.full_jid, HV_NS, "maintenance", {"mode": "on"})
        for _ in range(120):
            status = await _status(admin, c)
            if status["evacuating"] == "no":
                break
            await asyncio.sleep(0.5)
        assert status["moved"] == "0" and status["failed"] == status["total"] == status["remaining"], status
        assert "no peer hypervisor" in status["refused"][jid], status
        await admin.acp(c.full_jid, HV_NS, "maintenance", {"mode": "off"})
        assert (await _status(admin, c))["mode"] == "off"
    finally:
        a.process.start()
        b.process.start()
        await asyncio.gather(a.wait_ready(admin), b.wait_ready(admin))
    await admin.acp(f"{jid}/{hv_c.name}", CONTROL, "info")
