"""VM entities end to end: alloc → define → create → states → free, checked in libvirt too."""
from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import stat
import xml.etree.ElementTree as ET

import libvirt
import pytest

from agent_fixtures import grant
from vm_helpers import (CONTROL, DEFINITION, HV_NS, alloc, from_vm, libvirt_state, unique_name, vm_full,
                        wait_libvirt_state, wait_vm_ready)
from xmpp_client import AcpError


async def owner_with_alloc(agent, admin, new_user):
    owner = await new_user("owner")
    await grant(admin, agent.full_jid, owner.jid, "alloc")
    return owner


async def subscribe_events(client, stack, jid):
    await client.xmpp.plugin["xep_0060"].subscribe(stack.pubsub_domain, f"/archipel/{jid}/events", timeout=10)


async def next_push(client, node: str, change: str, timeout: float = 10):
    return await client.next_push(node, change, timeout=timeout)


async def wait_gone(path, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while path.exists():
        assert asyncio.get_running_loop().time() < deadline, f"{path} still exists"
        await asyncio.sleep(0.1)


async def test_full_lifecycle(agent, admin, new_user, stack):
    owner = await owner_with_alloc(agent, admin, new_user)
    name = unique_name()
    jid = await alloc(owner, agent.full_jid, name, orgname="IUT", orgunit="R&T")
    uuid = jid.split("@")[0]
    full = vm_full(jid, agent.jid)
    # the VM asks its owner for a subscription; the owner's client accepts: presence arrives
    await owner.wait_presence(from_vm(jid, "Off"), timeout=30)
    assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_SHUTOFF
    vcard = await owner.xmpp.plugin["xep_0054"].get_vcard(jid, timeout=10)
    assert vcard["vcard_temp"]["ROLE"] == "virtualmachine" and vcard["vcard_temp"]["FN"] == name
    await subscribe_events(owner, stack, jid)
    node = f"/archipel/{jid}/events"

    # define: the current definition with more memory
    desc = (await owner.acp(full, CONTROL, "xmldesc"))[0]
    assert desc.find(f"{{{CONTROL}}}description") is None
    desc.find(f"{{{CONTROL}}}memory").text = "196608"
    desc.find(f"{{{CONTROL}}}memory").set("unit", "KiB")
    cur = desc.find(f"{{{CONTROL}}}currentMemory")
    if cur is not None:
        desc.remove(cur)
    for el in desc.iter():
        el.tag = el.tag.split("}", 1)[-1]
    await owner.acp(full, DEFINITION, "define", children=[desc])
    await next_push(owner, node, "defined")
    conn = libvirt.open(stack.libvirt_uri)
    try:
        assert conn.lookupByUUIDString(uuid).maxMemory() == 196608
    finally:
        conn.close()

    created = await owner.acp(full, CONTROL, "create")
    assert int(created[0].get("id")) > 0
    await owner.wait_presence(from_vm(jid, "Running"))
    await next_push(owner, node, "created")
    assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_RUNNING

    info = (await owner.acp(full, CONTROL, "info"))[0]
    assert info.get("state") == "1" and info.get("maxMem") == "196608"
    assert info.get("hypervisor") == agent.full_jid and info.get("autostart") == "0"

    shot = (await owner.acp(full, CONTROL, "screenshot", {"size": "thumbnail"}))[0]
    assert base64.b64decode(shot.text)[:8] == b"\x89PNG\r\n\x1a\n" and int(shot.get("width")) <= 200

    await owner.acp(full, CONTROL, "suspend")
    await owner.wait_presence(from_vm(jid, "Paused"))
    await next_push(owner, node, "suspended")
    assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_PAUSED
    await owner.acp(full, CONTROL, "resume")
    await owner.wait_presence(from_vm(jid, "Running"))

    # no OS answers ACPI here: shutdown with a timeout ends in a destroy
    await owner.acp(full, CONTROL, "shutdown", {"timeout": "1"})
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF, timeout=30)
    await owner.wait_presence(from_vm(jid, "Off"))
    await next_push(owner, node, "shutoff")

    await owner.acp(full, CONTROL, "create")
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
    await owner.acp(full, CONTROL, "destroy")
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF)

    await owner.acp(full, CONTROL, "autostart", {"value": "1"})
    assert (await owner.acp(full, CONTROL, "info"))[0].get("autostart") == "1"

    # free (the owner may: it holds `all` on the VM): domain, account, rows gone; folder in the trash
    folder = stack.storage_dir / uuid
    assert folder.is_dir()
    await owner.acp(full, CONTROL, "free")
    await wait_libvirt_state(stack, uuid, None)
    await wait_gone(folder)
    assert any(p.name.startswith(uuid) for p in (stack.storage_dir / ".trash").iterdir())
    assert stack.ejabberd_api("check_account", user=uuid, host=stack.domain) != 0
    roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
    assert all(uuid not in (item.text or "") for item in roster)


async def test_password_only_in_the_agent_database(agent, admin, new_user, stack):
    owner = await owner_with_alloc(agent, admin, new_user)
    jid = await alloc(owner, agent.full_jid, unique_name())
    uuid = jid.split("@")[0]
    await owner.wait_presence(from_vm(jid, "Off"), timeout=30)
    db = agent.lib_dir / "hypervisor.sqlite3"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    with sqlite3.connect(db) as conn:
        (password,) = conn.execute("SELECT password FROM vms WHERE uuid = ?", (uuid,)).fetchone()
    assert len(password) >= 32 and password.isalnum()
    libvirt_conn = libvirt.open(stack.libvirt_uri)
    try:
        xml = libvirt_conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        libvirt_conn.close()
    assert password not in xml
    assert password not in agent.process.log_path.read_text(errors="replace")
    await owner.acp(vm_full(jid, agent.jid), CONTROL, "free")


