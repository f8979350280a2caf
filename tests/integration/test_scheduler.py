"""The action scheduler (``archipel:entity:scheduler``) against the real stack.

A job runs as who scheduled it, through the same dispatch as a request (so it
is audited with transport ``scheduler`` and its permission is checked again
when it fires), and once, even across an agent restart.
"""
from __future__ import annotations

import asyncio
import datetime

import libvirt
import pytest

from agent_fixtures import admin_client, grant, second_agent
from vm_helpers import CONTROL, HV_NS, alloc, libvirt_state, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

NS = "archipel:entity:scheduler"
AUDIT = "archipel:audit"


def at(seconds: float) -> tuple[dict, datetime.datetime]:
    """The six date fields of ``seconds`` from now (local time, as the agent reads them)."""
    t = (datetime.datetime.now() + datetime.timedelta(seconds=seconds)).replace(microsecond=0)
    return {"year": str(t.year), "month": str(t.month), "day": str(t.day), "hour": str(t.hour),
            "minute": str(t.minute), "second": str(t.second)}, t


async def until(when: datetime.datetime) -> None:
    delay = (when - datetime.datetime.now()).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


async def scheduler_runs(admin, hv_full: str, vm_jid: str, action: str) -> list:
    """The audit rows of ``action`` on the VM that the scheduler ran."""
    reply = await admin.acp(hv_full, AUDIT, "get", {"entity": vm_jid, "audit_action": action, "limit": "100"})
    return [e for e in reply if e.get("transport") == "scheduler"]


async def running_vm(client, hv_full: str, hv_jid: str) -> tuple[str, str, str]:
    jid = await alloc(client, hv_full, unique_name("sched"))
    full = vm_full(jid, hv_jid)
    await wait_vm_ready(client, full)
    await client.acp(full, CONTROL, "create")
    return jid, full, jid.split("@")[0]


