"""Pubsub nodes cannot be squatted, and an entity's events are read only by those who see it.

Regressions of issue 10 item 5: nodes were created ``open``, a ``conflict``
on create was taken as success, and ejabberd let every user create nodes.
"""
from __future__ import annotations

import asyncio
import shutil
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest
from slixmpp.exceptions import IqError

from agent_fixtures import AgentHandle, client_for, grant, write_config
from agent_process import AgentProcess
from vm_helpers import alloc, from_vm, unique_name, vm_full



def node_form(client, access_model: str = "open"):
    form = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value="http://jabber.org/protocol/pubsub#node_config")
    form.add_field(var="pubsub#access_model", value=access_model)
    return form


async def create_node(client, stack, node: str) -> None:
    await client.xmpp.plugin["xep_0060"].create_node(stack.pubsub_domain, node, config=node_form(client),
                                                     timeout=10)


async def test_a_user_cannot_create_archipel_nodes(agent, new_user, stack):
    student = await new_user("squatter")
    for node in (f"/archipel/hv-future-{uuidlib.uuid4().hex[:6]}@{stack.domain}/events",
                 f"/archipel/{uuidlib.uuid4()}@{stack.domain}/events",
                 "/archipel/roles"):
        with pytest.raises(IqError) as err:
            await create_node(student, stack, node)
        # /archipel/roles exists already: the service may answer conflict; never success
        assert err.value.condition in ("forbidden", "conflict"), (node, err.value.condition)
    with pytest.raises(IqError) as err:  # nor publish into the roles node
        await student.xmpp.plugin["xep_0060"].publish(stack.pubsub_domain, "/archipel/roles", id="admin",
                                                      payload=ET.Element("role", {"name": "admin"}), timeout=10)
    assert err.value.condition in ("forbidden", "not-authorized"), err.value.condition


async def test_an_entity_refuses_a_node_someone_else_created(stack):
    """Another agent account (here a UUID-named one, as a VM's) creates a future hypervisor's
    events node first; that hypervisor starts, says who owns it, and does not use it."""
    hv = f"hv-squat-{uuidlib.uuid4().hex[:6]}"
    hv_jid = f"{hv}@{stack.domain}"
    node = f"/archipel/{hv_jid}/events"
    squatter_name, password = str(uuidlib.uuid4()), uuidlib.uuid4().hex
    squatter_jid = stack.register_user(squatter_name, password)
    squatter = await client_for(stack, squatter_jid, password, "squat").connect()
    lib_dir = stack.state_dir / "agent-squat"
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir(parents=True)
    conf = write_config(stack, lib_dir, {"HYPERVISOR": {"hypervisor_xmpp_jid": hv_jid, "hypervisor_name": hv}})
    process = AgentProcess(conf, lib_dir / "agent.out")
    handle = AgentHandle(stack, process, hv_jid, lib_dir)
    handle.full_jid = f"{hv_jid}/{hv}"
    user = stack.admin_user
    admin = await client_for(stack, user["jid"], user["password"], "squat-test").connect()
    try:
        await create_node(squatter, stack, node)
        process.start()
        await handle.wait_ready(admin)
        assert await asyncio.to_thread(
            process.wait_log, f"pubsub node {node} on {stack.pubsub_domain} is owned by {squatter_jid}, "
                              f"not by {hv_jid}: refusing to use it", 30), process.log_tail()
        # nothing of the hypervisor's reaches the squatter's node
        await grant(admin, handle.full_jid, squatter_jid, "message")  # would push "permissions"
        items = await squatter.xmpp.plugin["xep_0060"].get_items(stack.pubsub_domain, node, timeout=10)
        assert not list(items["pubsub"]["items"])
    finally:
        process.stop()
        await admin.close()
        try:
            await squatter.xmpp.plugin["xep_0060"].delete_node(stack.pubsub_domain, node, timeout=10)
        finally:
            await squatter.close()
            stack.ejabberd_api("unregister", user=squatter_name, host=stack.domain)


