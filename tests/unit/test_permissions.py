"""Permission store on disk and the center's check order, defaults and setown rules."""
from __future__ import annotations

import sqlite3
import stat

import pytest
import pytest_asyncio

from archipelagent.errors import NotFound, PermissionDenied
from archipelagent.permissions import (
    CORE_PERMISSIONS,
    Permission,
    PermissionCenter,
    PermissionStore,
    bare,
)

HV = "hypervisor@archipel.test"
VM = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9@archipel.test"
ADMIN = "admin@archipel.test"
ALICE = "alice@archipel.test"
BOB = "bob@archipel.test"

CORE_NAMES = {
    "all", "presence", "message", "permission_get", "permission_getown", "permission_list",
    "permission_set", "permission_setown", "subscription_add", "subscription_remove",
}


@pytest_asyncio.fixture
async def store(tmp_path):
    store = await PermissionStore.open(tmp_path / "state" / "permissions.sqlite3")
    yield store
    await store.close()


@pytest_asyncio.fixture
async def center(store):
    center = PermissionCenter(store, ["Admin@Archipel.test"])
    center.declare("vm", Permission("start", "Start the VM"))
    center.declare("vm", Permission("screenshot", "See the screen", default=True))
    center.declare("hypervisor", Permission("alloc", "Create a VM"))
    return center


