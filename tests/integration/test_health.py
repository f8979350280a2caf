"""``archipel:hypervisor:health`` info / history / logs against the session's real agent (modules/health.py)."""
from __future__ import annotations

import asyncio
import os

import libvirt
import pytest

from agent_fixtures import grant
from vm_helpers import CONTROL, alloc, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

NS = "archipel:hypervisor:health"


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def meminfo_total_kib() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1])


async def test_info_describes_this_host(agent, admin):
    payload = {local_name(el.tag): el for el in await admin.acp(agent.full_jid, NS, "info")}
    assert {"memory", "cpu", "disk", "networks", "load", "uptime", "uname", "libvirt", "driver"} <= set(payload)
    memory = payload["memory"].attrib
    assert int(memory["total"]) == meminfo_total_kib()  # the agent runs on this host
    assert int(memory["used"]) + int(memory["free"]) == int(memory["total"])
    assert 0.0 <= float(payload["cpu"].get("id")) <= 100.0
    assert len(list(payload["cpu"])) == os.cpu_count()  # one <core> per CPU
    assert payload["uname"].get("krelease") == os.uname().release
    assert int(payload["libvirt"].get("major")) >= 9 and payload["driver"].get("name").startswith("qemu")
    mounts = {p.get("mount") for p in payload["disk"]}
    assert "/" in mounts or mounts  # the local file systems (network ones are never statvfs'ed)
    assert float(payload["load"].get("one")) >= 0 and int(payload["uptime"].get("seconds")) > 0


async def test_history_grows_newest_first_and_is_bounded_by_limit(agent, admin):
    for _ in range(60):  # the test agent samples every second
        stats = await admin.acp(agent.full_jid, NS, "history", {"limit": "3"})
        if len(stats) == 3:
            break
        await asyncio.sleep(0.5)
    assert len(stats) == 3
    dates = [s.get("date") for s in stats]
    assert dates == sorted(dates, reverse=True)
    first = {local_name(c.tag): c for c in stats[0]}
    assert int(first["memory"].get("total")) == meminfo_total_kib()
    assert 0.0 <= float(first["cpu"].get("id")) <= 100.0
    assert len(await admin.acp(agent.full_jid, NS, "history", {"limit": "1"})) == 1


async def test_logs_tail_the_agents_log_at_a_level(agent, admin):
    lines = await admin.acp(agent.full_jid, NS, "logs", {"limit": "500", "level": "INFO"})
    assert lines and all(el.get("level") in ("INFO", "WARNING", "ERROR", "CRITICAL") for el in lines)
    assert any(el.get("level") == "INFO" and (el.text or "").strip() for el in lines)
    errors_only = await admin.acp(agent.full_jid, NS, "logs", {"limit": "5", "level": "ERROR"})
    assert all(el.get("level") in ("ERROR", "CRITICAL") for el in errors_only)


@pytest.mark.parametrize("action, attrs, argument", [
    ("history", {"limit": "0"}, "limit"), ("history", {"limit": "many"}, "limit"),
    ("logs", {"limit": "5000"}, "limit"), ("logs", {"level": "LOUD"}, "level"),
])
async def test_bad_arguments_are_refused(agent, admin, action, attrs, argument):
    with pytest.raises(AcpError) as info:
        await admin.acp(agent.full_jid, NS, action, attrs)
    assert info.value.code == -46 and f"'{argument}'" in info.value.text


async def test_each_action_needs_its_permission(agent, admin, new_user):
    user = await new_user("healthwatch")
    for action in ("info", "history", "logs"):
        with pytest.raises(AcpError) as info:
            await user.acp(agent.full_jid, NS, action)
        assert info.value.code == -1
    await grant(admin, agent.full_jid, user.jid, "health_history")
    assert await user.acp(agent.full_jid, NS, "history", {"limit": "1"}) is not None
    with pytest.raises(AcpError):
        await user.acp(agent.full_jid, NS, "logs")  # the log stays an admin's reading


async def test_vm_stats_from_the_bulk_call(agent, admin, new_user, stack):
    jid = await alloc(admin, agent.full_jid, unique_name("stats"))
    full, uuid = vm_full(jid, agent.jid), jid.split("@")[0]
    try:
        await wait_vm_ready(admin, full)
        await admin.acp(full, CONTROL, "create")
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
        for _ in range(60):  # the next samples (every second) see it running and its CPU time grow
            stats = (await admin.acp(full, "archipel:vm:health", "stats"))[0]
            if int(stats.get("state")) == libvirt.VIR_DOMAIN_RUNNING and int(stats.get("cpu_time")) > 0:
                break
            await asyncio.sleep(0.5)
        assert int(stats.get("state")) == libvirt.VIR_DOMAIN_RUNNING and int(stats.get("cpu_time")) > 0
        assert int(stats.get("memory")) > 0 and int(stats.get("vcpus")) >= 1
        stranger = await new_user("statsstranger")
        with pytest.raises(AcpError) as info:
            await stranger.acp(full, "archipel:vm:health", "stats")
        assert info.value.code == -1
    finally:
        await admin.acp(agent.full_jid, "archipel:hypervisor:control", "free", {"jid": jid})