async def test_only_those_who_see_a_vm_read_its_events(agent, admin, new_user, stack):
    owner, stranger = await new_user("evowner"), await new_user("evstranger")
    await grant(admin, agent.full_jid, owner.jid, "alloc")
    jid = await alloc(owner, agent.full_jid, unique_name("ev"))
    await owner.wait_presence(from_vm(jid, "Off"), timeout=30)
    node, full = f"/archipel/{jid}/events", vm_full(jid, agent.jid)
    pubsub = "xep_0060"
    try:
        with pytest.raises(IqError) as err:
            await stranger.xmpp.plugin[pubsub].subscribe(stack.pubsub_domain, node, timeout=10)
        assert err.value.condition == "not-authorized", err.value.condition
        with pytest.raises(IqError) as err:
            await stranger.xmpp.plugin[pubsub].get_items(stack.pubsub_domain, node, timeout=10)
        assert err.value.condition == "not-authorized", err.value.condition
        # the owner, who sees the VM's presence, subscribes and gets its pushes
        await owner.xmpp.plugin[pubsub].subscribe(stack.pubsub_domain, node, timeout=10)
        await grant(owner, full, stranger.jid, "message")
        await owner.next_push(node, stranger.jid, namespace="archipel:push:permissions")
    finally:
        await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})


async def test_users_keep_their_own_pep_nodes(agent, new_user):
    """The node-creation rule is for the pubsub service: a user's client still publishes PEP
    (avatars, bookmarks) on its own account."""
    user = await new_user("pep")
    await user.xmpp.plugin["xep_0060"].publish(user.jid, "urn:example:probe", id="current",
                                               payload=ET.Element("{urn:example:probe}x"), timeout=10)


async def test_an_entity_reconfigures_its_own_open_node(stack, new_user):
    """A node the entity owns but that an older agent created ``open`` is made ``presence``."""
    hv = f"hv-reconf-{uuidlib.uuid4().hex[:6]}"
    hv_jid, password = f"{hv}@{stack.domain}", uuidlib.uuid4().hex
    node = f"/archipel/{hv_jid}/events"
    stack.register_user(hv, password)
    old_agent = await client_for(stack, hv_jid, password, "old-agent").connect()
    await create_node(old_agent, stack, node)  # access model open
    await old_agent.close()
    lib_dir = stack.state_dir / "agent-reconf"
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir(parents=True)
    conf = write_config(stack, lib_dir, {"HYPERVISOR": {"hypervisor_xmpp_jid": hv_jid, "hypervisor_name": hv}},
                        password=password)
    process = AgentProcess(conf, lib_dir / "agent.out")
    handle = AgentHandle(stack, process, hv_jid, lib_dir)
    handle.full_jid = f"{hv_jid}/{hv}"
    user = stack.admin_user
    admin = await client_for(stack, user["jid"], user["password"], "reconf-test").connect()
    stranger = await new_user("reconfstranger")
    try:
        process.start()
        await handle.wait_ready(admin)
        await admin.subscribe_events(stack.pubsub_domain, hv_jid)  # the entity uses its node
        with pytest.raises(IqError) as err:
            await stranger.xmpp.plugin["xep_0060"].subscribe(stack.pubsub_domain, node, timeout=10)
        assert err.value.condition == "not-authorized", err.value.condition
        assert f"{node} on {stack.pubsub_domain} is owned" not in process.log_path.read_text()
    finally:
        process.stop()
        await admin.close()


async def test_a_new_vms_events_node_exists_when_it_answers_a_subscription(agent, admin, new_user, stack):
    """Regression (CI of session 3): a client that subscribed to a VM right after its creation
    got ``subscribed`` before the VM had created its events node, and the node subscription
    that followed failed with item-not-found.  Now the presence answer waits for the node."""
    owner = await new_user("evfresh")
    await grant(admin, agent.full_jid, owner.jid, "alloc")
    jids = await asyncio.gather(*(alloc(owner, agent.full_jid, unique_name("fresh")) for _ in range(6)))
    try:
        await asyncio.gather(*(owner.subscribe_events(stack.pubsub_domain, jid, timeout=60) for jid in jids))
        subscriptions = await owner.xmpp.plugin["xep_0060"].get_subscriptions(stack.pubsub_domain, timeout=10)
        nodes = {s["node"] for s in subscriptions["pubsub"]["subscriptions"]}
        assert {f"/archipel/{jid}/events" for jid in jids} <= nodes
    finally:
        for jid in jids:
            await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})
