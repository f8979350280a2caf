"""``archipel:vm:oom`` (modules/oom.py) and ``archipel:tags`` (modules/tags.py) against the real stack.

The QEMU process is found here independently of the agent (a /proc scan for
``-uuid <uuid>``; the agent reads libvirt's pid file), and its
``oom_score_adj`` is read from /proc.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import libvirt
import pytest
from slixmpp.exceptions import IqError

from agent_fixtures import admin_client, grant, second_agent
from vm_helpers import CONTROL, alloc, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

OOM = "archipel:vm:oom"
OOM_PUSH = "archipel:push:virtualmachine:oom"
TAGS = "archipel:tags"
TAGS_NODE = "/archipel/tags"
HV_NS = "archipel:hypervisor:control"


def qemu_pids(uuid: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a == b"-uuid" and b == uuid.encode() for a, b in zip(argv, argv[1:])):
            found.append(int(entry))
    return found


def score_adj_of(uuid: str) -> int:
    pids = qemu_pids(uuid)
    assert len(pids) == 1, pids
    return int(Path(f"/proc/{pids[0]}/oom_score_adj").read_text())


async def wait_score_adj(uuid: str, value: int, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        pids = await asyncio.to_thread(qemu_pids, uuid)
        current = int(Path(f"/proc/{pids[0]}/oom_score_adj").read_text()) if len(pids) == 1 else None
        if current == value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"oom_score_adj of {uuid}'s QEMU is {current}, expected {value}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def running_vm(agent, admin, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("oom"))
    full, uuid = vm_full(jid, agent.jid), jid.split("@")[0]
    try:
        await wait_vm_ready(admin, full)
        await admin.acp(full, CONTROL, "create")
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
        yield jid, full, uuid
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


def can_lower_oom_score() -> bool:
    """CAP_SYS_RESOURCE (bit 24) in this environment, which the agent's process shares: without it the
    kernel refuses any oom_score_adj below the process's minimum (0), e.g. in an unprivileged container."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return False


async def test_setadjust_reaches_qemu_pushes_and_survives_a_restart(agent, admin, stack, running_vm):
    jid, full, uuid = running_vm
    await admin.subscribe_events(stack.pubsub_domain, jid)
    first_pid = qemu_pids(uuid)[0]
    before = (await admin.acp(full, OOM, "getadjust"))[0]
    assert before.attrib["adjust"] == "0" and int(before.get("score_adj")) == score_adj_of(uuid) == 0

    await admin.acp(full, OOM, "setadjust", {"adjust": "5"})
    assert score_adj_of(uuid) == 294  # 5 * 1000 / 17, as the kernel converts oom_adj
    push = await admin.next_push(f"/archipel/{jid}/events", "adjusted", namespace=OOM_PUSH)
    assert push.find(f"{{{OOM_PUSH}}}oom").get("adjust") == "5"
    got = (await admin.acp(full, OOM, "getadjust"))[0]
    assert got.get("adjust") == "5" and got.get("score_adj") == "294" and int(got.get("score")) >= 294

    if can_lower_oom_score():  # the web client's "PreventOOM"
        await admin.acp(full, OOM, "setadjust", {"adjust": "-17"})
        assert score_adj_of(uuid) == -1000
        await admin.acp(full, OOM, "setadjust", {"adjust": "5"})
    else:  # refused with the reason, and nothing stored that was not applied
        with pytest.raises(AcpError) as info:
            await admin.acp(full, OOM, "setadjust", {"adjust": "-17"})
        assert info.value.code == -48 and "CAP_SYS_RESOURCE" in info.value.text
        assert score_adj_of(uuid) == 294
        assert (await admin.acp(full, OOM, "getadjust"))[0].get("adjust") == "5"

    # a new QEMU (destroy, start) gets the stored value back
    await admin.acp(full, CONTROL, "destroy")
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF)
    off = (await admin.acp(full, OOM, "getadjust"))[0]
    assert off.get("adjust") == "5" and off.get("score_adj") == "294" and off.get("score") == "0"
    await admin.acp(full, OOM, "setadjust", {"adjust": "10"})  # set while off: applied at the next start
    await admin.acp(full, CONTROL, "create")
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
    await wait_score_adj(uuid, 588)
    assert qemu_pids(uuid)[0] != first_pid


async def test_a_qemu_restarted_while_the_agent_was_away_gets_its_value_back(stack):
    """Applied again to running domains when libvirt connects at the agent's start."""
    handle = second_agent(stack, "hv-oom-restart")
    handle.process.start()
    admin = await admin_client(stack, "oom-restart-test")
    jid = None
    try:
        await handle.wait_ready(admin)
        jid = await alloc(admin, handle.full_jid, unique_name("oomrs"))
        full, uuid = vm_full(jid, handle.jid), jid.split("@")[0]
        await wait_vm_ready(admin, full)
        await admin.acp(full, CONTROL, "create")
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
        await admin.acp(full, OOM, "setadjust", {"adjust": "5"})
        assert score_adj_of(uuid) == 294
        handle.process.stop()

        def restart_domain() -> None:  # behind the agent's back: a new QEMU, at the kernel's default
            conn = libvirt.open(stack.libvirt_uri)
            try:
                dom = conn.lookupByUUIDString(uuid)
                dom.destroy()
                dom.create()
            finally:
                conn.close()

        await asyncio.to_thread(restart_domain)
        assert score_adj_of(uuid) == 0
        handle.process.start()
        await handle.wait_ready(admin)
        await wait_score_adj(uuid, 294)
    finally:
        if jid:
            await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
        await admin.close()
        handle.process.stop()


