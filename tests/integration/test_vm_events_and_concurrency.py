"""Hypervisor pushes, clone progress, drift reporting, and long operations not blocking others."""
from __future__ import annotations

import asyncio
import subprocess

import libvirt

from agent_fixtures import grant
from vm_helpers import CONTROL, HV_NS, alloc, from_vm, unique_name, vm_full, wait_libvirt_state, wait_vm_ready


async def collect_pushes(client, node: str, namespace: str, changes: set[str], timeout: float = 20) -> dict:
    """The first push of each wanted change on node (others are skipped)."""
    return await client.pushes(node, changes, namespace=namespace, timeout=timeout)


async def test_hypervisor_pushes_alloc_clone_and_free(agent, new_user, admin, stack):
    watcher = await new_user("watcher")
    node = f"/archipel/{agent.jid}/events"
    await grant(admin, agent.full_jid, watcher.jid, "presence")  # who sees the hypervisor reads its pushes
    await watcher.subscribe_events(stack.pubsub_domain, agent.jid)
    jid = await alloc(admin, agent.full_jid, unique_name("push"))
    await wait_vm_ready(admin, vm_full(jid, agent.jid))
    reply = await admin.acp(agent.full_jid, HV_NS, "clone", {"jid": jid})
    clone_jid = reply[0].get("jid")
    for j in (jid, clone_jid):
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": j})
    pushes = await collect_pushes(watcher, node, "archipel:push:hypervisor", {"alloc", "clone", "free"})
    assert pushes["alloc"].find("{archipel:push:hypervisor}virtualmachine").get("jid") == jid
    cloned = pushes["clone"].find("{archipel:push:hypervisor}virtualmachine")
    assert cloned.get("jid") == clone_jid and cloned.get("source") == jid


async def test_clone_progress_is_pushed(agent, admin, new_user, stack):
    watcher = await new_user("progress")
    node = f"/archipel/{agent.jid}/events"
    await grant(admin, agent.full_jid, watcher.jid, "presence")  # who sees the hypervisor reads its pushes
    await watcher.subscribe_events(stack.pubsub_domain, agent.jid)
    jid = await alloc(admin, agent.full_jid, unique_name("big"))
    await wait_vm_ready(admin, vm_full(jid, agent.jid))
    # a 32 MiB raw file in the VM folder: several progress steps
    subprocess.run(["dd", "if=/dev/zero", f"of={stack.storage_dir / jid.split('@')[0] / 'data.raw'}", "bs=1M", "count=32",
                    "status=none"], check=True)
    reply = await admin.acp(agent.full_jid, HV_NS, "clone", {"jid": jid})
    pushes = await collect_pushes(watcher, node, "archipel:push:hypervisor", {"cloning", "clone"})
    assert pushes["cloning"].find("{archipel:push:hypervisor}virtualmachine").get("progress") is not None
    for j in (jid, reply[0].get("jid")):
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": j})


async def test_long_operations_do_not_block_other_commands(agent, admin, stack):
    """While a destroy (QEMU teardown) and a clone copy run, other commands keep being answered."""
    slow = await alloc(admin, agent.full_jid, unique_name("slow"))
    quick = await alloc(admin, agent.full_jid, unique_name("quick"))
    slow_full, quick_full = vm_full(slow, agent.jid), vm_full(quick, agent.jid)
    await wait_vm_ready(admin, slow_full)
    await wait_vm_ready(admin, quick_full)
    subprocess.run(["dd", "if=/dev/zero", f"of={stack.storage_dir / quick.split('@')[0] / 'big.raw'}", "bs=1M",
                    "count=256", "status=none"], check=True)
    await admin.acp(slow_full, CONTROL, "create")
    await wait_libvirt_state(stack, slow.split("@")[0], libvirt.VIR_DOMAIN_RUNNING)

    async def answered_during(long_operation) -> int:
        task = asyncio.ensure_future(long_operation)
        answered = 0
        while not task.done():
            await admin.acp(agent.full_jid, HV_NS, "nodeinfo")
            if not task.done():
                answered += 1
        await task
        return answered

    assert await answered_during(admin.acp(slow_full, CONTROL, "destroy")) >= 1
    reply_box = {}

    async def clone_quick():
        reply_box["reply"] = await admin.acp(agent.full_jid, HV_NS, "clone", {"jid": quick}, timeout=120)

    assert await answered_during(clone_quick()) >= 1
    for j in (slow, quick, reply_box["reply"][0].get("jid")):
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": j})


async def test_domain_removed_behind_the_agents_back_is_reported_not_deleted(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("vanish"))
    uuid = jid.split("@")[0]
    full = vm_full(jid, agent.jid)
    await admin.wait_presence(from_vm(jid, "Off"), timeout=30)
    subprocess.run(["virsh", "-q", "-c", stack.libvirt_uri, "undefine", uuid], check=True, capture_output=True)
    await admin.wait_presence(from_vm(jid, "Not defined"), timeout=15)
    reply = await admin.acp(full, CONTROL, "xmldesc")
    assert reply[0].tag == f"{{{CONTROL}}}not-defined"
    roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
    assert any(i.get("managed") == "True" and uuid in i.text for i in roster)  # still an entity
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
