"""permission_getown: held by whoever sees the entity (presence), refused to strangers, revocable."""
from __future__ import annotations

import pytest_asyncio

from archipelagent.permissions import PermissionCenter, PermissionStore

VM = "vm@archipel.test"


@pytest_asyncio.fixture
async def center(tmp_path):
    store = await PermissionStore.open(tmp_path / "permissions.sqlite3")
    yield PermissionCenter(store, ["admin@archipel.test"])
    await store.close()


async def test_getown_follows_presence_unless_revoked(center):
    alice, bob, carol = "alice@archipel.test", "bob@archipel.test", "carol@archipel.test"
    assert not await center.check(VM, "virtualmachine", alice, "permission_getown")  # a stranger
    await center.set_permission(VM, "virtualmachine", alice, "presence", True)
    assert await center.check(VM, "virtualmachine", alice, "permission_getown")  # sees it: reads own rights
    assert "permission_getown" in await center.effective(VM, "virtualmachine", alice)
    assert "permission_getown" in await center.own_effective(VM, "virtualmachine", alice)
    await center.set_permission(VM, "virtualmachine", alice, "permission_getown", False)
    assert not await center.check(VM, "virtualmachine", alice, "permission_getown")  # an explicit row decides
    await center.set_permission(VM, "virtualmachine", bob, "all", True)
    assert await center.check(VM, "virtualmachine", bob, "permission_getown")
    await center.set_permission(VM, "virtualmachine", carol, "permission_getown", True)
    assert await center.check(VM, "virtualmachine", carol, "permission_getown")  # granted alone
