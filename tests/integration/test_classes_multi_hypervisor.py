"""A class spread over two namespaced hypervisors (rig/hypervisors.py, one shared storage).

hv-1 and hv-2 each take one VM (``hypervisor_max_vms = 1``), so the placement
(hypervisor/placement.py) puts one student's VM on each.  The VM placed on hv-2 is made by
hv-2 itself, which checks the teacher's rights there: without ``class_provision`` on hv-2
that student is refused with hv-2's answer, the other made on hv-1; once granted, the re-run
makes it on hv-2.  The teacher then reports, starts, stops and deletes the class from hv-1,
each student reaches their VM wherever it is, not the neighbour's, and a stranger (not a
peer) cannot use hv-2's peers-only request.
"""
from __future__ import annotations

import asyncio
import uuid as uuidlib
import xml.etree.ElementTree as ET

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import PERMS_NS, admin_client, client_for, grant
from hypervisor_fixtures import running_agents
from vm_helpers import CONTROL, alloc, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

NS = "archipel:hypervisor:classes"
HV_NS = "archipel:hypervisor:control"
DISK = "archipel:vm:disk"


@pytest.fixture(scope="module")
def hypervisors(stack):
    members = stack.start_hypervisors(2)
    yield members
    stack.hypervisors.stop()


@pytest_asyncio.fixture(scope="module")
async def hv_admin(stack):
    client = await admin_client(stack, "classes-multi-hv")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module")
async def hv_agents(stack, hypervisors, hv_admin):
    async with running_agents(stack, hypervisors, hv_admin,
                              lambda hv: {"HYPERVISOR": {"hypervisor_max_vms": "1"}}) as agents:
        yield agents


@pytest_asyncio.fixture(scope="module")
async def people(stack, hv_agents):
    clients = {}
    for uid in ("teacher1", "student1", "student2"):
        user = stack.user(uid)
        clients[uid] = await client_for(stack, user["jid"], user["password"], f"classes-mhv-{uid}").connect()
    yield clients
    for client in clients.values():
        await client.close()


async def peers_online(admin, agent, count: int) -> None:
    for _ in range(200):
        if sum(el.get("state") == "online" for el in await admin.acp(agent.full_jid, HV_NS, "peers")) == count:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{agent.jid} does not see {count} peers online")


async def make_golden(admin, agent, stack) -> str:
    """A golden image in the folder every hypervisor shares, made through hv-1's storage module."""
    jid = await alloc(admin, agent.full_jid, f"gold-{uuidlib.uuid4().hex[:6]}")
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    await admin.acp(full, DISK, "create", {"name": "base", "size": "16", "unit": "M"})
    golden = f"mhv-{uuidlib.uuid4().hex[:8]}"
    await admin.acp(full, DISK, "setgolden", {"name": "base.qcow2", "golden": golden})
    for _ in range(600):
        if golden in {g.get("name", "").split(".")[0] for g in await admin.acp(full, DISK, "getgolden")}:
            break
        await asyncio.sleep(0.2)
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
    return golden


def state_on(hv, uuid: str):
    conn = libvirt.open(hv.libvirt_uri)
    try:
        return conn.lookupByUUIDString(uuid).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