@pytest.mark.parametrize("attrs, code", [
    ({"adjust": "-18"}, -46), ({"adjust": "16"}, -46), ({"adjust": "lots"}, -46), ({"adjust": "1.5"}, -46),
    ({}, -45),
])
async def test_bad_adjust_values_are_refused(agent, admin, running_vm, attrs, code):
    _jid, full, uuid = running_vm
    with pytest.raises(AcpError) as info:
        await admin.acp(full, OOM, "setadjust", attrs)
    assert info.value.code == code and "'adjust'" in info.value.text
    assert score_adj_of(uuid) == 0


async def test_oom_is_refused_to_a_stranger_and_served_by_chat(agent, admin, new_user, running_vm):
    _jid, full, uuid = running_vm
    stranger = await new_user("oomstranger")
    for action, attrs in (("getadjust", {}), ("setadjust", {"adjust": "-17"})):
        with pytest.raises(AcpError) as info:
            await stranger.acp(full, OOM, action, attrs)
        assert info.value.is_permission_error and info.value.code == -1
    assert score_adj_of(uuid) == 0
    reader = await new_user("oomreader")
    await grant(admin, full, reader.jid, "oom_getadjust", "message")
    assert (await reader.acp(full, OOM, "getadjust"))[0].get("adjust") == "0"
    with pytest.raises(AcpError) as info:  # reading is not changing
        await reader.acp(full, OOM, "setadjust", {"adjust": "3"})
    assert info.value.is_permission_error
    assert "OOM adjust 0" in await reader.chat(full, "oom")
    await admin.chat(full, "set oom 15")
    assert score_adj_of(uuid) == 1000
    # and by ad-hoc command (XEP-0050): the form, then the same dispatch
    plugin, node = admin.xmpp.plugin["xep_0050"], f"{OOM}#setadjust"
    first = await plugin.send_command(full, node, timeout=10)
    assert "adjust" in first["command"]["form"].get_fields()
    submit = admin.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    submit.add_field(var="adjust", value="7")
    done = await plugin.send_command(full, node, action="complete", sessionid=first["command"]["sessionid"],
                                     payload=submit, timeout=10)
    assert done["command"]["status"] == "completed"
    assert score_adj_of(uuid) == 411


async def _tag_event(client, jid: str, timeout: float = 15):
    """The next ``/archipel/tags`` publication about ``jid``: its <tag>."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        msg = await asyncio.wait_for(client.pubsub_events.get(), max(0.01, deadline - asyncio.get_running_loop().time()))
        items = msg["pubsub_event"]["items"]
        if items["node"] == TAGS_NODE and items["item"]["id"] == jid:
            return items["item"]["payload"]


async def _tagged(client, stack, jid: str) -> list:
    items = await client.xmpp.plugin["xep_0060"].get_items(stack.pubsub_domain, TAGS_NODE, timeout=10)
    return [i["payload"].get("tags") for i in items["pubsub"]["items"] if i["id"] == jid]


async def test_tags_are_published_to_subscribers_and_guarded(agent, admin, new_user, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("tags"))
    full = vm_full(jid, agent.jid)
    watcher, stranger = await new_user("tagwatch"), await new_user("tagstranger")
    pubsub = "xep_0060"
    try:
        await wait_vm_ready(admin, full)
        await admin.acp(full, TAGS, "settags", {"tags": "init"})  # the node exists from the first settags
        await grant(admin, agent.full_jid, watcher.jid, "presence")
        await watcher.see(agent.jid)  # the node is readable by those who see the hypervisor
        await watcher.xmpp.plugin[pubsub].subscribe(stack.pubsub_domain, TAGS_NODE, timeout=10)

        await admin.acp(full, TAGS, "settags", {"tags": "web, prod,web"})
        tag = await _tag_event(watcher, jid)
        assert tag.get("jid") == jid and tag.get("tags") == "web,prod"
        assert await _tagged(watcher, stack, jid) == ["web,prod"]

        for who, target in ((stranger, full), (stranger, agent.full_jid)):
            with pytest.raises(AcpError) as info:
                await who.acp(target, TAGS, "settags", {"tags": "pwned"})
            assert info.value.is_permission_error and info.value.code == -1
        with pytest.raises(IqError) as err:
            await stranger.xmpp.plugin[pubsub].get_items(stack.pubsub_domain, TAGS_NODE, timeout=10)
        assert err.value.condition in ("not-authorized", "forbidden"), err.value.condition
        with pytest.raises(IqError):  # nor publish into it
            await stranger.xmpp.plugin[pubsub].publish(stack.pubsub_domain, TAGS_NODE, id=jid,
                                                       payload=tag, timeout=10)

        for bad in ("x" * 65, ",".join(f"t{i}" for i in range(33))):
            with pytest.raises(AcpError) as info:
                await admin.acp(full, TAGS, "settags", {"tags": bad})
            assert info.value.code == -46 and "'tags'" in info.value.text

        await admin.acp(full, TAGS, "settags", {"tags": ""})  # cleared: the item is retracted
        assert await _tagged(watcher, stack, jid) == []
        await admin.acp(full, TAGS, "settags", {"tags": ""})  # clearing twice is no error
    finally:
        await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
