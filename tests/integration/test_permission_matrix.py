"""The permission matrix: every command the agent exposes, three people.

The command list is the agent's own registry (core sets and every installed
feature module), so a new command is covered without touching this file: on
the entity kind that serves it, an admin and a user granted exactly that
command's permission get anything but a permission error, and a stranger gets
Archipel's permission error (namespace ``archipel:error:permission``, code -1).

Requests carry no arguments (a required one then fails with -45 *after* the
permission gate), except ``alloc``, given an invalid name so that it refuses
before allocating.  Destructive VM commands (``free``, ``undefine``) run on
throwaway VMs.
"""
from __future__ import annotations

import pytest

from agent_fixtures import grant
from vm_helpers import alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError

from archipelagent.agent import build_registry
from archipelagent.modules import load_modules

HV_NS = "archipel:hypervisor:control"

# Commands without a declared permission: their handler applies its own rule.
NO_PERMISSION = {
    ("archipel:quota", "usage"): "anyone may read their own usage; another user's (or all) needs quota_usage",
}

# Arguments that keep a command from changing shared state when it is allowed.
SAFE_ATTRS = {
    (HV_NS, "alloc"): {"name": "!not a valid name"},
}

# Run on a fresh VM for each allowed caller (they destroy the VM they run on).
DESTRUCTIVE_VM = {("archipel:vm:control", "free"), ("archipel:vm:definition", "undefine")}


def registry():
    return build_registry(load_modules())


def commands_for(kind: str):
    return [c for c in registry().for_kind(kind) if c.permission is not None]


def test_every_command_without_permission_is_explained():
    unchecked = {(c.namespace, c.action) for kind in ("hypervisor", "vm")
                 for c in registry().for_kind(kind) if c.permission is None}
    assert unchecked == set(NO_PERMISSION), "add a reason to NO_PERMISSION (or declare a permission)"


async def call(client, to: str, command) -> AcpError | None:
    """The error reply of one request (None when it succeeded)."""
    try:
        await client.acp(to, command.namespace, command.action, SAFE_ATTRS.get((command.namespace, command.action), {}),
                         timeout=20)
    except AcpError as exc:
        return exc
    return None


def assert_denied(error: AcpError | None, command, who: str) -> None:
    assert error is not None, f"{who} was allowed {command.namespace} {command.action}"
    assert error.is_permission_error and error.code == -1 and error.condition == "forbidden", \
        (command.namespace, command.action, error)


def assert_allowed(error: AcpError | None, command, who: str) -> None:
    assert error is None or not error.is_permission_error, (who, command.namespace, command.action, error)


async def test_hypervisor_matrix(agent, admin, new_user):
    stranger, granted = await new_user("mxstranger"), await new_user("mxgranted")
    hv = agent.full_jid
    for command in commands_for("hypervisor"):
        assert_denied(await call(stranger, hv, command), command, "stranger")
        await grant(admin, hv, granted.jid, command.permission)
        try:
            assert_allowed(await call(granted, hv, command), command, "granted user")
        finally:
            await grant(admin, hv, granted.jid, command.permission, value=False)
        assert_denied(await call(granted, hv, command), command, "user after revocation")
        assert_allowed(await call(admin, hv, command), command, "admin")


async def _new_vm(agent, admin) -> str:
    full = vm_full(await alloc(admin, agent.full_jid, unique_name("mx")), agent.jid)
    await wait_vm_ready(admin, full)
    return full


async def test_vm_matrix(agent, admin, new_user):
    stranger, granted = await new_user("mxvmstranger"), await new_user("mxvmgranted")
    shared = await _new_vm(agent, admin)
    throwaway = []
    try:
        for command in commands_for("vm"):
            destructive = (command.namespace, command.action) in DESTRUCTIVE_VM
            assert_denied(await call(stranger, shared, command), command, "stranger")
            target = await _new_vm(agent, admin) if destructive else shared
            throwaway += [target] if destructive else []
            await grant(admin, target, granted.jid, command.permission)
            try:
                assert_allowed(await call(granted, target, command), command, "granted user")
            finally:
                if not destructive:
                    await grant(admin, target, granted.jid, command.permission, value=False)
            if not destructive:
                assert_denied(await call(granted, target, command), command, "user after revocation")
            target = await _new_vm(agent, admin) if destructive else shared
            throwaway += [target] if destructive else []
            assert_allowed(await call(admin, target, command), command, "admin")
    finally:
        for full in [shared, *throwaway]:
            try:
                await admin.acp(agent.full_jid, HV_NS, "free", {"jid": full.split("/")[0]})
            except AcpError:
                pass  # already freed by the command under test


async def test_commands_without_permission_still_guard_others(agent, admin, new_user):
    stranger, reader = await new_user("mxself"), await new_user("mxreader")
    hv = agent.full_jid
    # getown (permission_getown, held by those who see the entity): oneself yes, someone else no
    await grant(admin, hv, stranger.jid, "presence")
    await stranger.acp(hv, "archipel:permissions", "getown")
    with pytest.raises(AcpError) as err:
        await stranger.acp(hv, "archipel:permissions", "getown", {"permission_target": admin.jid})
    assert err.value.is_permission_error
    # usage: oneself yes, someone else or everyone only with quota_usage
    await stranger.acp(hv, "archipel:quota", "usage")
    await stranger.acp(hv, "archipel:quota", "usage", {"target": stranger.jid})
    for attrs in ({"target": reader.jid}, {"all": "1"}):
        with pytest.raises(AcpError) as err:
            await stranger.acp(hv, "archipel:quota", "usage", attrs)
        assert err.value.is_permission_error, attrs
    await grant(admin, hv, reader.jid, "quota_usage")
    await reader.acp(hv, "archipel:quota", "usage", {"target": stranger.jid})
    await reader.acp(hv, "archipel:quota", "usage", {"all": "1"})