async def test_a_class_over_two_hypervisors(stack, hypervisors, hv_agents, hv_admin, people):
    hv1, hv2 = hypervisors
    a, b = hv_agents
    teacher, s1, s2 = people["teacher1"], people["student1"], people["student2"]
    await peers_online(hv_admin, a, 1)
    await peers_online(hv_admin, b, 1)
    golden = await make_golden(hv_admin, a, stack)
    role = f"mhv-{uuidlib.uuid4().hex[:6]}"
    for agent in (a, b):  # roles and rights live in each hypervisor's permission store
        await hv_admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                           children=[ET.Element("permission", {"name": p}) for p in ("presence", "info", "create", "class_reset")])
    await grant(hv_admin, a.full_jid, teacher.jid, "alloc", "free", "class_provision", "class_report", "class_start",
                "class_stop", "class_delete", "class_reset", "class_lease")
    await grant(hv_admin, b.full_jid, teacher.jid, "alloc", "free")  # not class_provision: hv-2 must refuse
    name = f"m{uuidlib.uuid4().hex[:6]}"
    args = {"name": name, "group": "students", "golden": golden, "role": role}

    # hv-2 checks the teacher itself: the student placed there is refused with hv-2's answer
    first = {v.get("student"): v for v in await teacher.acp(a.full_jid, NS, "provision", args)}
    assert sorted(v.get("status") for v in first.values()) == ["created", "refused"], [dict(v.attrib) for v in first.values()]
    refused = next(v for v in first.values() if v.get("status") == "refused")
    assert refused.get("code") == "-1" and b.jid in refused.get("error") and "class provision" in refused.get("error")
    made = next(v for v in first.values() if v.get("status") == "created")
    assert made.get("hypervisor") is None  # on hv-1, the one asked

    await grant(hv_admin, b.full_jid, teacher.jid, "class_provision", "class_report", "class_start", "class_stop",
                "class_delete", "class_reset", "class_lease")
    again = {v.get("student"): v for v in await teacher.acp(a.full_jid, NS, "provision", {"name": name})}
    assert again[made.get("student")].get("status") == "existing"
    placed = again[refused.get("student")]
    assert placed.get("status") == "created" and placed.get("hypervisor") == b.jid, dict(placed.attrib)

    vms = {made.get("student"): (made.get("jid"), hv1, a), refused.get("student"): (placed.get("jid"), hv2, b)}
    for uid, (jid, hv, agent) in vms.items():
        assert state_on(hv, jid.split("@")[0]) == libvirt.VIR_DOMAIN_SHUTOFF
        assert state_on(hv1 if hv is hv2 else hv2, jid.split("@")[0]) is None  # made on one host only
    # each student reaches their own VM where it is, not the neighbour's
    clients = {"student1": s1, "student2": s2}
    for uid, (jid, hv, agent) in vms.items():
        await wait_vm_ready(clients[uid], vm_full(jid, agent.jid))
        other = next(u for u in clients if u != uid)
        with pytest.raises(AcpError) as err:
            await clients[other].acp(vm_full(jid, agent.jid), CONTROL, "info")
        assert err.value.code == -1

    # the teacher drives the whole class from hv-1
    report = {v.get("student"): v for v in await teacher.acp(a.full_jid, NS, "report", {"name": name})}
    assert {u: (v.get("state"), v.get("hypervisor")) for u, v in report.items()} == {
        made.get("student"): ("off", None), refused.get("student"): ("off", b.jid)}
    assert {v.get("status") for v in await teacher.acp(a.full_jid, NS, "start", {"name": name})} == {"ok"}
    for jid, hv, _agent in vms.values():
        await wait_libvirt_state(hv, jid.split("@")[0], libvirt.VIR_DOMAIN_RUNNING, timeout=60)
    report = {v.get("student"): v.get("state") for v in await teacher.acp(a.full_jid, NS, "report", {"name": name})}
    assert set(report.values()) == {"running"}
    assert {v.get("status") for v in await teacher.acp(a.full_jid, NS, "stop", {"name": name})} == {"ok"}
    for jid, hv, _agent in vms.values():
        await wait_libvirt_state(hv, jid.split("@")[0], libvirt.VIR_DOMAIN_SHUTOFF, timeout=60)

    # reset and lease reach hv-2's VM: hv-2 plans the lease's jobs on it, its student resets it there
    assert {v.get("status") for v in await teacher.acp(a.full_jid, NS, "reset", {"name": name})} == {"ok"}
    await teacher.acp(a.full_jid, NS, "lease", {"name": name, "expiry": "+2d", "warn": "1d"})
    jid2 = placed.get("jid")
    jobs = [j.get("action") for j in await teacher.acp(vm_full(jid2, b.jid), "archipel:entity:scheduler", "jobs")]
    assert sorted(jobs) == ["lease-shutoff", "lease-warn"]
    await clients[refused.get("student")].acp(vm_full(jid2, b.jid), "archipel:vm:classes", "reset")

    # the peers-only request: a user (even the teacher) is refused
    with pytest.raises(AcpError) as err:
        await teacher.acp(b.full_jid, NS, "member", {"op": "state", "name": name, "teacher": teacher.jid,
                                                     "uid": refused.get("student")})
    assert err.value.code == -1 and "peer" in err.value.text
    with pytest.raises(AcpError) as err:  # its arguments are checked before anything
        await teacher.acp(b.full_jid, NS, "member", {"op": "format", "name": name, "teacher": teacher.jid, "uid": "x"})
    assert err.value.code == -46 and "'op'" in err.value.text

    assert {v.get("status") for v in await teacher.acp(a.full_jid, NS, "delete", {"name": name})} == {"ok"}
    for jid, hv, _agent in vms.values():
        await wait_libvirt_state(hv, jid.split("@")[0], None, timeout=60)
    with pytest.raises(AcpError) as err:
        await teacher.acp(a.full_jid, NS, "report", {"name": name})
    assert err.value.code == -47
