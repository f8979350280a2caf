"""Quotas against the real stack: LDAP students, group and user quotas, usage, the admin CLI."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import pytest_asyncio

from agent_fixtures import PERMS_NS, client_for
from vm_helpers import CONTROL, DEFINITION, HV_NS, alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError

QUOTA_NS = "archipel:quota"
REPO = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="module")
async def student(stack, agent):
    user = stack.user("student1")
    client = await client_for(stack, user["jid"], user["password"], "quota-tests").connect()
    yield client
    await client.close()


def item(ptype: str, target: str, name: str, value: bool = True) -> ET.Element:
    return ET.Element("permission", {"permission_type": ptype, "permission_target": target,
                                     "permission_name": name, "permission_value": "true" if value else "false"})


async def usage_of(client, agent, target: str | None = None) -> dict:
    query = await client.acp(agent.full_jid, QUOTA_NS, "usage", {"target": target} if target else {})
    usage = query[0]
    return {res.get("name"): res.attrib for res in usage if res.tag.endswith("resource")}


async def used(admin, agent, jid: str) -> dict:
    return {name: int(attrs["used"]) for name, attrs in (await usage_of(admin, agent, jid)).items()}


async def set_quota(admin, agent, target_type: str, target: str, **limits) -> ET.Element:
    return (await admin.acp(agent.full_jid, QUOTA_NS, "set",
                            {"target_type": target_type, "target": target, **{k: str(v) for k, v in limits.items()}}))[0]


CLEAR_ALL = {"vms": "", "vcpus": "", "memory": "", "disk": ""}


class StudentsCanAlloc:
    """A role with ``alloc`` granted to the LDAP group students on the hypervisor; undone on exit."""

    def __init__(self, admin, agent):
        self.admin, self.agent, self.role = admin, agent, f"qstudent-{uuid.uuid4().hex[:6]}"
        self.vms: list[str] = []

    async def __aenter__(self):
        await self.admin.acp(self.agent.full_jid, PERMS_NS, "setrole", {"name": self.role},
                             children=[ET.Element("permission", {"name": "alloc"})])
        await self.admin.acp(self.agent.full_jid, PERMS_NS, "set", children=[item("role", "students", self.role)])
        return self

    async def __aexit__(self, *exc):
        for jid in self.vms:
            try:
                await self.admin.acp(self.agent.full_jid, HV_NS, "free", {"jid": jid})
            except AcpError:
                pass
        await self.admin.acp(self.agent.full_jid, PERMS_NS, "delrole", {"name": self.role})
        await set_quota(self.admin, self.agent, "group", "students", **CLEAR_ALL)
        await set_quota(self.admin, self.agent, "user", "student1@archipel.test", **CLEAR_ALL)

    async def alloc(self, client) -> str:
        jid = await alloc(client, self.agent.full_jid, unique_name("q"))
        self.vms.append(jid)
        return jid


async def test_student_allocs_up_to_the_group_quota(agent, admin, student, new_user):
    base = await used(admin, agent, student.jid)
    async with StudentsCanAlloc(admin, agent) as lab:
        quota = await set_quota(admin, agent, "group", "Students", vms=base["vms"] + 2)
        assert quota.get("target") == "students" and quota.get("vms") == str(base["vms"] + 2)
        await lab.alloc(student)
        await lab.alloc(student)
        with pytest.raises(AcpError) as err:
            await lab.alloc(student)
        n = base["vms"]
        assert err.value.code == -51 and err.value.condition == "policy-violation"
        assert err.value.text.startswith(f"quota exceeded: vms {n + 3} requested, limit {n + 2} "
                                         f"for group students (already used {n + 2})"), err.value.text
        # a student reads their own usage without any permission
        mine = await usage_of(student, agent)
        assert mine["vms"]["used"] == str(n + 2) and mine["vms"]["limit"] == str(n + 2)
        assert (mine["vms"]["target_type"], mine["vms"]["target"]) == ("group", "students")
        assert "limit" not in mine["memory"]  # unlimited
        # but not someone else's
        with pytest.raises(AcpError) as err:
            await student.acp(agent.full_jid, QUOTA_NS, "usage", {"target": admin.jid})
        assert err.value.is_permission_error
        # the admin's report: per user, with the VMs, and every owner at once
        report = (await admin.acp(agent.full_jid, QUOTA_NS, "usage", {"target": student.jid}))[0]
        assert report.get("user") == student.jid and report.get("admin") == "no"
        vms = [el for el in report if el.tag.endswith("}vm")]
        assert {el.get("jid") for el in vms} >= set(lab.vms)
        assert all(int(el.get("memory")) == 131072 and el.get("vcpus") == "1" for el in vms if el.get("jid") in lab.vms)
        everyone = await admin.acp(agent.full_jid, QUOTA_NS, "usage", {"all": "1"})
        assert student.jid in {el.get("user") for el in everyone}
        # admins are not limited by anything
        assert (await usage_of(admin, agent))["vms"].get("limit") is None
        # raising the quota lets the student go on; the quota is read at once
        await set_quota(admin, agent, "group", "students", vms=n + 3)
        await lab.alloc(student)


async def test_memory_vcpus_and_a_stricter_user_quota(agent, admin, student):
    base = await used(admin, agent, student.jid)
    n, mem, cpus = base["vms"], base["memory"], base["vcpus"]
    async with StudentsCanAlloc(admin, agent) as lab:
        await set_quota(admin, agent, "group", "students", vms=n + 3, memory=mem + 262144, vcpus=cpus + 2)
        await set_quota(admin, agent, "user", student.jid, vms=n + 1)
        a = await lab.alloc(student)
        with pytest.raises(AcpError) as err:  # the user's own quota is stricter than the group's: it wins
            await lab.alloc(student)
        assert f"vms {n + 2} requested, limit {n + 1} for user {student.jid}" in err.value.text
        await set_quota(admin, agent, "user", student.jid, vms="", memory=mem + 200000)
        full_a = vm_full(a, agent.jid)
        await wait_vm_ready(student, full_a)
        await student.acp(full_a, CONTROL, "memory", {"value": "65536"})  # shrinking is always fine
        b = await lab.alloc(student)  # 65536 + 131072 KiB fit in 200000
        with pytest.raises(AcpError) as err:
            await student.acp(full_a, CONTROL, "memory", {"value": "131072"})
        assert err.value.code == -51
        assert (f"quota exceeded: memory {mem + 262144} KiB requested, limit {mem + 200000} KiB for user "
                f"{student.jid} (already used {mem + 196608} KiB)") in err.value.text
        await student.acp(full_a, CONTROL, "memory", {"value": "68000"})  # within the quota

        # a definition is counted at its maximum memory
        desc = (await student.acp(full_a, CONTROL, "xmldesc"))[0]
        for el in desc.iter():
            el.tag = el.tag.split("}", 1)[-1]
        desc.find("memory").text, desc.find("memory").attrib = "262144", {"unit": "KiB"}
        cur = desc.find("currentMemory")
        if cur is not None:
            desc.remove(cur)
        with pytest.raises(AcpError) as err:
            await student.acp(full_a, DEFINITION, "define", children=[desc])
        assert err.value.code == -51 and "memory" in err.value.text and "for user" in err.value.text
        # up to 2 vCPUs (the definition policy caps them at the rig host's CPUs), 1 plugged: counts as 1
        desc.find("memory").text = "65536"
        vcpu = desc.find("vcpu")
        vcpu.text = "2"
        vcpu.set("current", "1")
        await student.acp(full_a, DEFINITION, "define", children=[desc])
        with pytest.raises(AcpError) as err:
            await student.acp(full_a, CONTROL, "setvcpus", {"value": "2"})
        assert err.value.code == -51
        assert (f"quota exceeded: vcpus {cpus + 3} requested, limit {cpus + 2} for group students "
                f"(already used {cpus + 2})") in err.value.text
        await student.acp(full_a, CONTROL, "setvcpus", {"value": "1"})
        # the admin changing the student's VM is not limited
        await admin.acp(full_a, CONTROL, "setvcpus", {"value": "2"})
        assert b in lab.vms


# ------------------------------------------------------------- archipel-admin
@pytest.fixture(scope="module")
def summary(stack, agent, tmp_path_factory):
    path = tmp_path_factory.mktemp("quota-cli") / "summary.json"
    return stack.write_summary(path, hypervisor_full_jid=agent.full_jid)


def admin_cli(summary, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archipelagent.admin.cli", "--summary", str(summary), *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=dict(os.environ))


async def cli(summary, *argv, expect: int = 0) -> subprocess.CompletedProcess:
    done = await asyncio.to_thread(admin_cli, summary, *argv)
    assert done.returncode == expect, (argv, done.stdout, done.stderr)
    return done


async def test_cli_roles_grants_quotas_and_usage(summary, agent, admin, student, new_user):
    role = f"clirole-{uuid.uuid4().hex[:6]}"
    await cli(summary, "roles", "set", role, "capabilities", "nodeinfo", "--description", "from the CLI")
    listed = json.loads((await cli(summary, "roles", "list", "--json")).stdout)
    mine = [r for r in listed if r["name"] == role]
    assert mine and mine[0]["permissions"] == ["capabilities", "nodeinfo"] and mine[0]["description"] == "from the CLI"
    assert role in (await cli(summary, "roles", "list")).stdout
    user = await new_user("clirole")
    try:
        # a role to a user, and permissions to a group
        out = (await cli(summary, "permissions", "grant", "--role", role, user.jid)).stdout
        assert f"granted role {role} to {user.jid}" in out
        assert len(await user.acp(agent.full_jid, HV_NS, "nodeinfo")) == 1
        await cli(summary, "permissions", "grant", "--group", "students", "ip")
        got = json.loads((await cli(summary, "permissions", "get", "--group", "students", "--json")).stdout)
        assert "ip" in got["permissions"]
        assert len(await student.acp(agent.full_jid, HV_NS, "ip")) == 1
        await cli(summary, "permissions", "revoke", "--group", "students", "ip")
        with pytest.raises(AcpError) as err:
            await student.acp(agent.full_jid, HV_NS, "ip")
        assert err.value.is_permission_error
        await cli(summary, "permissions", "revoke", "--role", role, user.jid)
        with pytest.raises(AcpError):
            await user.acp(agent.full_jid, HV_NS, "nodeinfo")
    finally:
        await cli(summary, "roles", "delete", role)
    assert role not in (await cli(summary, "roles", "list")).stdout
    await cli(summary, "roles", "delete", role, expect=1)  # no such role any more

    # quotas
    out = (await cli(summary, "quota", "set", "--group", "teachers", "--vms", "4", "--memory", "1G")).stdout
    assert "quota of group teachers: vms 4, vcpus unlimited, memory 1048576 KiB, disk unlimited" in out
    got = json.loads((await cli(summary, "quota", "get", "--group", "teachers", "--json")).stdout)
    assert got["limits"] == {"vms": 4, "memory": 1048576}
    await cli(summary, "quota", "set", "--group", "teachers", "--vms", "", "--memory", "")
    got = json.loads((await cli(summary, "quota", "get", "--group", "teachers", "--json")).stdout)
    assert got["limits"] == {}
    await cli(summary, "quota", "set", "--group", "teachers", "--vms", "lots", expect=1)  # the agent says why
    await cli(summary, "quota", "set", "--group", "teachers", expect=2)  # nothing to set
    # usage: another user's and one's own (the admin's: unlimited)
    report = json.loads((await cli(summary, "usage", student.jid, "--json")).stdout)
    assert report[0]["user"] == student.jid and set(report[0]["usage"]) == {"vms", "vcpus", "memory", "disk"}
    table = (await cli(summary, "usage")).stdout
    assert "unlimited (admin)" in table