async def test_alloc_name_must_be_unique_and_valid(agent, admin):
    name = unique_name()
    jid = await alloc(admin, agent.full_jid, name)
    with pytest.raises(AcpError) as err:
        await alloc(admin, agent.full_jid, name)
    assert err.value.code == -49 and name in err.value.text
    with pytest.raises(AcpError) as err:
        await alloc(admin, agent.full_jid, "bad name/../x")
    assert err.value.code == -46 and "name" in err.value.text
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_alloc_with_hostile_definition_is_refused(agent, admin):
    hostile = ET.fromstring(
        "<domain type='kvm'><name>x</name><memory>65536</memory><os><type>hvm</type></os>"
        "<devices><disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vda'/></disk></devices></domain>")
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, HV_NS, "alloc", {"name": unique_name()}, children=[hostile])
    assert err.value.code == -50 and "definition refused" in err.value.text


async def test_vm_rostervm_and_hypervisor_presence_count(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name())
    await admin.wait_presence(from_vm(jid, "Off"), timeout=30)
    roster = await admin.acp(agent.full_jid, HV_NS, "rostervm")
    managed = [i for i in roster if i.get("managed") == "True"]
    assert any(i.text == vm_full(jid, agent.jid) for i in managed)
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_vm_free_from_the_vm_itself(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name())
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    await admin.acp(full, CONTROL, "free")
    await wait_libvirt_state(stack, jid.split("@")[0], None)


async def test_state_errors_are_clear(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name())
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    with pytest.raises(AcpError) as err:
        await admin.acp(full, CONTROL, "resume")
    assert err.value.code == -49 and "shut off" in err.value.text
    with pytest.raises(AcpError) as err:
        await admin.acp(full, CONTROL, "memory", {"value": "lots"})
    assert err.value.code == -46
    with pytest.raises(AcpError) as err:
        await admin.acp(full, CONTROL, "setvcpus", {"value": "64"})
    assert err.value.code == -46 and "maximum" in err.value.text
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


VM_ACTIONS = [(CONTROL, a) for a in ("info", "create", "shutdown", "destroy", "reboot", "suspend", "resume", "xmldesc",
                                      "autostart", "memory", "setvcpus", "networkinfo", "free", "screenshot")] + \
             [(DEFINITION, a) for a in ("define", "undefine", "capabilities")]


async def test_stranger_refused_on_every_vm_action(agent, admin, new_user):
    jid = await alloc(admin, agent.full_jid, unique_name())
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    stranger = await new_user("stranger")
    for namespace, action in VM_ACTIONS:
        with pytest.raises(AcpError) as err:
            await stranger.acp(full, namespace, action, {"value": "1"})
        assert err.value.is_permission_error, (namespace, action)
    for action, attrs in (("alloc", {}), ("free", {"jid": jid}), ("clone", {"jid": jid}),
                          ("setorginfo", {"target": jid.split("@")[0]})):
        with pytest.raises(AcpError) as err:
            await stranger.acp(agent.full_jid, HV_NS, action, attrs)
        assert err.value.is_permission_error, action
    text = await stranger.chat(full, "start")
    assert "not allowed to talk" in text
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_chat_commands_on_a_vm(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name())
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    assert "Shut off" in await admin.chat(full, "info")
    assert "Started" in await admin.chat(full, "start")
    assert "Running" in await admin.chat(full, "how are you")
    assert "Done" in await admin.chat(full, "destroy")
    help_text = await admin.chat(full, "help")
    assert "start" in help_text and "destroy" in help_text
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_alloc_and_free_by_chat(agent, admin, stack):
    name = unique_name("chat")
    text = await admin.chat(agent.full_jid, f"alloc {name}")
    assert text.startswith("Allocated ") and "subscription" in text
    jid = text.split()[1].rstrip(";")
    await admin.wait_presence(from_vm(jid, "Off"), timeout=30)
    assert name in await admin.chat(agent.full_jid, "vms")
    assert f"Freed {jid}" in await admin.chat(agent.full_jid, f"free {name}")
    assert await asyncio.to_thread(libvirt_state, stack, jid.split("@")[0]) is None
    assert "Error:" in await admin.chat(agent.full_jid, f"free {name}")


def gone_from(jid: str, status: str):
    def predicate(presence):
        return presence["from"].bare == jid and presence["type"] == "unavailable" and presence["status"] == status
    return predicate


async def test_freed_and_unmanaged_vms_go_offline_in_rosters(agent, admin, new_user, stack):
    """A subscribed client sees the VM go unavailable before its account goes (ejabberd's removal says nothing)."""
    owner = await owner_with_alloc(agent, admin, new_user)
    jid = await alloc(owner, agent.full_jid, unique_name("bye"))
    await owner.wait_presence(from_vm(jid, "Off"), timeout=30)  # subscribed: the owner sees its presence
    await grant(admin, agent.full_jid, owner.jid, "free")
    await owner.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
    await owner.wait_presence(gone_from(jid, "Freed"), timeout=15)
    # unmanage: the domain stays, the entity goes offline for its subscribers
    jid = await alloc(admin, agent.full_jid, unique_name("release"))
    uuid = jid.split("@")[0]
    await admin.wait_presence(from_vm(jid, "Off"), timeout=30)
    await admin.acp(agent.full_jid, HV_NS, "unmanage", children=[ET.Element("item", {"jid": jid})])
    await admin.wait_presence(gone_from(jid, "Unmanaged"), timeout=15)
    assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_SHUTOFF
    await admin.acp(agent.full_jid, HV_NS, "manage", children=[ET.Element("item", {"jid": jid})])
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
