"""Classes against the real stack: the teacher provisions the LDAP students group from a golden image.

Each student reaches only their VM (through the class role), its console included, a newcomer to the LDAP group gets a
VM on the re-run (the others are reported, never duplicated), reset restores the golden content
(read in the disk), and bulk actions act on the whole class.
"""
from __future__ import annotations

import asyncio
import subprocess
import uuid as uuidlib
import xml.etree.ElementTree as ET

import ldap3
import libvirt
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from agent_fixtures import PERMS_NS, client_for, grant
from vm_helpers import CONTROL, alloc, libvirt_state, unique_name, vm_full, wait_libvirt_state, wait_vm_ready
from xmpp_client import AcpError

NS = "archipel:hypervisor:classes"
VM_NS = "archipel:vm:classes"
DISK = "archipel:vm:disk"
HV_NS = "archipel:hypervisor:control"
VNC_NS = "archipel:virtualmachine:vnc"
PATTERN = "0x5a"


@pytest_asyncio.fixture(scope="module")
async def people(stack, agent):
    clients = {}
    for uid in ("teacher1", "student1", "student2", "stranger1"):
        user = stack.user(uid)
        clients[uid] = await client_for(stack, user["jid"], user["password"], f"class-{uid}").connect()
    yield clients
    for client in clients.values():
        await client.close()


async def make_golden(admin, agent, stack) -> str:
    """A golden image whose first 64 KiB hold PATTERN (made through the storage module)."""
    jid = await alloc(admin, agent.full_jid, unique_name("gold"))
    full = vm_full(jid, agent.jid)
    await wait_vm_ready(admin, full)
    await admin.acp(full, DISK, "create", {"name": "base", "size": "16", "unit": "M"})
    base = stack.storage_dir / jid.split("@")[0] / "base.qcow2"
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} 0 64k", str(base)], check=True,
                   capture_output=True)
    golden = f"class-{uuidlib.uuid4().hex[:8]}"
    await admin.acp(full, DISK, "setgolden", {"name": "base.qcow2", "golden": golden})
    gpath = stack.storage_dir.parent / "golden" / f"{golden}.qcow2"
    for _ in range(300):
        if gpath.is_file():
            break
        await asyncio.sleep(0.1)
    await admin.acp(agent.full_jid, HV_NS, "free", {"jid": jid})
    return golden


def reads(path, pattern: str) -> bool:
    out = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} 0 64k", str(path)],
                         capture_output=True, text=True)
    return out.returncode == 0 and "verification failed" not in out.stdout.lower()


class Ldap:
    """The rig's directory as its root: a newcomer joins the students group."""

    def __init__(self, stack):
        self.stack = stack
        self.conn = ldap3.Connection(ldap3.Server(stack.ldap_uri), stack.ldap_bind_dn, stack.ldap_bind_password,
                                     auto_bind=True)

    def add_student(self, uid: str) -> None:
        base = self.stack.ldap_base_dn
        dn = f"uid={uid},ou=people,{base}"
        self.conn.add(dn, ["inetOrgPerson"], {"uid": uid, "cn": uid, "sn": uid, "userPassword": uid + "pw"})
        self.conn.modify(f"cn=students,ou=groups,{base}", {"member": [(ldap3.MODIFY_ADD, [dn])]})
        assert self.conn.result["result"] == 0, self.conn.result

    def remove_student(self, uid: str) -> None:
        base = self.stack.ldap_base_dn
        dn = f"uid={uid},ou=people,{base}"
        self.conn.modify(f"cn=students,ou=groups,{base}", {"member": [(ldap3.MODIFY_DELETE, [dn])]})
        self.conn.delete(dn)


