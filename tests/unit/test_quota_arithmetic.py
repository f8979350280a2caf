"""Quota arithmetic: the most restrictive quota wins, usage sums, messages, storage, parsing."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from lxml import etree

from archipelagent.directory.ldap import DirectoryUnavailable
from archipelagent.permissions.store import PermissionStore
from archipelagent.quotas.commands import CLEAR, parse_count, parse_size
from archipelagent.quotas import (
    ZERO,
    Quota,
    QuotaCenter,
    QuotaExceeded,
    Usage,
    check_limits,
    current_memory_kib,
    current_vcpus,
    definition_maximum,
    effective_limits,
    folder_bytes,
)


def test_usage_sums_and_differences():
    a, b = Usage(1, 2, 131072, 10), Usage(1, 1, 65536, 5)
    assert a + b == Usage(2, 3, 196608, 15)
    assert a - b == Usage(0, 1, 65536, 5)
    assert sum([a, b, b], ZERO) == Usage(3, 4, 262144, 20)
    assert a.as_dict() == {"vms": 1, "vcpus": 2, "memory": 131072, "disk": 10}


def test_most_restrictive_limit_wins_per_resource():
    user = Quota("user", "alice@x.org", {"vms": 5, "memory": 100})
    students = Quota("group", "students", {"vms": 2, "vcpus": 4})
    lab = Quota("group", "lab", {"vms": 3, "memory": 50, "vcpus": 8})
    limits = effective_limits([user, students, lab])
    assert (limits["vms"].value, limits["vms"].quota) == (2, students)
    assert (limits["memory"].value, limits["memory"].quota) == (50, lab)
    assert (limits["vcpus"].value, limits["vcpus"].quota) == (4, students)
    assert "disk" not in limits  # unset everywhere: unlimited
    # ties go to the first given (the user's own quota)
    tie = effective_limits([Quota("user", "a@x", {"vms": 2}), students])
    assert tie["vms"].quota.target_type == "user"
    assert effective_limits([]) == {}


def test_exceeded_message_names_the_quota_and_the_amounts():
    limits = effective_limits([Quota("group", "students", {"memory": 262144})])
    with pytest.raises(QuotaExceeded) as err:
        check_limits(Usage(memory=196608), Usage(memory=393216), limits)
    assert err.value.message == ("quota exceeded: memory 393216 KiB requested, limit 262144 KiB for group students "
                                 "(already used 196608 KiB)")
    assert (err.value.code, err.value.condition) == (-51, "policy-violation")
    limits = effective_limits([Quota("user", "bob@x.org", {"vms": 2})])
    with pytest.raises(QuotaExceeded) as err:
        check_limits(Usage(vms=2), Usage(vms=3), limits)
    assert err.value.message == "quota exceeded: vms 3 requested, limit 2 for user bob@x.org (already used 2)"


def test_within_limits_and_shrinking_pass():
    limits = effective_limits([Quota("group", "g", {"vms": 2, "memory": 100, "disk": 10})])
    check_limits(Usage(vms=1), Usage(vms=2, memory=100, disk=10), limits)  # exactly at the limit
    # already over a lowered quota: shrinking (or staying) is allowed, growing is not
    check_limits(Usage(memory=300), Usage(memory=200), limits)
    check_limits(Usage(memory=300), Usage(memory=300), limits)
    with pytest.raises(QuotaExceeded):
        check_limits(Usage(memory=300), Usage(memory=301), limits)
    with pytest.raises(QuotaExceeded) as err:
        check_limits(Usage(disk=4), Usage(disk=11), limits)
    assert "disk 11 bytes requested, limit 10 bytes" in err.value.message


DOMAIN = """<domain type='kvm'><name>x</name>
  <memory unit='MiB'>512</memory><currentMemory unit='KiB'>131072</currentMemory>
  <vcpu current='1'>4</vcpu>
  <cpu><numa><cell id='0' cpus='0' memory='1' unit='GiB'/></numa></cpu></domain>"""


def test_definition_figures():
    root = etree.fromstring(DOMAIN)
    # the maximum counts the NUMA layout (1 GiB), vCPUs count the current ones
    assert definition_maximum(root) == Usage(vms=1, vcpus=1, memory=1048576)
    assert current_memory_kib(root) == 131072 and current_vcpus(root) == 1
    plain = etree.fromstring("<domain><memory>262144</memory><vcpu>2</vcpu></domain>")
    assert current_memory_kib(plain) == 262144 and current_vcpus(plain) == 2
    assert definition_maximum(etree.fromstring("<domain><memory>1024</memory></domain>")).vcpus == 1


def test_folder_bytes(tmp_path):
    (tmp_path / "a.qcow2").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 23)
    assert folder_bytes(tmp_path) == 123
    assert folder_bytes(tmp_path / "missing") == 0


def test_limit_parsing():
    assert parse_count("3") == 3 and parse_count("") is CLEAR and parse_count("unlimited") is CLEAR
    with pytest.raises(ValueError):
        parse_count("-1")
    memory, disk = parse_size(1024), parse_size(1)
    assert memory("262144") == 262144 and memory("512M") == 524288 and memory("4G") == 4 * 1024 * 1024
    assert disk("10G") == 10 * 1024 ** 3 and disk("1000") == 1000 and disk("2KiB") == 2048
    assert disk("") is CLEAR
    with pytest.raises(ValueError):
        disk("ten")


async def test_store_merges_and_clears_limits(tmp_path):
    store = await PermissionStore.open(tmp_path / "p.sqlite3")
    try:
        assert await store.quota("group", "Students") == {}
        assert await store.set_quota("group", "Students", {"vms": 2, "memory": 262144}) == {"vms": 2, "memory": 262144}
        assert await store.set_quota("group", "students", {"vms": 3, "memory": None}) == {"vms": 3}
        await store.set_quota("user", "Alice@X.org/laptop", {"disk": 10})
        assert await store.quotas() == [("user", "alice@x.org", {"disk": 10}), ("group", "students", {"vms": 3})]
        assert await store.set_quota("user", "alice@x.org", {"disk": None}) == {}
        assert await store.quotas() == [("group", "students", {"vms": 3})]  # an empty row is gone
        with pytest.raises(ValueError):
            await store.set_quota("group", "students", {"gpus": 1})
    finally:
        await store.close()


class FakePermissions:
    def __init__(self, store, groups, admins=(), ldap_down=False):
        self.store, self.groups, self.admins, self.ldap_down = store, groups, set(admins), ldap_down
        self.asked_ldap = 0

    async def is_admin(self, user):
        return user in self.admins

    async def user_groups(self, user):
        self.asked_ldap += 1
        if self.ldap_down:
            raise DirectoryUnavailable("test")
        return frozenset(self.groups.get(user, ()))


def fake_center(store, vms, started=None, **perms):
    """A QuotaCenter over VM records owned by users, each VM of a given usage; ``started``:
    uuid -> who started it (what the running domains' live metadata would say)."""
    entities = {uuid: SimpleNamespace(uuid=uuid, jid=f"{uuid}@x.org", name=uuid, record=SimpleNamespace(owner=owner))
                for uuid, (owner, _usage) in vms.items()}
    agent = SimpleNamespace(permissions=FakePermissions(store, **perms), vms=SimpleNamespace(entities=entities))
    center = QuotaCenter(agent)
    center.started_by = dict(started or {})
    center.recorded = []

    async def vm_usage(entity, disk=True):
        usage = vms[entity.uuid][1]
        return usage if disk else Usage(usage.vms, usage.vcpus, usage.memory, 0)

    async def starters():
        return dict(center.started_by)

    async def record_start(entity, starter):
        center.recorded.append((entity.uuid, starter))
        center.started_by[entity.uuid] = starter

    center.vm_usage, center.starters, center.record_start = vm_usage, starters, record_start
    return center


async def test_center_sums_owned_vms_and_applies_every_quota(tmp_path):
    store = await PermissionStore.open(tmp_path / "p.sqlite3")
    try:
        vms = {"a": ("s1@x.org", Usage(1, 1, 131072, 100)), "b": ("S1@x.org", Usage(1, 2, 65536, 0)),
               "c": ("other@x.org", Usage(1, 8, 999999, 5))}
        center = fake_center(store, vms, groups={"s1@x.org": {"students"}}, admins={"root@x.org"})
        assert await center.usage("s1@x.org") == Usage(2, 3, 196608, 100)
        assert await center.usage("nobody@x.org") == ZERO
        await center.check("s1@x.org", Usage(vms=1))  # no quota at all: unlimited
        assert center.agent.permissions.asked_ldap == 0  # no group quota: LDAP not needed
        await store.set_quota("group", "students", {"vms": 3, "memory": 262144})
        await center.check("s1@x.org", Usage(vms=1, memory=65536))  # 3 VMs, 262144 KiB: at the limits
        with pytest.raises(QuotaExceeded) as err:
            await center.check("s1@x.org", Usage(vms=1, memory=131072))
        assert "memory 327680 KiB requested, limit 262144 KiB for group students (already used 196608 KiB)" \
            in err.value.message
        # a stricter user quota wins over the group's
        await store.set_quota("user", "s1@x.org", {"vms": 2})
        with pytest.raises(QuotaExceeded) as err:
            await center.check("s1@x.org", Usage(vms=1))
        assert err.value.message == "quota exceeded: vms 3 requested, limit 2 for user s1@x.org (already used 2)"
        # replacing: a smaller VM definition is fine even over the quota
        await center.check("s1@x.org", Usage(memory=1024), Usage(memory=65536))
        await center.check_disk("s1@x.org", 10 ** 12)  # no disk quota
        await store.set_quota("group", "students", {"disk": 1000})
        with pytest.raises(QuotaExceeded) as err:
            await center.check_disk("s1@x.org", 901)
        assert "disk 1001 bytes requested, limit 1000 bytes for group students (already used 100 bytes)" \
            in err.value.message
        await center.check_disk("s1@x.org", 900)
        # admins are not limited, as owners or as senders
        await center.check_disk("root@x.org", 10 ** 9)
        await center.check_disk("s1@x.org", 10 ** 9, sender="root@x.org")
    finally:
        await store.close()


async def test_center_refuses_when_ldap_is_needed_and_down(tmp_path):
    store = await PermissionStore.open(tmp_path / "p.sqlite3")
    try:
        center = fake_center(store, {}, groups={}, ldap_down=True)
        await center.check("s1@x.org", Usage(vms=1))  # no group quota: LDAP not asked
        await store.set_quota("group", "students", {"vms": 1})
        with pytest.raises(DirectoryUnavailable):
            await center.check("s1@x.org", Usage(vms=1))
    finally:
        await store.close()


async def test_reserve_serialises_one_owner_and_not_two():
    """The per-owner quota lock: a second holder of the same owner waits; another owner does not."""
    import asyncio

    center = QuotaCenter(SimpleNamespace())
    order = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def hold(owner, name):
        async with center.reserve(owner):
            order.append(f"{name} in")
            first_in.set()
            await release.wait()
            order.append(f"{name} out")

    a = asyncio.create_task(hold("Ann@x/res", "a"))
    await first_in.wait()
    b = asyncio.create_task(hold("ann@x", "b"))  # the same owner (bare, case-folded)
    c = asyncio.create_task(hold("bob@x", "c"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["a in", "c in"]
    release.set()
    await asyncio.gather(a, b, c)
    assert order.index("b in") > order.index("a out")
    assert center._locks == {} and center._holders == {}  # nothing kept once released
    async with center.reserve(None):  # no owner: nothing to hold
        pass


async def test_a_start_by_a_non_owner_counts_against_the_starter(tmp_path):
    """IsardVDI's rule: a class VM (the teacher's) a student starts is the student's while it runs."""
    store = await PermissionStore.open(tmp_path / "p.sqlite3")
    try:
        vms = {"c1": ("teacher@x.org", Usage(1, 2, 524288, 1000)), "c2": ("teacher@x.org", Usage(1, 1, 262144, 1000)),
               "own": ("s1@x.org", Usage(1, 1, 131072, 50))}
        center = fake_center(store, vms, groups={})
        entities = center.agent.vms.entities
        await store.set_quota("user", "s1@x.org", {"vms": 2})
        assert await center.usage("s1@x.org") == Usage(1, 1, 131072, 50)  # owned only: nothing started yet
        async with center.starting(entities["c1"], "s1@x.org/web"):
            pass
        assert center.recorded == [("c1", "s1@x.org")]
        # the running class VM counts for the student, without its disk (the owner pays that) ...
        assert await center.usage("s1@x.org") == Usage(2, 3, 655360, 50)
        # ... and stays the teacher's too
        assert await center.usage("teacher@x.org") == Usage(2, 3, 786432, 2000)
        with pytest.raises(QuotaExceeded) as err:
            async with center.starting(entities["c2"], "s1@x.org"):
                raise AssertionError("the start must not run")
        assert err.value.message == "quota exceeded: vms 3 requested, limit 2 for user s1@x.org (already used 2)"
        assert center.recorded == [("c1", "s1@x.org")]
        # the owner's own start is not charged again (the teacher has no quota room left either)
        await store.set_quota("user", "teacher@x.org", {"vms": 1})
        async with center.starting(entities["c2"], "teacher@x.org"):
            pass
        assert center.recorded == [("c1", "s1@x.org")]
        # c1 stopped: libvirt forgot its live metadata, the student may start c2
        del center.started_by["c1"]
        async with center.starting(entities["c2"], "s1@x.org"):
            pass
        assert await center.usage("s1@x.org") == Usage(2, 2, 393216, 50)
        # a start that fails is not recorded; a memory limit is named as such
        await store.set_quota("user", "s2@x.org", {"memory": 262144})
        with pytest.raises(RuntimeError):
            async with center.starting(entities["c2"], "s2@x.org"):
                raise RuntimeError("libvirt said no")
        assert ("c2", "s2@x.org") not in center.recorded
        with pytest.raises(QuotaExceeded) as err:
            async with center.starting(entities["c1"], "s2@x.org"):
                pass
        assert "memory 524288 KiB requested, limit 262144 KiB for user s2@x.org" in err.value.message
        # admins are not limited
        center.agent.permissions.admins.add("root@x.org")
        await store.set_quota("user", "root@x.org", {"vms": 0})
        async with center.starting(entities["c1"], "root@x.org"):
            pass
    finally:
        await store.close()
