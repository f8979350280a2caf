"""The agent comes back by itself after ejabberd or libvirtd restarts."""
from __future__ import annotations

import asyncio

import pytest

from agent_fixtures import grant
from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError

HV_NS = "archipel:hypervisor:control"


def from_hypervisor(agent, status_prefix):
    def predicate(presence):
        return (presence["from"].bare == agent.jid and presence["type"] != "unavailable"
                and (presence["status"] or "").startswith(status_prefix))
    return predicate


async def test_libvirtd_restart_is_survived(agent, admin, stack):
    admin.xmpp.send_presence(pto=agent.jid, ptype="subscribe")
    await admin.wait_presence(from_hypervisor(agent, "Online ("))
    admin.presences.clear()
    await asyncio.to_thread(stack.stop_libvirtd)
    await admin.wait_presence(from_hypervisor(agent, "Libvirt connection lost"), timeout=30)
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, "capabilities")
    assert err.value.code == -48 and "libvirt" in err.value.text.lower()
    await asyncio.to_thread(stack.start_libvirtd)
    await admin.wait_presence(from_hypervisor(agent, "Online ("), timeout=60)
    query = await admin.acp(agent.full_jid, HV_NS, "capabilities")
    assert len(query) == 1


async def test_ejabberd_restart_is_survived(agent, admin, new_user, stack):
    """... and a VM's pushes still reach its subscribers on the same node (pubsub.py: a
    reconnection finds the node it checked already, and keeps publishing there)."""
    jid = await alloc(admin, agent.full_jid, unique_name("resil"))
    watcher = await new_user("resilwatch")
    try:
        await admin.subscribe_events(stack.pubsub_domain, jid)
        await asyncio.to_thread(stack.restart_ejabberd)
        await admin.reconnect()
        await agent.wait_ready(admin, timeout=90)
        query = await admin.acp(agent.full_jid, HV_NS, "nodeinfo")
        assert query[0].get("nrCPU")
        assert agent.process.alive
        await wait_vm_ready(admin, vm_full(jid, agent.jid), timeout=90)
        await grant(admin, vm_full(jid, agent.jid), watcher.jid, "message")
        await admin.next_push(f"/archipel/{jid}/events", watcher.jid, namespace="archipel:push:permissions")
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
