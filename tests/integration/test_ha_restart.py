"""Restart of a dead host's HA VMs elsewhere (hypervisor/ha.py) on three namespaced hypervisors,
each with a virtlockd locking every disk in a lockspace on the shared storage (rig/libvirtd.py).

* the ``ha`` flag: set, read, refused to a stranger, bad value;
* the lock manager itself: a disk held by one hypervisor's QEMU cannot be opened by another's;
* a network partition: hv-3's agent and libvirtd are SIGKILLed, its QEMU (and virtlockd) keep
  running: the survivors judge it dead and try, and the lock manager refuses the second start:
  reported, the one QEMU untouched, no definition left on the survivors;
* a whole host SIGKILLed (agent, libvirtd, virtlockd, QEMUs): its running HA VMs run on the
  survivors, each exactly once, their entities online from there; its non-HA VM is not restarted.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import signal
import uuid

import libvirt
import pytest
import pytest_asyncio

from agent_fixtures import admin_client
from hypervisor_fixtures import running_agents
from test_storage_disks import DISK, define_with_disk
from vm_helpers import CONTROL, alloc, wait_vm_ready
from xmpp_client import AcpError

HV_NS = "archipel:hypervisor:control"
HA_SETTINGS = {"HYPERVISOR": {"ha_lease_interval": "1", "ha_lease_ttl": "4"}}

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def hypervisors(stack):
    members = stack.start_hypervisors(3)
    yield members
    stack.hypervisors.stop()


@pytest_asyncio.fixture(scope="module")
async def admin(stack):
    client = await admin_client(stack, "ha")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module")
async def agents(stack, hypervisors, admin):
    async with running_agents(stack, hypervisors, admin, lambda hv: HA_SETTINGS) as handles:
        yield handles



def _running(hv) -> set[str]:
    conn = libvirt.open(hv.libvirt_uri)
    try:
        return {d.UUIDString() for d in conn.listAllDomains() if d.state()[0] == libvirt.VIR_DOMAIN_RUNNING}
    finally:
        conn.close()


def _defined(hv) -> set[str]:
    conn = libvirt.open(hv.libvirt_uri)
    try:
        return {d.UUIDString() for d in conn.listAllDomains()}
    finally:
        conn.close()


def _lease(stack, hv) -> dict | None:
    path = stack.hypervisors.shared_backing / ".archipel-ha" / "leases" / f"{hv.name}@{stack.domain}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ha_log_lines(handles, keep: int = 30) -> dict[str, list[str]]:
    """The survivors' last HA log lines: kept in a failure's message, since the module's later
    tests start agents over the same log files (a failure seen once in the whole suite)."""
    found = {}
    for handle in handles:
        try:
            lines = handle.process.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            found[handle.full_jid] = [f"(log unreadable: {exc})"]
            continue
        found[handle.full_jid] = [line for line in lines if "HA" in line or "ha.py" in line][-keep:]
    return found


async def _until(predicate, what: str, tries: int = 600, delay: float = 0.5):
    for _ in range(tries):
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(delay)
    raise AssertionError(f"never: {what}")


async def _ha_vm(stack, admin, agent, hv, prefix: str, *, ha: bool = True, disk: bool = False) -> str:
    jid = await alloc(admin, agent.full_jid, f"{prefix}-{uuid.uuid4().hex[:4]}")
    full = f"{jid}/{hv.name}"
    await wait_vm_ready(admin, full)
    if disk:  # a qcow2 disk on the shared storage: what the lock manager locks
        await admin.acp(full, DISK, "create", {"name": "root", "size": "16", "unit": "M"})
        await define_with_disk(admin, full, stack.hypervisors.shared_path / jid.split("@")[0] / "root.qcow2")
    if ha:
        await admin.acp(full, CONTROL, "setha", {"value": "1"})
    await admin.acp(full, CONTROL, "create")
    return jid


def _children(el, tag: str) -> list:
    return [child for child in el if child.tag.rsplit("}", 1)[-1] == tag]


def _lease_held(stack, disk: str) -> bool:
    """virtlockd's lease on ``disk`` (a lock file named by the path's SHA-256 in the lockspace)
    is held: a third party's exclusive fcntl lock on it is refused, as another host's would be."""
    path = stack.hypervisors.shared_backing / ".lockspace" / hashlib.sha256(disk.encode()).hexdigest()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False
    finally:
        os.close(fd)


def _sigkill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


async def test_the_ha_flag(stack, hypervisors, agents, admin, new_user):
    a, hv_a = agents[0], hypervisors[0]
    jid = await alloc(admin, a.full_jid, f"haflag-{uuid.uuid4().hex[:4]}")
    full = f"{jid}/{hv_a.name}"
    await wait_vm_ready(admin, full)
    assert (await admin.acp(full, CONTROL, "getha"))[0].get("value") == "0"
    await admin.acp(full, CONTROL, "setha", {"value": "1"})
    assert (await admin.acp(full, CONTROL, "getha"))[0].get("value") == "1"
    flag = stack.hypervisors.shared_backing / jid.split("@")[0] / ".archipel-ha.json"
    assert flag.stat().st_mode & 0o777 == 0o600  # it holds the VM's XMPP password: root only
    with pytest.raises(AcpError) as bad:
        await admin.acp(full, CONTROL, "setha", {"value": "maybe"})
    assert bad.value.code == -46
    stranger = await new_user("hastranger")
    with pytest.raises(AcpError) as refused:
        await stranger.acp(full, CONTROL, "setha", {"value": "0"})
    assert refused.value.is_permission_error
    with pytest.raises(AcpError) as refused:  # a peer's request only
        await admin.acp(a.full_jid, HV_NS, "harestart", {"uuid": jid.split("@")[0]})
    assert refused.value.is_permission_error
    await admin.acp(full, CONTROL, "setha", {"value": "0"})
    assert not flag.exists()
    await admin.acp(a.full_jid, HV_NS, "free", {"jid": jid})


async def test_partition_the_lock_manager_refuses_the_second_start(stack, hypervisors, agents, admin):
    """hv-3 looks dead to the others (agent and libvirtd killed) but its QEMU still runs: the
    survivors try to restart its HA VM and libvirt's lock manager refuses; it is reported."""
    hv_c, c = hypervisors[2], agents[2]
    jid = await _ha_vm(stack, admin, c, hv_c, "hapart", disk=True)
    vm = jid.split("@")[0]
    await _until(lambda: vm in (_lease(stack, hv_c) or {}).get("vms", []), "hv-3's lease lists the VM")
    qemus = hv_c.libvirtd.qemu_pids()
    assert qemus and hv_c.libvirtd.virtlockd_pids()
    c.process.kill()
    _sigkill(hv_c.libvirtd.pids())  # QEMU and virtlockd stay: a partition, not a death

    async def reported():
        status = await admin.acp(agents[0].full_jid, HV_NS, "hastatus")
        return {f.get("uuid"): f.get("reason") for f in _children(status[0], "failed")}.get(vm)
    reason = None
    for _ in range(240):
        reason = await reported()
        if reason:
            break
        await asyncio.sleep(0.5)
    assert reason and "lock" in reason.lower(), (reason, _ha_log_lines(agents[:2]))
    assert all(p in hv_c.libvirtd.qemu_pids() for p in qemus)  # the one QEMU runs on, untouched
    # the second guard: hv-3's virtlockd still holds the disk's lease (a survivor's virtlockd
    # would be refused too; here QEMU's own image lock refused first, before libvirt asks
    # virtlockd for the leases at the start of the vCPUs)
    disk = str(stack.hypervisors.shared_path / vm / "root.qcow2")
    assert await asyncio.to_thread(_lease_held, stack, disk)
    for hv in hypervisors[:2]:  # nothing left defined on the survivors
        assert vm not in {u.lower() for u in await asyncio.to_thread(_defined, hv)}
    # end of the partition: hv-3 really dies, then comes back empty with its agent
    await asyncio.to_thread(hv_c.stop)
    await asyncio.to_thread(hv_c.start)
    c.process.start()
    await c.wait_ready(admin)