async def test_a_class_from_the_students_group(agent, admin, people, stack):
    teacher, s1, s2, stranger = (people[u] for u in ("teacher1", "student1", "student2", "stranger1"))
    golden = await make_golden(admin, agent, stack)
    role = f"class-student-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": p})
                              for p in ("presence", "info", "create", "destroy", "class_reset", "vnc_display")])
    await grant(admin, agent.full_jid, teacher.jid, "alloc", "free", "class_provision", "class_report",
                "class_start", "class_stop", "class_reset", "class_delete")
    name = f"c{uuidlib.uuid4().hex[:6]}"
    args = {"name": name, "group": "students", "golden": golden, "role": role}

    # refusals: a stranger; bad names; a role holding all; an unknown role; a new class without its golden
    with pytest.raises(AcpError) as err:
        await stranger.acp(agent.full_jid, NS, "provision", args)
    assert err.value.code == -1
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role + "-all"},
                    children=[ET.Element("permission", {"name": "all"})])
    for bad, code, text in (({**args, "name": "Bad Name!"}, -46, "'name'"),
                            ({**args, "role": role + "-all"}, -46, "never all"),
                            ({**args, "role": "no-such-role"}, -46, "no role"),
                            ({k: v for k, v in args.items() if k != "golden"}, -46, "'golden'")):
        with pytest.raises(AcpError) as err:
            await teacher.acp(agent.full_jid, NS, "provision", bad)
        assert err.value.code == code and text in err.value.text, (bad, err.value)

    reply = await teacher.acp(agent.full_jid, NS, "provision", args)
    made = {v.get("student"): v for v in reply}
    assert {u: v.get("status") for u, v in made.items()} == {"student1": "created", "student2": "created"}
    assert made["student1"].get("name") == f"{name}-student1"
    vm1, vm2 = (vm_full(made[u].get("jid"), agent.jid) for u in ("student1", "student2"))
    uuid1 = made["student1"].get("jid").split("@")[0]
    disk1 = stack.storage_dir / uuid1 / "root.qcow2"
    assert reads(disk1, PATTERN)  # an overlay of the golden image

    # each student reaches their VM, not the neighbour's; the teacher reaches both
    await wait_vm_ready(s1, vm1)
    await wait_vm_ready(s2, vm2)
    with pytest.raises(AcpError) as err:
        await s1.acp(vm2, CONTROL, "info")
    assert err.value.code == -1
    with pytest.raises(AcpError) as err:
        await s1.acp(vm1, DISK, "get")  # the role's rights, not all
    assert err.value.code == -1
    await teacher.acp(vm2, CONTROL, "info")
    await s1.acp(vm1, CONTROL, "create")
    await wait_libvirt_state(stack, uuid1, libvirt.VIR_DOMAIN_RUNNING)

    # the student's console: a token for their VM that reaches its VNC server; none for the neighbour's
    display = (await s1.acp(vm1, VNC_NS, "display")).find(f"{{{VNC_NS}}}display").attrib
    async with connect(display["url"], open_timeout=20) as ws:
        assert (await asyncio.wait_for(ws.recv(), 20)).startswith(b"RFB 003.00")
    with pytest.raises(AcpError) as err:
        await s1.acp(vm2, VNC_NS, "display")
    assert err.value.code == -1
    with pytest.raises(AcpError) as err:
        await stranger.acp(vm1, VNC_NS, "display")
    assert err.value.code == -1

    # reset: refused while running, forced; the overlay is new and reads the golden content again
    with pytest.raises(AcpError) as err:
        await s1.acp(vm1, VM_NS, "reset")
    assert err.value.code == -49 and "force" in err.value.text
    await s1.acp(vm1, CONTROL, "destroy")
    await wait_libvirt_state(stack, uuid1, libvirt.VIR_DOMAIN_SHUTOFF)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xff 0 64k", str(disk1)], check=True, capture_output=True)
    assert reads(disk1, "0xff")
    await s1.acp(vm1, CONTROL, "create")
    await wait_libvirt_state(stack, uuid1, libvirt.VIR_DOMAIN_RUNNING)
    await s1.acp(vm1, VM_NS, "reset", {"force": "yes"})
    assert libvirt_state(stack, uuid1) == libvirt.VIR_DOMAIN_SHUTOFF
    assert reads(disk1, PATTERN)
    with pytest.raises(AcpError) as err:  # the neighbour's VM is not the student's to reset
        await s1.acp(vm2, VM_NS, "reset")
    assert err.value.code == -1

    # a newcomer to the LDAP group gets a VM on the re-run; the others are reported, not duplicated
    ldap = Ldap(stack)
    newcomer = f"newbie{uuidlib.uuid4().hex[:6]}"
    ldap.add_student(newcomer)
    try:
        again = {v.get("student"): v.get("status")
                 for v in await teacher.acp(agent.full_jid, NS, "provision", {"name": name})}
        assert again == {"student1": "existing", "student2": "existing", newcomer: "created"}
    finally:
        ldap.remove_student(newcomer)

    # the report: each VM, its student, its state and last change; only the class's teacher reads it
    report = {v.get("student"): v for v in await teacher.acp(agent.full_jid, NS, "report", {"name": name})}
    assert set(report) == {"student1", "student2", newcomer}
    assert report["student1"].get("state") == "off" and report["student1"].get("changed")
    await grant(admin, agent.full_jid, stranger.jid, "class_report")
    with pytest.raises(AcpError) as err:
        await stranger.acp(agent.full_jid, NS, "report", {"name": name})
    assert err.value.code == -1 and "teacher1" in err.value.text
    with pytest.raises(AcpError) as err:
        await teacher.acp(agent.full_jid, NS, "report", {"name": "nosuchclass"})
    assert err.value.code == -47

    # bulk: start all, stop all, delete the class (VMs freed)
    assert {v.get("status") for v in await teacher.acp(agent.full_jid, NS, "start", {"name": name})} == {"ok"}
    for v in report.values():
        await wait_libvirt_state(stack, v.get("jid").split("@")[0], libvirt.VIR_DOMAIN_RUNNING)
    assert {v.get("status") for v in await teacher.acp(agent.full_jid, NS, "stop", {"name": name})} == {"ok"}
    for v in report.values():
        await wait_libvirt_state(stack, v.get("jid").split("@")[0], libvirt.VIR_DOMAIN_SHUTOFF)
    assert {v.get("status") for v in await teacher.acp(agent.full_jid, NS, "delete", {"name": name})} == {"ok"}
    for v in report.values():
        await wait_libvirt_state(stack, v.get("jid").split("@")[0], None)
    with pytest.raises(AcpError) as err:
        await teacher.acp(agent.full_jid, NS, "report", {"name": name})
    assert err.value.code == -47


