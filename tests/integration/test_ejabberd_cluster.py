"""The agent on an ejabberd cluster (issue 16 item 1; rig/cluster.py, docs/CLUSTER.md).

A second ejabberd node joins the test stack's ejabberd (one domain, Mnesia
shared).  Agents and users connected to different nodes see each other's
entities, presences, pushes and pubsub nodes, and command each other's
entities; a node leaving the cluster leaves the first node serving alone.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest

from agent_fixtures import grant, second_agent
from rig.cluster import Cluster
from vm_helpers import CONTROL, HV_NS, alloc, from_vm, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError, Client

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(stack):
    cl = Cluster(stack)
    cl.add_node(2)
    yield cl
    cl.stop()
    assert cl.members() == {stack.node}


def on_node(stack, node, jid: str, password: str, resource: str = "tests") -> Client:
    """A client connected to ``node`` of the cluster (its own loopback address)."""
    return Client(jid, password, ca_file=stack.ca_file, host=node.listen_ip, port=node.c2s_port, resource=resource)


async def user_on(stack, node, prefix: str) -> Client:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    jid = stack.register_user(name, password)          # through node 1's API: Mnesia is shared
    return await on_node(stack, node, jid, password).connect()


def test_the_nodes_form_one_cluster(cluster, stack):
    node2 = cluster.nodes[2]
    assert cluster.members() == {stack.node, node2.node}
    assert cluster.members(via=node2) == {stack.node, node2.node}


async def test_a_user_on_the_second_node_drives_a_vm_of_an_agent_on_the_first(cluster, stack, agent, admin):
    owner = await user_on(stack, cluster.nodes[2], "cl-owner")
    try:
        await grant(admin, agent.full_jid, owner.jid, "alloc")      # admin and agent: node 1
        jid = await alloc(owner, agent.full_jid, unique_name("cl"))
        full = vm_full(jid, agent.jid)
        # the VM's subscription request, presence and pushes cross the cluster
        await owner.wait_presence(from_vm(jid, "Off"), timeout=30)
        # it sees the VM already (the presence above): subscribe to the node directly; a repeated
        # presence subscription would get no answer from ejabberd
        await owner.xmpp.plugin["xep_0060"].subscribe(stack.pubsub_domain, f"/archipel/{jid}/events", timeout=10)
        await wait_vm_ready(owner, full)
        await owner.acp(full, CONTROL, "create")
        await owner.wait_presence(from_vm(jid, "Running"), timeout=30)
        await owner.next_push(f"/archipel/{jid}/events", "created", timeout=20)
        vcard = await owner.xmpp.plugin["xep_0054"].get_vcard(jid, timeout=10)
        assert vcard["vcard_temp"]["ROLE"] == "virtualmachine"
        await owner.acp(full, CONTROL, "destroy")
        await owner.wait_presence(from_vm(jid, "Off"), timeout=30)
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
    finally:
        await owner.close()


async def test_an_agent_on_the_second_node_serves_users_of_the_first(cluster, stack, admin, new_user):
    node2 = cluster.nodes[2]
    hv = second_agent(stack, f"hv-cl-{uuid.uuid4().hex[:6]}", {"XMPP": {"xmpp_host": node2.listen_ip}})
    hv.process.start()
    try:
        await hv.wait_ready(admin, timeout=90)                          # admin on node 1
        await admin.see(hv.jid)
        stranger = await new_user("cl-stranger")                        # node 1 too
        with pytest.raises(AcpError) as refused:                        # rights hold across nodes
            await stranger.acp(hv.full_jid, HV_NS, "alloc", {"name": unique_name("cl")})
        assert refused.value.is_permission_error, refused.value
        await grant(admin, hv.full_jid, stranger.jid, "alloc")
        jid = await alloc(stranger, hv.full_jid, unique_name("cl"))
        await stranger.wait_presence(from_vm(jid, "Off"), timeout=30)  # a VM account made via node 2
        await admin.acp(hv.full_jid, HV_NS, "free", {"jid": jid})
    finally:
        hv.process.stop()


async def test_a_node_stopping_leaves_the_other_serving(cluster, stack, agent, admin):
    """Node 2 down: its clients are cut, node 1's agent and users go on; node 2 comes back
    with its spool and rejoins by itself."""
    user = await user_on(stack, cluster.nodes[2], "cl-cut")
    await user.close()
    cluster.stop_node(2)
    try:
        assert cluster.members() == {stack.node}
        await agent.wait_ready(admin, timeout=30)
    finally:
        await asyncio.to_thread(cluster.restart_node, 2)
    assert cluster.members() == {stack.node, cluster.nodes[2].node}
    again = await user_on(stack, cluster.nodes[2], "cl-back")
    try:
        await again.ping(agent.full_jid)              # routed across the cluster again
    finally:
        await again.close()
