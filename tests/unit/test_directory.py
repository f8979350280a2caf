"""Directory: which JIDs are looked up, caching (positive and negative), failures.

The LDAP round trip itself is replaced by a stub here; the real slapd is
exercised in tests/integration/test_ldap_groups.py.
"""
from __future__ import annotations

import asyncio

import pytest

from archipelagent.config import LdapConfig
from archipelagent.directory import Directory, DirectoryUnavailable, DirectoryUser
from archipelagent.errors import Unavailable


def config(ttl: float = 60) -> LdapConfig:
    return LdapConfig(
        uri="ldap://127.0.0.1:1", bind_dn="cn=admin,dc=archipel,dc=test", bind_password="hunter2",
        base_dn="dc=archipel,dc=test", user_base="ou=people,dc=archipel,dc=test",
        user_filter="(objectClass=inetOrgPerson)", uid_attribute="uid",
        group_base="ou=groups,dc=archipel,dc=test", group_filter="(objectClass=groupOfNames)",
        group_member_attribute="member", admin_groups=frozenset({"admins"}),
        cache_ttl=ttl, timeout=1)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stubbed(ttl: float = 60, down: bool = False):
    clock = Clock()
    directory = Directory(config(ttl), "Archipel.test", clock=clock)
    calls = []

    def lookup(uid):
        calls.append(uid)
        if directory.down:
            raise DirectoryUnavailable("ldap://127.0.0.1:1: Connection refused")
        if uid == "student1":
            return DirectoryUser("student1", "uid=student1,ou=people,dc=archipel,dc=test",
                                 "Sam Student", "student1@archipel.test", frozenset({"students"}))
        return None

    directory.down = down
    directory._lookup = lookup
    return directory, calls, clock


@pytest.mark.asyncio
async def test_only_jids_of_the_domain_are_looked_up():
    directory, calls, _ = stubbed()
    try:
        assert directory.uid_of("Student1@ARCHIPEL.test/laptop") == "student1"
        for jid in ("student1@other.test", "archipel.test", "@archipel.test", "x" * 300 + "@archipel.test"):
            assert await directory.resolve(jid) is None
        assert calls == []
    finally:
        await directory.close()


@pytest.mark.asyncio
async def test_a_federated_domain_maps_to_the_same_person():
    """ldap_federated_domains: the campus server's users are the directory's people."""
    from dataclasses import replace
    directory = Directory(replace(config(), federated_domains=frozenset({"campus.test"})), "archipel.test")
    directory._lookup = lambda uid: (DirectoryUser(uid, f"uid={uid},ou=people,dc=archipel,dc=test", "", "",
                                                   frozenset({"students"})) if uid == "student1" else None)
    try:
        assert directory.uid_of("student1@campus.test/phone") == "student1"
        assert (await directory.groups("Student1@Campus.test")) == {"students"}
        assert directory.uid_of("student1@elsewhere.test") is None   # only the listed domains
        assert directory.uid_of("student1@sub.campus.test") is None
    finally:
        await directory.close()


@pytest.mark.asyncio
async def test_positive_and_negative_answers_are_cached_for_the_ttl():
    directory, calls, clock = stubbed(ttl=60)
    try:
        assert (await directory.groups("student1@archipel.test")) == {"students"}
        assert (await directory.resolve("Student1@archipel.test/web")).uid == "student1"
        assert await directory.resolve("nobody@archipel.test") is None
        assert await directory.resolve("nobody@archipel.test") is None
        assert calls == ["student1", "nobody"]
        clock.now += 61
        await directory.resolve("student1@archipel.test")
        assert calls == ["student1", "nobody", "student1"]
        directory.invalidate("nobody@archipel.test")
        await directory.resolve("nobody@archipel.test")
        assert calls[-1] == "nobody"
    finally:
        await directory.close()


@pytest.mark.asyncio
async def test_ttl_zero_disables_the_cache():
    directory, calls, _ = stubbed(ttl=0)
    try:
        await directory.resolve("student1@archipel.test")
        await directory.resolve("student1@archipel.test")
        assert calls == ["student1", "student1"]
    finally:
        await directory.close()


@pytest.mark.asyncio
async def test_concurrent_lookups_of_one_user_share_the_round_trip():
    directory, calls, _ = stubbed()
    try:
        users = await asyncio.gather(*(directory.resolve("student1@archipel.test") for _ in range(5)))
        assert {user.uid for user in users} == {"student1"}
        assert calls == ["student1"]
    finally:
        await directory.close()


@pytest.mark.asyncio
async def test_unreachable_is_an_error_never_cached_and_fails_fast():
    directory, calls, clock = stubbed(down=True)
    try:
        with pytest.raises(DirectoryUnavailable, match="LDAP is unreachable") as caught:
            await directory.resolve("student1@archipel.test")
        assert isinstance(caught.value, Unavailable) and caught.value.code == -48
        assert "hunter2" not in str(caught.value)
        with pytest.raises(DirectoryUnavailable):  # within the fail-fast window: no new attempt
            await directory.resolve("student1@archipel.test")
        assert calls == ["student1"]
        assert not await directory.ping()
        directory.down = False
        clock.now += 2
        assert (await directory.resolve("student1@archipel.test")).groups == {"students"}
    finally:
        await directory.close()


def test_repr_hides_the_bind_password():
    directory = Directory(config(), "archipel.test")
    assert "hunter2" not in repr(directory) and "hunter2" not in repr(directory.config)
    directory._executor.shutdown(wait=False)