async def next_message_from(client, jid: str, timeout: float = 60) -> str:
    while True:
        msg = await asyncio.wait_for(client.messages.get(), timeout)
        if msg["from"].bare == jid:
            return msg["body"]


async def test_a_lease_warns_then_shuts_off_then_trashes(agent, admin, people, stack):
    teacher, s1, stranger = people["teacher1"], people["student1"], people["stranger1"]
    golden = await make_golden(admin, agent, stack)
    role = f"lease-student-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": p}) for p in ("presence", "info", "create")])
    await grant(admin, agent.full_jid, teacher.jid, "alloc", "free", "class_provision", "class_report", "class_lease",
                "class_delete")
    name = f"l{uuidlib.uuid4().hex[:6]}"
    made = {v.get("student"): v for v in await teacher.acp(
        agent.full_jid, NS, "provision", {"name": name, "group": "students", "golden": golden, "role": role})}
    jid1 = made["student1"].get("jid")
    uuid1, vm1 = jid1.split("@")[0], vm_full(jid1, agent.jid)
    await wait_vm_ready(s1, vm1)
    await s1.acp(vm1, CONTROL, "create")
    await wait_libvirt_state(stack, uuid1, libvirt.VIR_DOMAIN_RUNNING)

    for bad, code in (({"expiry": "-1h"}, -46), ({"expiry": "2000-01-01T00:00"}, -46), ({"expiry": "+1h", "warn": "soon"}, -46),
                      ({"expiry": "+1h", "grace": "1w"}, -46)):
        with pytest.raises(AcpError) as err:
            await teacher.acp(agent.full_jid, NS, "lease", {"name": name, **bad})
        assert err.value.code == code, bad
    await grant(admin, agent.full_jid, stranger.jid, "class_lease")
    with pytest.raises(AcpError) as err:  # another teacher's class
        await stranger.acp(agent.full_jid, NS, "lease", {"name": name, "expiry": "+1h"})
    assert err.value.code == -1

    # a lease of a day, then extended (shortened here, so the test sees it end): the jobs are replaced
    await teacher.acp(agent.full_jid, NS, "lease", {"name": name, "expiry": "+2d"})
    jobs = [j.get("action") for j in await teacher.acp(vm1, "archipel:entity:scheduler", "jobs")]
    assert sorted(jobs) == ["lease-shutoff", "lease-warn", "lease-warn"]
    while not s1.messages.empty():
        s1.messages.get_nowait()
    await teacher.acp(agent.full_jid, NS, "lease", {"name": name, "expiry": "+8s", "warn": "4s", "grace": "4s"})
    jobs = [j.get("action") for j in await teacher.acp(vm1, "archipel:entity:scheduler", "jobs")]
    assert sorted(jobs) == ["lease-shutoff", "lease-warn"]
    report = {v.get("student"): v for v in await teacher.acp(agent.full_jid, NS, "report", {"name": name})}
    assert report["student1"].get("expiry")

    # warned by chat, then shut off at expiry, then moved to the trash after the grace
    body = await next_message_from(s1, jid1)
    assert "lease ends" in body and name in body
    assert libvirt_state(stack, uuid1) == libvirt.VIR_DOMAIN_RUNNING  # the warning comes before the end
    await wait_libvirt_state(stack, uuid1, libvirt.VIR_DOMAIN_SHUTOFF, timeout=60)
    await wait_libvirt_state(stack, uuid1, None, timeout=60)
    for _ in range(300):  # free undefines, then moves the folder
        if not (stack.storage_dir / uuid1).exists():
            break
        await asyncio.sleep(0.1)
    assert not (stack.storage_dir / uuid1).exists()
    assert any(p.name.startswith(uuid1) for p in (stack.storage_dir / ".trash").iterdir())
    report = {v.get("student"): v.get("state") for v in await teacher.acp(agent.full_jid, NS, "report", {"name": name})}
    assert report["student1"] == "missing"
    await teacher.acp(agent.full_jid, NS, "delete", {"name": name})


