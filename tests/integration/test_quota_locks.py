"""Quotas hold from the agent's first request, and one owner's requests cannot both pass a check.

Regressions of issue 10 item 3: the disk quota was read from a service created
lazily by other commands (a fresh agent let disk creation through unlimited),
and two concurrent requests of one owner were checked against the same usage.
"""
from __future__ import annotations

import asyncio

from agent_fixtures import grant
from vm_helpers import alloc, from_vm, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError

QUOTA_NS = "archipel:quota"
DISK = "archipel:vm:disk"
M = 1024 * 1024


async def set_disk_quota(admin, agent, user: str, value: str) -> None:
    await admin.acp(agent.full_jid, QUOTA_NS, "set", {"target_type": "user", "target": user, "disk": value})


async def owner_with_vms(agent, admin, new_user, count: int):
    owner = await new_user("qlock")
    await grant(admin, agent.full_jid, owner.jid, "alloc")
    jids = []
    for _ in range(count):
        jid = await alloc(owner, agent.full_jid, unique_name("ql"))
        await owner.wait_presence(from_vm(jid, "Off"), timeout=30)
        jids.append(jid)
    return owner, jids


async def test_disk_quota_holds_right_after_an_agent_start(agent, admin, new_user):
    owner, (jid,) = await owner_with_vms(agent, admin, new_user, 1)
    await set_disk_quota(admin, agent, owner.jid, str(8 * M))
    # a fresh agent process: no quota command, alloc or usage has run in it
    agent.process.stop()
    agent.process.start()
    await agent.wait_ready(admin)
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(owner, full)
    try:
        try:
            await owner.acp(full, DISK, "create", {"name": "big.raw", "format": "raw", "size": "64", "unit": "M"})
        except AcpError as err:
            assert err.code == -51, err.text
            assert err.text.startswith("quota exceeded: disk"), err.text
        else:
            raise AssertionError("a disk beyond the owner's quota was created")
        # within the quota it works
        await owner.acp(full, DISK, "create", {"name": "small.raw", "format": "raw", "size": "4", "unit": "M"})
    finally:
        await set_disk_quota(admin, agent, owner.jid, "")
        await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})


async def test_two_concurrent_disk_creations_of_one_owner_cannot_both_pass(agent, admin, new_user):
    """Two VMs of one owner (so the storage module's per-VM lock does not serialise them),
    each asking for 48 MiB at once under a 64 MiB quota: exactly one is created."""
    owner, jids = await owner_with_vms(agent, admin, new_user, 2)
    await set_disk_quota(admin, agent, owner.jid, str(64 * M))
    try:
        fulls = [vm_full(jid, agent.jid) for jid in jids]
        for full in fulls:
            await wait_vm_ready(owner, full)
        results = await asyncio.gather(
            *(owner.acp(full, DISK, "create", {"name": "d.raw", "format": "raw", "size": "48", "unit": "M"})
              for full in fulls),
            return_exceptions=True)
        refused = [r for r in results if isinstance(r, AcpError)]
        assert len(refused) == 1, results
        assert refused[0].code == -51 and "quota exceeded: disk" in refused[0].text, refused[0].text
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 1, results
    finally:
        await set_disk_quota(admin, agent, owner.jid, "")
        for jid in jids:
            await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})


async def test_two_concurrent_vcpu_changes_of_one_owner_cannot_both_pass(agent, admin, new_user):
    """Each VM's definition allows 2 vCPUs (the rig host may have only 2 CPUs); the owner may have one more than now: one setvcpus wins."""
    owner, jids = await owner_with_vms(agent, admin, new_user, 2)
    fulls = [vm_full(jid, agent.jid) for jid in jids]
    try:
        for full in fulls:
            await wait_vm_ready(owner, full)
            desc = (await owner.acp(full, "archipel:vm:control", "xmldesc"))[0]
            for el in desc.iter():
                el.tag = el.tag.split("}", 1)[-1]
            vcpu = desc.find("vcpu")
            vcpu.text, vcpu.attrib["current"] = "2", "1"
            await owner.acp(full, "archipel:vm:definition", "define", children=[desc])
        usage = (await owner.acp(agent.full_jid, QUOTA_NS, "usage"))[0]
        cpus = int(next(r.get("used") for r in usage if r.get("name") == "vcpus"))
        await admin.acp(agent.full_jid, QUOTA_NS, "set",
                        {"target_type": "user", "target": owner.jid, "vcpus": str(cpus + 1)})
        results = await asyncio.gather(
            *(owner.acp(full, "archipel:vm:control", "setvcpus", {"value": "2"}) for full in fulls),
            return_exceptions=True)
        refused = [r for r in results if isinstance(r, AcpError)]
        assert len(refused) == 1 and refused[0].code == -51, results
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 1, results
    finally:
        await admin.acp(agent.full_jid, QUOTA_NS, "set", {"target_type": "user", "target": owner.jid, "vcpus": ""})
        for jid in jids:
            await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})
