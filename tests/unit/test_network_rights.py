"""Network rights through the permission center (archipelagent/networks/service.py), without libvirt:
the catalogue's grants mirrored into the store, and which networks a VM's owner may name."""
from __future__ import annotations

from types import SimpleNamespace

from archipelagent.networks import catalogue
from archipelagent.networks.catalogue import NetworkRecord
from archipelagent.networks.service import KIND, NETWORK_PERMISSIONS, NetworkService, entity_key, read_config
from archipelagent.permissions import PermissionCenter, PermissionStore

ME, OTHER = "hv-1@archipel.test", "hv-2@archipel.test"
TEACHER, STUDENT, ADMIN = "teacher1@archipel.test", "student1@archipel.test", "admin@archipel.test"


class FS:
    async def call(self, fn, *args, what=None, **kw):
        return fn(*args, **kw)


class Groups:
    async def groups(self, jid):
        return frozenset({"students"}) if jid == STUDENT else frozenset()


async def service(tmp_path, site=frozenset()):
    store = await PermissionStore.open(tmp_path / "perms.sqlite3")
    center = PermissionCenter(store, [ADMIN], directory=Groups(), admin_groups=())
    for permission in NETWORK_PERMISSIONS:
        center.declare(KIND, permission)
    config = SimpleNamespace(vm=SimpleNamespace(allowed_networks=site, base_path=tmp_path),
                             hypervisor=SimpleNamespace(jid=ME), parser=None, path=tmp_path / "a.conf")
    agent = SimpleNamespace(config=config, fs=FS(), permissions=center, libvirt=SimpleNamespace(connected=False))
    return NetworkService(agent, read_config(config)), store


def rec(name, scope="class", hypervisor=OTHER, grants=()):
    return NetworkRecord(name=name, owner=TEACHER, scope=scope, hypervisor=hypervisor, vni=1000,
                         grants=[["user", TEACHER, "all", True], *map(list, grants)])


async def test_group_grant_from_the_catalogue_lets_a_student_use_it(tmp_path):
    svc, store = await service(tmp_path, site=frozenset({"default"}))
    try:
        catalogue.create(tmp_path, rec("lab1", grants=[("group", "students", "use", True)]))
        catalogue.create(tmp_path, rec("lab2"))
        catalogue.create(tmp_path, rec("far", scope="local", grants=[("group", "students", "use", True)]))
        assert await svc.usable(STUDENT) == {"default", "lab1"}  # far: another hypervisor's local network
        assert await svc.usable(TEACHER) == {"default", "lab1", "lab2"}  # owner: all
        assert await svc.usable(ADMIN) is None
        assert await svc.usable(None) == {"default"}
        assert await svc.may(TEACHER, "lab1", "manage") and not await svc.may(STUDENT, "lab1", "manage")
    finally:
        await store.close()


async def test_mirror_follows_revocations_made_elsewhere(tmp_path):
    svc, store = await service(tmp_path)
    try:
        record = rec("lab1", grants=[("user", STUDENT, "use", True)])
        catalogue.create(tmp_path, record)
        assert "lab1" in await svc.usable(STUDENT)
        record.grants = record.grants[:1]  # another hypervisor revoked the student's grant
        catalogue.write(tmp_path, record)
        assert "lab1" not in await svc.usable(STUDENT)
        assert await store.targets(entity_key("lab1")) == [("user", TEACHER, "all", True)]
    finally:
        await store.close()


async def test_revocation_removes_the_row(tmp_path):
    svc, store = await service(tmp_path)
    try:
        record = rec("lab1")
        catalogue.create(tmp_path, record)
        await svc.set_grant(record, "user", STUDENT, "use", True)
        assert "lab1" in await svc.usable(STUDENT)
        await svc.set_grant(record, "user", STUDENT, "use", False)
        assert ("user", STUDENT, "use", False) not in await store.targets(entity_key("lab1"))
        assert catalogue.read_all(tmp_path)["lab1"].grants == [["user", TEACHER, "all", True]]
    finally:
        await store.close()