def admin_cli(*argv) -> subprocess.CompletedProcess:
    import os
    import sys
    from pathlib import Path
    return subprocess.run([sys.executable, "-m", "archipelagent.admin.cli", *argv], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[2], env=dict(os.environ))


async def test_archipel_admin_class(agent, admin, stack, tmp_path):
    import json
    summary = stack.write_summary(tmp_path / "summary.json", hypervisor_full_jid=agent.full_jid)
    golden = await make_golden(admin, agent, stack)
    role = f"cli-student-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": "info"})])
    name = f"k{uuidlib.uuid4().hex[:6]}"
    common = ("--summary", str(summary))
    done = await asyncio.to_thread(admin_cli, *common, "class", "provision", name, "--group", "students",
                                   "--golden", golden, "--role", role, "--network", "nosuchnet")
    assert done.returncode == 1 and "no network named 'nosuchnet'" in done.stderr, (done.stdout, done.stderr)
    done = await asyncio.to_thread(admin_cli, *common, "class", "provision", name, "--group", "students",
                                   "--golden", golden, "--role", role, "--json")
    assert done.returncode == 0, done.stderr
    assert {v["student"]: v["status"] for v in json.loads(done.stdout)} == {"student1": "created", "student2": "created"}
    done = await asyncio.to_thread(admin_cli, *common, "class", "report", name)
    assert done.returncode == 0 and f"{name}-student1" in done.stdout and "off" in done.stdout, done.stdout
    done = await asyncio.to_thread(admin_cli, *common, "class", "lease", name, "+3d", "--warn", "1d")
    assert done.returncode == 0 and "lease until" in done.stdout, done.stderr
    done = await asyncio.to_thread(admin_cli, *common, "class", "reset", "nosuchclass")
    assert done.returncode == 1 and "no class" in done.stderr
    done = await asyncio.to_thread(admin_cli, *common, "class", "delete", name, "--json")
    assert done.returncode == 0 and {v["status"] for v in json.loads(done.stdout)} == {"ok"}, done.stderr


async def test_two_provisions_at_once_make_each_vm_once(agent, admin, stack):
    golden = await make_golden(admin, agent, stack)
    role = f"twice-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": "info"})])
    name = f"t{uuidlib.uuid4().hex[:6]}"
    args = {"name": name, "group": "students", "golden": golden, "role": role}
    first, second = await asyncio.gather(admin.acp(agent.full_jid, NS, "provision", args),
                                         admin.acp(agent.full_jid, NS, "provision", args))
    statuses = sorted(tuple(sorted(v.get("status") for v in reply)) for reply in (first, second))
    assert statuses == [("created", "created"), ("existing", "existing")]
    await admin.acp(agent.full_jid, NS, "delete", {"name": name})