async def test_dead_host_ha_vms_run_elsewhere_once(stack, hypervisors, agents, admin):
    hv_a, a = hypervisors[0], agents[0]
    ha_vms = [await _ha_vm(stack, admin, a, hv_a, f"ha{i}", disk=i == 0) for i in range(2)]
    plain = await _ha_vm(stack, admin, a, hv_a, "plain", ha=False)
    uuids = {j.split("@")[0] for j in ha_vms}
    await _until(lambda: set((_lease(stack, hv_a) or {}).get("vms", [])) == uuids, "hv-1's lease lists its HA VMs")
    # the whole host dies at once
    a.process.kill()
    _sigkill([*hv_a.libvirtd.pids(), *hv_a.libvirtd.qemu_pids(), *hv_a.libvirtd.virtlockd_pids()])

    def placed():
        found = [{u.lower() for u in _running(hv)} for hv in hypervisors[1:]]
        return found if uuids <= found[0] | found[1] else None
    on_b, on_c = await _until(placed, "the HA VMs run on the survivors")
    assert not (on_b & on_c & uuids)  # each exactly once
    assert plain.split("@")[0] not in on_b | on_c  # not HA: not restarted
    for jid in ha_vms:  # the entity follows: same JID, online from its new host, and answers
        host = hypervisors[1] if jid.split("@")[0] in on_b else hypervisors[2]
        await wait_vm_ready(admin, f"{jid}/{host.name}", timeout=60)
        info = await admin.acp(f"{jid}/{host.name}", CONTROL, "info")
        assert info[0].get("state") == "1"
    restarted = set()
    for h in agents[1:]:
        status = await admin.acp(h.full_jid, HV_NS, "hastatus")
        restarted |= {r.get("uuid") for r in _children(status[0], "restarted")}
    assert restarted == uuids
    # the taker dropped the dead host's lease (and its claim stays): no second round for it
    await _until(lambda: _lease(stack, hv_a) is None, "the dead host's lease dropped")
    claims = list((stack.hypervisors.shared_backing / ".archipel-ha" / "claims").glob(f"{hv_a.name}@*.claim"))
    assert len(claims) == 1