def rows(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM grants").fetchall()


def test_bare_strips_resource_and_case():
    assert bare(" Alice@Archipel.Test/Laptop ") == "alice@archipel.test"
    assert bare("archipel.test") == "archipel.test"
    with pytest.raises(ValueError):
        bare("/resource")


# -- store ----------------------------------------------------------------------

@pytest.mark.asyncio
async def test_store_file_is_private_and_in_wal_mode(store):
    assert store.path.parent.is_dir()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.asyncio
async def test_store_tightens_an_existing_file(tmp_path):
    path = tmp_path / "p.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    store = await PermissionStore.open(path)
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.asyncio
async def test_store_upsert_revoke_and_normalisation(store):
    await store.set_grant(VM.upper(), "Alice@Archipel.test/web", "start", True)
    await store.set_grant(VM, ALICE, "start", False)
    await store.set_grant(VM, ALICE, "presence", True)
    assert await store.grants(VM, ALICE) == {"start": False, "presence": True}
    await store.revoke(VM, ALICE + "/phone", "start")
    assert await store.grants(VM, ALICE) == {"presence": True}
    assert await store.grants(VM, BOB) == {}
    assert rows(store.path) == [(VM, "user", ALICE, "presence", 1)]


@pytest.mark.asyncio
async def test_store_target_types_are_separate(store):
    await store.set_grant(VM, "students", "start", True, target_type="group")
    await store.set_grant(VM, ALICE, "message", True)
    assert await store.grants(VM, "students") == {}
    assert await store.grants(VM, "students", target_type="group") == {"start": True}
    assert await store.targets(VM) == [
        ("group", "students", "start", True),
        ("user", ALICE, "message", True),
    ]


@pytest.mark.asyncio
async def test_store_persists_across_reopen(tmp_path):
    path = tmp_path / "p.sqlite3"
    store = await PermissionStore.open(path)
    await store.set_grant(HV, ALICE, "alloc", True)
    await store.close()
    store = await PermissionStore.open(path)
    try:
        assert await store.grants(HV, ALICE) == {"alloc": True}
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_delete_entity_leaves_no_rows(store):
    await store.set_grant(VM, ALICE, "start", True)
    await store.set_grant(VM, BOB, "message", True, target_type="user")
    await store.set_grant(VM, "students", "start", True, target_type="group")
    await store.set_grant(HV, ALICE, "alloc", True)
    await store.delete_entity(VM.upper() + "/res")
    assert await store.targets(VM) == []
    assert rows(store.path) == [(HV, "user", ALICE, "alloc", 1)]


# -- catalogue ------------------------------------------------------------------

def test_core_permissions_default_to_false():
    assert {permission.name for permission in CORE_PERMISSIONS} == CORE_NAMES
    assert not any(permission.default for permission in CORE_PERMISSIONS)
    assert all(permission.description for permission in CORE_PERMISSIONS)


@pytest.mark.asyncio
async def test_catalogue_per_kind(center):
    vm_names = [permission.name for permission in center.catalogue("vm")]
    assert vm_names == sorted(CORE_NAMES | {"start", "screenshot"})
    hv_names = {permission.name for permission in center.catalogue("hypervisor")}
    assert hv_names == CORE_NAMES | {"alloc"}


@pytest.mark.asyncio
async def test_declare_twice_keeps_the_first(center):
    center.declare("vm", Permission("start", "Another description", default=True))
    start = [p for p in center.catalogue("vm") if p.name == "start"]
    assert start == [Permission("start", "Start the VM")]


# -- check order ----------------------------------------------------------------

@pytest.mark.asyncio
async def test_admin_may_do_anything(center):
    assert await center.check(VM, "vm", ADMIN + "/laptop", "start")
    assert await center.check(VM, "vm", "ADMIN@archipel.test", "not_declared")
    assert await center.effective(VM, "vm", ADMIN) == {p.name for p in center.catalogue("vm")}


@pytest.mark.asyncio
async def test_is_admin_can_be_extended(store):
    class LdapCenter(PermissionCenter):
        async def is_admin(self, user: str) -> bool:
            return bare(user) == BOB or await super().is_admin(user)

    center = LdapCenter(store, [ADMIN])
    assert await center.check(VM, "vm", BOB, "message")
    assert await center.check(VM, "vm", ADMIN, "message")
    assert not await center.check(VM, "vm", ALICE, "message")


@pytest.mark.asyncio
async def test_all_grants_everything_on_that_entity_only(center):
    await center.set_permission(VM, "vm", ALICE, "all", True)
    await center.set_permission(VM, "vm", ALICE, "start", False)
    assert await center.check(VM, "vm", ALICE, "start")
    assert await center.check(VM, "vm", ALICE, "not_declared")
    assert not await center.check(HV, "hypervisor", ALICE, "alloc")
    assert await center.effective(VM, "vm", ALICE) == {p.name for p in center.catalogue("vm")}


@pytest.mark.asyncio
async def test_unknown_permission_is_denied_even_with_a_row(center, store):
    await store.set_grant(VM, ALICE, "ghost", True)
    assert not await center.check(VM, "vm", ALICE, "ghost")


@pytest.mark.asyncio
async def test_explicit_row_decides(center):
    assert not await center.check(VM, "vm", ALICE, "start")
    await center.set_permission(VM, "vm", ALICE, "start", True)
    assert await center.check(VM, "vm", "alice@ARCHIPEL.test/phone", "start")
    assert not await center.check(VM, "vm", BOB, "start")
    assert not await center.check(HV, "vm", ALICE, "start")


@pytest.mark.asyncio
async def test_defaults_apply_per_permission(center):
    assert await center.check(VM, "vm", ALICE, "screenshot")
    # Archipel's bug: a first grant switched every default off.
    await center.set_permission(VM, "vm", ALICE, "start", True)
    assert await center.check(VM, "vm", ALICE, "screenshot")
    await center.set_permission(VM, "vm", ALICE, "screenshot", False)
    assert not await center.check(VM, "vm", ALICE, "screenshot")
    assert await center.check(VM, "vm", BOB, "screenshot")
    assert await center.effective(VM, "vm", ALICE) == {"start"}
    assert await center.effective(VM, "vm", BOB) == {"screenshot"}


@pytest.mark.asyncio
async def test_require(center):
    await center.require(VM, "vm", ADMIN, "start")
    with pytest.raises(PermissionDenied) as caught:
        await center.require(VM, "vm", ALICE, "start")
    assert caught.value.action == "start"
    with pytest.raises(PermissionDenied) as caught:
        await center.require(VM, "vm", ALICE, "start", action="archipel:vm:control/start")
    assert caught.value.action == "archipel:vm:control/start"


# -- set_permission -------------------------------------------------------------

@pytest.mark.asyncio
async def test_set_unknown_permission_is_not_found(center):
    with pytest.raises(NotFound, match="ghost"):
        await center.set_permission(VM, "vm", ALICE, "ghost", True)
    with pytest.raises(NotFound):
        await center.set_permission(HV, "hypervisor", ALICE, "start", True)


@pytest.mark.asyncio
async def test_set_false_keeps_the_table_small(center, store):
    await center.set_permission(VM, "vm", ALICE, "start", True)
    assert await center.explicit(VM, ALICE) == {"start": True}
    await center.set_permission(VM, "vm", ALICE, "start", False)
    assert await store.grants(VM, ALICE) == {}
    await center.set_permission(VM, "vm", ALICE, "screenshot", False)
    assert await store.grants(VM, ALICE) == {"screenshot": False}


# -- setown ---------------------------------------------------------------------

@pytest.mark.asyncio
async def test_setown_refuses_another_target(center):
    await center.set_permission(VM, "vm", ALICE, "start", True)
    with pytest.raises(PermissionDenied, match="bob@archipel.test"):
        await center.check_setown(VM, "vm", ALICE, [(BOB, "start", True)])
    with pytest.raises(PermissionDenied):
        await center.check_setown(VM, "vm", ALICE, [(ALICE, "start", False),
                                                    (BOB, "start", False)])


@pytest.mark.asyncio
async def test_setown_refuses_granting_all(center):
    await center.set_permission(VM, "vm", ALICE, "all", True)
    with pytest.raises(PermissionDenied, match="'all'"):
        await center.check_setown(VM, "vm", ALICE, [(ALICE, "all", True)])
    with pytest.raises(PermissionDenied):
        await center.check_setown(VM, "vm", ADMIN, [(ADMIN, "all", True)])


@pytest.mark.asyncio
async def test_setown_refuses_what_the_sender_lacks(center):
    with pytest.raises(PermissionDenied, match="start"):
        await center.check_setown(VM, "vm", ALICE, [(ALICE, "start", True)])
    with pytest.raises(PermissionDenied):
        await center.check_setown(VM, "vm", ALICE, [(ALICE, "ghost", True)])


@pytest.mark.asyncio
async def test_setown_allows_revoking_and_regranting_held(center):
    await center.set_permission(VM, "vm", ALICE, "start", True)
    await center.check_setown(VM, "vm", ALICE + "/web", [
        ("Alice@archipel.test", "start", True),
        (ALICE, "screenshot", True),  # held through its default
        (ALICE, "start", False),
        (ALICE, "all", False),
        (ALICE, "permission_set", False),
    ])


# -- groups and roles -------------------------------------------------------------

from archipelagent.directory import DirectoryUnavailable  # noqa: E402

STUDENT = "student1@archipel.test"
TEACHER = "teacher1@archipel.test"
BOSS = "boss@archipel.test"


class FakeDirectory:
    """Group membership by bare JID; ``down`` makes every lookup fail like a dead slapd."""

    def __init__(self, members: dict[str, set[str]]):
        self.members = members
        self.down = False
        self.lookups = 0

    async def groups(self, jid: str) -> frozenset[str]:
        self.lookups += 1
        if self.down:
            raise DirectoryUnavailable("ldap://127.0.0.1:1: Connection refused")
        return frozenset(self.members.get(bare(jid), set()))


@pytest.fixture
def directory():
    return FakeDirectory({STUDENT: {"Students"}, TEACHER: {"teachers"}, BOSS: {"admins"},
                          ALICE: {"students"}})


@pytest_asyncio.fixture
async def ldap_center(store, directory):
    center = PermissionCenter(store, [ADMIN], directory=directory, admin_groups=["Admins"])
    center.declare("vm", Permission("start", "Start the VM"))
    center.declare("vm", Permission("stop", "Stop the VM"))
    center.declare("vm", Permission("screenshot", "See the screen", default=True))
    center.declare("hypervisor", Permission("alloc", "Create a VM"))
    center.declare("hypervisor", Permission("capabilities", "Capabilities"))
    return center


@pytest.mark.asyncio
async def test_ldap_admin_group_members_are_admins(ldap_center):
    assert await ldap_center.check(VM, "vm", BOSS, "start")
    assert await ldap_center.check(VM, "vm", BOSS, "not_declared")
    assert await ldap_center.is_admin(BOSS)
    assert not await ldap_center.is_admin(STUDENT)
    assert await ldap_center.effective(HV, "hypervisor", BOSS) == {
        p.name for p in ldap_center.catalogue("hypervisor")}


@pytest.mark.asyncio
async def test_group_grant_allows_members_only(ldap_center):
    await ldap_center.set_permission(HV, "hypervisor", "students", "alloc", True, "group")
    assert await ldap_center.check(HV, "hypervisor", STUDENT + "/web", "alloc")  # cn is case-insensitive
    assert not await ldap_center.check(HV, "hypervisor", TEACHER, "alloc")
    assert not await ldap_center.check(HV, "hypervisor", STUDENT, "capabilities")
    assert not await ldap_center.check(VM, "vm", STUDENT, "start")  # per entity


@pytest.mark.asyncio
async def test_revoking_a_group_grant_applies_at_once(ldap_center, directory):
    await ldap_center.set_permission(HV, "hypervisor", "students", "alloc", True, "group")
    assert await ldap_center.check(HV, "hypervisor", STUDENT, "alloc")
    await ldap_center.set_permission(HV, "hypervisor", "students", "alloc", False, "group")
    assert not await ldap_center.check(HV, "hypervisor", STUDENT, "alloc")
    assert await ldap_center.explicit(HV, "students", "group") == {}


@pytest.mark.asyncio
async def test_role_granted_to_a_group(ldap_center):
    await ldap_center.set_role("student", ["alloc", "capabilities", "start"], "Students", ADMIN)
    await ldap_center.set_permission(HV, "hypervisor", "students", "student", True, "role_group")
    assert await ldap_center.check(HV, "hypervisor", STUDENT, "capabilities")
    assert await ldap_center.check(HV, "hypervisor", STUDENT, "alloc")
    assert not await ldap_center.check(HV, "hypervisor", STUDENT, "permission_set")
    assert not await ldap_center.check(HV, "hypervisor", TEACHER, "capabilities")
    # Changing the role changes what it grants, everywhere, at once.
    await ldap_center.set_role("student", ["alloc"])
    assert not await ldap_center.check(HV, "hypervisor", STUDENT, "capabilities")
    await ldap_center.delete_role("student")
    assert not await ldap_center.check(HV, "hypervisor", STUDENT, "alloc")
    assert await ldap_center.explicit(HV, "students", "role_group") == {}


@pytest.mark.asyncio
async def test_role_granted_to_a_user_needs_no_ldap(ldap_center, directory):
    await ldap_center.set_role("teacher", ["capabilities", "permission_get"])
    await ldap_center.set_permission(HV, "hypervisor", TEACHER, "teacher", True, "role_user")
    directory.down = True
    assert await ldap_center.check(HV, "hypervisor", TEACHER, "capabilities")
    with pytest.raises(DirectoryUnavailable):
        await ldap_center.check(HV, "hypervisor", TEACHER, "alloc")


@pytest.mark.asyncio
async def test_all_through_a_group_or_a_role(ldap_center):
    await ldap_center.set_permission(VM, "vm", "teachers", "all", True, "group")
    assert await ldap_center.check(VM, "vm", TEACHER, "start")
    assert await ldap_center.check(VM, "vm", TEACHER, "not_declared")
    await ldap_center.set_role("operator", ["all"])
    await ldap_center.set_permission(HV, "hypervisor", "students", "operator", True, "role_group")
    assert await ldap_center.check(HV, "hypervisor", STUDENT, "alloc")
    # all beats even an explicit user row
    await ldap_center.set_permission(HV, "hypervisor", STUDENT, "alloc", False)
    assert await ldap_center.check(HV, "hypervisor", STUDENT, "alloc")


@pytest.mark.asyncio
async def test_explicit_user_row_beats_group_and_role_grants(ldap_center):
    await ldap_center.set_permission(VM, "vm", "students", "start", True, "group")
    await ldap_center.set_role("viewer", ["stop"])
    await ldap_center.set_permission(VM, "vm", "students", "viewer", True, "role_group")
    await ldap_center.set_permission(VM, "vm", ALICE, "viewer", True, "role_user")
    # An explicit false needs a stored row: screenshot defaults to true, so false is stored.
    await ldap_center.set_permission(VM, "vm", ALICE, "screenshot", False)
    await ldap_center.store.set_grant(VM, ALICE, "start", False)
    await ldap_center.store.set_grant(VM, ALICE, "stop", False)
    assert not await ldap_center.check(VM, "vm", ALICE, "start")
    assert not await ldap_center.check(VM, "vm", ALICE, "stop")
    assert not await ldap_center.check(VM, "vm", ALICE, "screenshot")
    assert await ldap_center.check(VM, "vm", STUDENT, "start")
    assert await ldap_center.check(VM, "vm", STUDENT, "stop")


@pytest.mark.asyncio
async def test_unknown_permission_in_a_group_row_is_denied(ldap_center, store):
    await store.set_grant(VM, "students", "ghost", True, target_type="group")
    assert not await ldap_center.check(VM, "vm", STUDENT, "ghost")


@pytest.mark.asyncio
async def test_ldap_down_refuses_decisions_that_need_groups(ldap_center, directory):
    await ldap_center.set_permission(HV, "hypervisor", "students", "capabilities", True, "group")
    await ldap_center.set_permission(HV, "hypervisor", BOB, "capabilities", True)
    directory.down = True
    with pytest.raises(DirectoryUnavailable, match="LDAP is unreachable"):
        await ldap_center.check(HV, "hypervisor", STUDENT, "capabilities")
    with pytest.raises(DirectoryUnavailable):
        await ldap_center.require(HV, "hypervisor", STUDENT, "capabilities")
    with pytest.raises(DirectoryUnavailable):  # may be an LDAP admin: cannot say no either
        await ldap_center.check(HV, "hypervisor", BOSS, "alloc")
    # Decisions that do not depend on groups still work.
    assert await ldap_center.check(HV, "hypervisor", ADMIN, "alloc")
    assert await ldap_center.check(HV, "hypervisor", BOB, "capabilities")
    assert await ldap_center.check(VM, "vm", STUDENT, "screenshot")  # default true
    directory.down = False
    assert await ldap_center.check(HV, "hypervisor", STUDENT, "capabilities")


@pytest.mark.asyncio
async def test_no_ldap_lookup_when_groups_cannot_matter(store, directory):
    center = PermissionCenter(store, [ADMIN], directory=directory, admin_groups=[])
    center.declare("vm", Permission("start", "Start the VM"))
    directory.down = True
    assert not await center.check(VM, "vm", STUDENT, "start")  # no group grant on VM
    assert directory.lookups == 0
    await center.set_permission(VM, "vm", "students", "start", True, "group")
    with pytest.raises(DirectoryUnavailable):
        await center.check(VM, "vm", STUDENT, "start")


@pytest.mark.asyncio
async def test_effective_includes_groups_and_roles(ldap_center):
    await ldap_center.set_role("student", ["capabilities"])
    await ldap_center.set_permission(HV, "hypervisor", "students", "student", True, "role_group")
    await ldap_center.set_permission(HV, "hypervisor", "students", "alloc", True, "group")
    assert await ldap_center.effective(HV, "hypervisor", STUDENT) == {"alloc", "capabilities"}
    assert await ldap_center.effective(HV, "hypervisor", TEACHER) == set()


@pytest.mark.asyncio
async def test_setown_cannot_copy_group_or_role_rights(ldap_center):
    await ldap_center.set_role("student", ["capabilities"])
    await ldap_center.set_permission(HV, "hypervisor", "students", "student", True, "role_group")
    await ldap_center.set_permission(HV, "hypervisor", "students", "alloc", True, "group")
    await ldap_center.set_permission(HV, "hypervisor", STUDENT, "permission_setown", True)
    for permission in ("capabilities", "alloc"):
        with pytest.raises(PermissionDenied, match=permission):
            await ldap_center.check_setown(HV, "hypervisor", STUDENT, [(STUDENT, permission, True)])
    await ldap_center.check_setown(HV, "hypervisor", STUDENT, [(STUDENT, "permission_setown", True)])


@pytest.mark.asyncio
async def test_role_validation(ldap_center):
    with pytest.raises(NotFound, match="fly"):
        await ldap_center.set_role("pilot", ["fly"])
    from archipelagent.errors import InvalidArgument
    for bad in ("", "a b", "x" * 65, "*)(cn=*", "-dash"):
        with pytest.raises(InvalidArgument):
            await ldap_center.set_role(bad, ["alloc"])
    with pytest.raises(NotFound, match="nobody"):
        await ldap_center.delete_role("nobody")
    with pytest.raises(NotFound, match="ghost"):
        await ldap_center.set_permission(HV, "hypervisor", "students", "ghost", True, "role_group")
    role = await ldap_center.set_role("Teacher", ["alloc", "start", "alloc"], "Staff", "Admin@archipel.test/x")
    assert (role.name, role.permissions, role.creator) == ("teacher", {"alloc", "start"}, ADMIN)
    assert [r.name for r in await ldap_center.roles()] == ["teacher"]


@pytest.mark.asyncio
async def test_roles_persist_and_delete_cascades(tmp_path):
    path = tmp_path / "p.sqlite3"
    store = await PermissionStore.open(path)
    await store.set_role("student", ["alloc", "capabilities"], "Students", ADMIN)
    await store.set_role("empty", [])
    await store.set_grant(HV, "students", "student", True, target_type="role_group")
    await store.set_grant(VM, ALICE, "student", True, target_type="role_user")
    await store.close()
    store = await PermissionStore.open(path)
    try:
        roles = await store.roles()
        assert roles["student"].permissions == {"alloc", "capabilities"}
        assert roles["student"].description == "Students" and roles["empty"].permissions == frozenset()
        assert await store.role_permissions(["STUDENT", "nope"]) == {"student": {"alloc", "capabilities"}}
        rows = await store.rows_for(VM, ALICE.upper())
        assert rows.user_roles == {"student"}
        assert await store.delete_role("student")
        assert not await store.delete_role("student")
        assert await store.targets(HV) == [] and await store.targets(VM) == []
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_rows_for_reads_one_user_and_every_group(store):
    await store.set_grant(VM, ALICE, "start", True)
    await store.set_grant(VM, BOB, "stop", True)
    await store.set_grant(VM, "Students", "start", True, target_type="group")
    await store.set_grant(VM, "teachers", "operator", True, target_type="role_group")
    rows = await store.rows_for(VM, ALICE)
    assert rows.user == {"start": True}
    assert rows.groups == {"students": {"start": True}}
    assert rows.group_roles == {"teachers": {"operator"}}