async def test_the_class_counts_against_the_teachers_quota(agent, admin, people, stack):
    teacher = people["teacher1"]
    golden = await make_golden(admin, agent, stack)
    role = f"quota-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": "info"})])
    await grant(admin, agent.full_jid, teacher.jid, "alloc", "free", "class_provision", "class_delete")
    usage = await teacher.acp(agent.full_jid, "archipel:quota", "usage")
    owned = int(next(r.get("used") for r in usage[0] if r.get("name") == "vms"))
    await admin.acp(agent.full_jid, "archipel:quota", "set",
                    {"target_type": "user", "target": teacher.jid, "vms": str(owned + 1)})
    name = f"q{uuidlib.uuid4().hex[:6]}"
    try:
        reply = await teacher.acp(agent.full_jid, NS, "provision",
                                  {"name": name, "group": "students", "golden": golden, "role": role})
        statuses = sorted((v.get("status"), v.get("code")) for v in reply)
        assert statuses == [("created", None), ("refused", "-51")], [dict(v.attrib) for v in reply]
    finally:
        await admin.acp(agent.full_jid, "archipel:quota", "set", {"target_type": "user", "target": teacher.jid, "vms": ""})
    # the quota lifted, the re-run makes the missing VM
    again = sorted(v.get("status") for v in await teacher.acp(agent.full_jid, NS, "provision", {"name": name}))
    assert again == ["created", "existing"]
    await teacher.acp(agent.full_jid, NS, "delete", {"name": name})


async def test_a_students_start_counts_against_the_students_quota(agent, admin, people, stack):
    """IsardVDI's rule: the teacher owns the class VMs, but a running VM the student started is the student's."""
    teacher, s1 = people["teacher1"], people["student1"]
    golden = await make_golden(admin, agent, stack)
    role = f"start-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": p})
                              for p in ("presence", "info", "create", "destroy", "message")])
    await grant(admin, agent.full_jid, teacher.jid, "alloc", "free", "class_provision", "class_start", "class_stop",
                "class_delete")
    names = [f"s{uuidlib.uuid4().hex[:6]}" for _ in range(2)]
    vms = []
    for name in names:  # student1 is in both classes (both of the students group)
        made = {v.get("student"): v for v in await teacher.acp(
            agent.full_jid, NS, "provision", {"name": name, "group": "students", "golden": golden, "role": role})}
        vms.append(made["student1"].get("jid"))
    (jid_a, jid_b), (uuid_a, uuid_b) = vms, [j.split("@")[0] for j in vms]
    vm_a, vm_b = vm_full(jid_a, agent.jid), vm_full(jid_b, agent.jid)
    for vm in (vm_a, vm_b):
        await wait_vm_ready(s1, vm)

    def used(usage, resource="vms") -> int:
        return int(next(r.get("used") for r in usage[0] if r.tag.endswith("resource") and r.get("name") == resource))

    owned = used(await s1.acp(agent.full_jid, "archipel:quota", "usage"))
    await admin.acp(agent.full_jid, "archipel:quota", "set", {"target_type": "user", "target": s1.jid, "vms": str(owned + 1)})
    try:
        await s1.acp(vm_a, CONTROL, "create")
        await wait_libvirt_state(stack, uuid_a, libvirt.VIR_DOMAIN_RUNNING)
        usage = await s1.acp(agent.full_jid, "archipel:quota", "usage")
        assert used(usage) == owned + 1
        assert [v.get("jid") for v in usage[0] if v.tag.endswith("vm") and v.get("started") == "yes"] == [jid_a]
        # the second start is refused, over ACP and over chat, naming the limit
        with pytest.raises(AcpError) as err:
            await s1.acp(vm_b, CONTROL, "create")
        assert err.value.code == -51, err.value
        assert f"quota exceeded: vms {owned + 2} requested, limit {owned + 1} for user {s1.jid}" in err.value.text
        assert "quota exceeded: vms" in await s1.chat(vm_b, "start")
        assert libvirt_state(stack, uuid_b) == libvirt.VIR_DOMAIN_SHUTOFF
        # the teacher's own start of the class is not the student's: it still works
        assert {v.get("status") for v in await teacher.acp(agent.full_jid, NS, "start", {"name": names[1]})} == {"ok"}
        await wait_libvirt_state(stack, uuid_b, libvirt.VIR_DOMAIN_RUNNING)
        assert used(await s1.acp(agent.full_jid, "archipel:quota", "usage")) == owned + 1
        await teacher.acp(agent.full_jid, NS, "stop", {"name": names[1]})
        await wait_libvirt_state(stack, uuid_b, libvirt.VIR_DOMAIN_SHUTOFF)
        # the first stopped (however: here the student's destroy), the second starts
        await s1.acp(vm_a, CONTROL, "destroy")
        await wait_libvirt_state(stack, uuid_a, libvirt.VIR_DOMAIN_SHUTOFF)
        assert used(await s1.acp(agent.full_jid, "archipel:quota", "usage")) == owned
        await s1.acp(vm_b, CONTROL, "create")
        await wait_libvirt_state(stack, uuid_b, libvirt.VIR_DOMAIN_RUNNING)
        with pytest.raises(AcpError) as err:  # and now the first is the one over the quota
            await s1.acp(vm_a, CONTROL, "create")
        assert err.value.code == -51
    finally:
        await admin.acp(agent.full_jid, "archipel:quota", "set", {"target_type": "user", "target": s1.jid, "vms": ""})
        for name in names:
            await teacher.acp(agent.full_jid, NS, "delete", {"name": name})