async def test_a_dead_host_that_comes_back_forgets_the_restarted_vms(stack, hypervisors, agents, admin):
    """hv-1's libvirtd restarts with its old (shut-off) definitions, then its agent: the HA VMs
    now run elsewhere, so it drops their definitions and entities; the non-HA VM stays."""
    hv_a, a = hypervisors[0], agents[0]
    elsewhere = set().union(*[{u.lower() for u in await asyncio.to_thread(_running, hv)} for hv in hypervisors[1:]])
    await asyncio.to_thread(hv_a.libvirtd.start, False, netns=hv_a.netns)
    before = {u.lower() for u in await asyncio.to_thread(_defined, hv_a)}
    back_here = before & elsewhere
    assert back_here  # the old definitions are there
    a.process.start()
    await a.wait_ready(admin)
    await _until(lambda: not ({u.lower() for u in _defined(hv_a)} & elsewhere), "hv-1 drops the moved definitions")
    for u in back_here:
        with pytest.raises(AcpError):  # no entity of it here any more
            await admin.acp(f"{u}@{stack.domain}/{hv_a.name}", CONTROL, "info", timeout=5)


async def test_a_clean_agent_stop_withdraws_its_lease(stack, hypervisors, agents, admin):
    """SIGTERM: the agent is away, not the host (its QEMUs run on): nobody may judge it dead."""
    hv_b, b = hypervisors[1], agents[1]
    await _until(lambda: _lease(stack, hv_b) is not None, "hv-2 has a lease")
    b.process.stop()
    assert _lease(stack, hv_b) is None
    b.process.start()
    await b.wait_ready(admin)
    await _until(lambda: _lease(stack, hv_b) is not None, "hv-2 renews its lease again")