async def test_a_scheduled_shutdown_fires_as_its_owner(agent, admin, new_user, stack):
    owner = await new_user("schedowner")
    await grant(admin, agent.full_jid, owner.jid, "alloc", "free")
    jid, full, uuid = await running_vm(owner, agent.full_jid, agent.jid)
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
    assert [a.text for a in await owner.acp(full, NS, "actions")] == [
        "create", "destroy", "reboot", "resume", "shutdown", "suspend"]
    fields, when = at(3)
    reply = await owner.acp(full, NS, "schedule", {"job": "shutdown", "param": "1", "comment": "end of class",
                                                   **fields})
    uid = reply[0].get("uid")
    listed = list(await owner.acp(full, NS, "jobs"))
    assert [(j.get("uid"), j.get("action"), j.get("comment"), j.get("periodic")) for j in listed] == [
        (uid, "shutdown", "end of class", "no")]
    assert listed[0].get("date") == f"{when.year}-{when.month}-{when.day} @ {when.hour} : {when.minute} : {when.second}"
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF, timeout=60)
    assert list(await owner.acp(full, NS, "jobs")) == []  # a one-shot job is gone once run
    runs = await scheduler_runs(admin, agent.full_jid, jid, "shutdown")
    assert [(r.get("sender"), r.get("outcome")) for r in runs] == [(owner.jid, "ok")]
    await owner.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_unschedule_removes_the_job(agent, admin, new_user, stack):
    owner = await new_user("schedun")
    await grant(admin, agent.full_jid, owner.jid, "alloc", "free")
    jid, full, uuid = await running_vm(owner, agent.full_jid, agent.jid)
    fields, when = at(4)
    uid = (await owner.acp(full, NS, "schedule", {"job": "destroy", **fields}))[0].get("uid")
    await owner.acp(full, NS, "unschedule", {"uid": uid})
    assert list(await owner.acp(full, NS, "jobs")) == []
    with pytest.raises(AcpError) as err:
        await owner.acp(full, NS, "unschedule", {"uid": uid})
    assert err.value.code == -47
    # a later job that does fire shows the removed one never ran
    fields2, _ = at(5)
    await owner.acp(full, NS, "schedule", {"job": "suspend", **fields2})
    await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_PAUSED, timeout=60)
    assert await scheduler_runs(admin, agent.full_jid, jid, "destroy") == []
    await owner.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_a_stranger_cannot_schedule_and_nobody_plans_what_they_may_not_do(agent, admin, new_user):
    owner = await new_user("schedowner")
    stranger = await new_user("schedstranger")
    await grant(admin, agent.full_jid, owner.jid, "alloc", "free")
    jid = await alloc(owner, agent.full_jid, unique_name("sched"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(owner, full)
    fields, _ = at(3600)
    for action in ("schedule", "jobs", "actions"):
        with pytest.raises(AcpError) as err:
            await stranger.acp(full, NS, action, {"job": "destroy", **fields})
        assert err.value.code == -1 and "archipel:error:permission" in err.value.namespaces, action
    # allowed to schedule, not to destroy: refused now, not only when it fires
    await grant(admin, full, stranger.jid, "scheduler_schedule")
    with pytest.raises(AcpError) as err:
        await stranger.acp(full, NS, "schedule", {"job": "destroy", **fields})
    assert err.value.code == -1 and "destroy" in err.value.text
    assert list(await owner.acp(full, NS, "jobs")) == []
    await owner.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_the_right_is_checked_again_when_the_job_fires(agent, admin, new_user, stack):
    """Scheduled by a user who held destroy, revoked before the date: the job is refused, the VM runs on."""
    user = await new_user("schedrevoked")
    jid, full, uuid = await running_vm(admin, agent.full_jid, agent.jid)
    await grant(admin, full, user.jid, "scheduler_schedule", "destroy")
    fields, when = at(4)
    await user.acp(full, NS, "schedule", {"job": "destroy", **fields})
    await grant(admin, full, user.jid, "destroy", value=False)
    for _ in range(300):
        runs = await scheduler_runs(admin, agent.full_jid, jid, "destroy")
        if runs:
            break
        await asyncio.sleep(0.2)
    assert [(r.get("sender"), r.get("outcome")) for r in runs] == [(user.jid, "denied")]
    assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_RUNNING
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_bad_requests_get_their_error_reply(agent, admin):
    jid = await alloc(admin, agent.full_jid, unique_name("sched"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    good, _ = at(3600)
    past, _ = at(-60)
    cases = [
        ({"job": "destroy", **past}, -46, "in the past"),
        ({"job": "destroy", **good, "month": "13"}, -46, "'month'"),
        ({"job": "destroy", **good, "day": "31", "month": "2"}, -46, "'day'"),
        ({"job": "destroy", **good, "minute": "*/0"}, -46, "'minute'"),
        ({"job": "destroy", **good, "hour": "1;2"}, -46, "'hour'"),
        ({"job": "destroy", **{k: v for k, v in good.items() if k != "minute"}}, -45, "'minute'"),
        ({"job": "free", **good}, -46, "'job'"),             # a hypervisor action, not a VM's
        ({"job": "destroy", "param": "x", **good}, -46, "'param'"),
        ({"job": "shutdown", "param": "-3", **good}, -46, "'param'"),
        ({"job": "destroy", "comment": "x" * 1100, **good}, -46, "'comment'"),
    ]
    for attrs, code, text in cases:
        with pytest.raises(AcpError) as err:
            await admin.acp(full, NS, "schedule", attrs)
        assert err.value.code == code and text in err.value.text, (attrs, err.value)
    with pytest.raises(AcpError) as err:
        await admin.acp(agent.full_jid, NS, "schedule", {"job": "free", **good})  # needs the VM to free
    assert err.value.code == -46 and "'param'" in err.value.text
    assert list(await admin.acp(full, NS, "jobs")) == []
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})


async def test_a_job_due_while_the_agent_is_down_fires_once_after_restart(stack):
    handle = second_agent(stack, "hv-sched")
    handle.process.start()
    admin = await admin_client(stack, "sched-restart")
    try:
        await handle.wait_ready(admin)
        jid, full, uuid = await running_vm(admin, handle.full_jid, handle.jid)
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_RUNNING)
        fields, when = at(8)
        await admin.acp(full, NS, "schedule", {"job": "destroy", **fields})
        handle.process.stop()
        await until(when + datetime.timedelta(seconds=1))
        # it came due while the agent was down (had it fired before the stop, the VM would be off)
        assert await asyncio.to_thread(libvirt_state, stack, uuid) == libvirt.VIR_DOMAIN_RUNNING
        handle.process.start()
        await handle.wait_ready(admin)
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_SHUTOFF, timeout=60)
        await wait_vm_ready(admin, full)
        assert list(await admin.acp(full, NS, "jobs")) == []
        # start it again and restart the agent: the job does not come back
        await admin.acp(full, CONTROL, "create")
        handle.process.stop()
        handle.process.start()
        await handle.wait_ready(admin)
        await wait_vm_ready(admin, full)
        marker, _ = at(3)  # jobs run by date: a later marker job firing means the loop has had its pass
        await admin.acp(full, NS, "schedule", {"job": "suspend", **marker})
        await wait_libvirt_state(stack, uuid, libvirt.VIR_DOMAIN_PAUSED, timeout=60)
        runs = await scheduler_runs(admin, handle.full_jid, jid, "destroy")
        assert [(r.get("sender"), r.get("outcome")) for r in runs] == [(stack.admin_user["jid"], "ok")]
        await admin.acp(handle.full_jid, HV_NS, "free", {"jid": jid})
    finally:
        handle.process.stop()
        await admin.close()