def domain_xml(stack, uuid: str) -> ET.Element:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return ET.fromstring(conn.lookupByUUIDString(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        conn.close()


def domain_names(stack) -> set[str]:
    conn = libvirt.open(stack.libvirt_uri)
    try:
        return {d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


async def test_a_class_on_its_network(agent, admin, people, stack):
    """``network``: each VM's NIC on the class network, as the teacher's definition; a network the
    teacher may not use is refused before any VM is made."""
    teacher = people["teacher1"]
    net_ns = "archipel:hypervisor:network"
    golden = await make_golden(admin, agent, stack)
    role = f"net-{uuidlib.uuid4().hex[:6]}"
    await admin.acp(agent.full_jid, PERMS_NS, "setrole", {"name": role},
                    children=[ET.Element("permission", {"name": "info"})])
    await grant(admin, agent.full_jid, teacher.jid, "alloc", "free", "class_provision", "class_report", "class_delete",
                "network_define", "network_undefine")
    mine, foreign = f"cn{uuidlib.uuid4().hex[:8]}", f"cn{uuidlib.uuid4().hex[:8]}"
    await teacher.acp(agent.full_jid, net_ns, "define", children=[ET.fromstring(f"<network><name>{mine}</name></network>")])
    await admin.acp(agent.full_jid, net_ns, "define", children=[ET.fromstring(f"<network><name>{foreign}</name></network>")])
    name = f"n{uuidlib.uuid4().hex[:6]}"
    args = {"name": name, "group": "students", "golden": golden, "role": role}
    try:
        for network, code, text in ((foreign, -1, f"'use' on network '{foreign}' is needed by {teacher.jid}"),
                                    ("nosuchnet", -47, "no network named 'nosuchnet'"),
                                    ("bad/name", -46, "'network'")):
            with pytest.raises(AcpError) as err:
                await teacher.acp(agent.full_jid, NS, "provision", {**args, "network": network})
            assert err.value.code == code and text in err.value.text, (network, err.value)
            with pytest.raises(AcpError) as err:  # refused before anything was made: no class, no VM
                await teacher.acp(agent.full_jid, NS, "report", {"name": name})
            assert err.value.code == -47
            assert not {n for n in domain_names(stack) if n.startswith(f"{name}-")}

        made = {v.get("student"): v for v in await teacher.acp(agent.full_jid, NS, "provision", {**args, "network": mine})}
        assert {u: v.get("status") for u, v in made.items()} == {"student1": "created", "student2": "created"}
        for v in made.values():
            ifaces = domain_xml(stack, v.get("jid").split("@")[0]).findall("devices/interface")
            assert len(ifaces) == 1 and ifaces[0].get("type") == "network", [ET.tostring(i) for i in ifaces]
            assert ifaces[0].find("source").get("network") == mine
            assert ifaces[0].find("filterref").get("filter") == "clean-traffic"  # the teacher's VM: the policy's filter
        report = await teacher.acp(agent.full_jid, NS, "report", {"name": name})
        assert {v.get("network") for v in report} == {mine}
        with pytest.raises(AcpError) as err:  # the class keeps its network
            await teacher.acp(agent.full_jid, NS, "provision", {"name": name, "network": foreign})
        assert err.value.code == -49 and mine in err.value.text
        assert {v.get("status") for v in await teacher.acp(agent.full_jid, NS, "provision", {"name": name})} == {"existing"}
    finally:
        try:
            await teacher.acp(agent.full_jid, NS, "delete", {"name": name})
        except AcpError:
            pass
        await teacher.acp(agent.full_jid, net_ns, "undefine", {"uuid": mine})
        await admin.acp(agent.full_jid, net_ns, "undefine", {"uuid": foreign})
