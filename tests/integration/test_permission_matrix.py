"""The permission matrix: every command the agent exposes, three people.

The command list is the agent's own registry (core sets and every installed
feature module), so a new command is covered without touching this file: on
the entity kind that serves it, an admin and a user granted exactly that
command's permission are *served*, and a stranger gets Archipel's permission
error (namespace ``archipel:error:permission``, code -1).

"Served" means the handler ran with valid arguments: every request carries
the arguments the command needs (:data:`ARGS`; a command with a required
argument and no entry fails the test), and a missing-argument (-45),
invalid-argument (-46), malformed (-42), unknown-action (-44) or internal
error counts as a failure, so a permission check that passes only because
arguments are missing cannot hide.  Only the state errors a command may
legitimately answer with valid arguments are accepted, listed per command
in :data:`EXPECTED` (e.g. ``resume`` of a VM that is not paused).

Hypervisor actions that name a VM also need the sender's right on that VM
(``VM_PERMISSIONS``): the granted user gets both.  Destructive commands run on
throwaway VMs.
"""
from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest

from agent_fixtures import grant, permission_item
from vm_helpers import CONTROL, alloc, unique_name, vm_full, wait_vm_ready
from xmpp_client import AcpError

from archipelagent.agent import build_registry
from archipelagent.hypervisor.commands import VM_PERMISSIONS
from archipelagent.modules import load_modules

HV_NS = "archipel:hypervisor:control"
PERMS = "archipel:permissions"
QUOTA = "archipel:quota"
SUBS = "archipel:subscription"
DEF = "archipel:vm:definition"
SNAP = "archipel:virtualmachine:snapshoting"
DISK = "archipel:vm:disk"
NET = "archipel:hypervisor:network"
NETWORKS_MADE: list[str] = []  # destroyed and undefined after the hypervisor matrix
OOM = "archipel:vm:oom"
TAGS = "archipel:tags"
SCHED = "archipel:entity:scheduler"
HV_PARK = "archipel:hypervisor:vmparking"
VM_PARK = "archipel:vm:vmparking"
NO_SUCH_VM = str(uuidlib.UUID(int=1))
CLASSES = "archipel:hypervisor:classes"
VM_CLASSES = "archipel:vm:classes"
FAR = {"year": "2099", "month": "1", "day": "1", "hour": "0", "minute": "0", "second": "0"}

# Commands without a declared permission: their handler applies its own rule.
NO_PERMISSION = {
    ("archipel:quota", "usage"): "anyone may read their own usage; another user's (or all) needs quota_usage",
    ("archipel:hypervisor:control", "migrationprepare"): "served to peer hypervisors only, for a requester "
                                                         "holding migrate there (test_multi_hypervisor.py)",
    ("archipel:hypervisor:control", "peerinfo"): "served to peer hypervisors only (test_maintenance.py)",
    ("archipel:hypervisor:control", "harestart"): "served to peer hypervisors only (test_ha_restart.py)",
    ("archipel:hypervisor:classes", "member"): "served to peer hypervisors only, checking the teacher's class_<op> "
                                                "itself (test_classes_multi_hypervisor.py)",
}

# Errors that mean the request never reached a working handler: never "allowed".
NOT_SERVED = {-42, -44, -45, -46}

# State errors a command may answer with valid arguments (the handler ran past the gate and the parsing).
EXPECTED: dict[tuple[str, str], set[int]] = {
    (CONTROL, "create"): {-49},        # already running (the admin's turn after the granted user's)
    (CONTROL, "destroy"): {-49},       # shut off
    (CONTROL, "reboot"): {-49},        # shut off
    (CONTROL, "suspend"): {-49},       # shut off
    (CONTROL, "resume"): {-49},        # not paused
    (CONTROL, "networkinfo"): {-49},   # shut off
    (CONTROL, "migrate"): {-49},       # to its own hypervisor (test_multi_hypervisor.py migrates for real)
    (CONTROL, "cancel"): {-49},        # not migrating (test_migration_guest.py cancels for real)
    (SNAP, "take"): {-49},             # no qcow2 disk to snapshot
    (SNAP, "delete"): {-47},           # no such snapshot
    (SNAP, "revert"): {-47},
    ("archipel:virtualmachine:vnc", "display"): {-49},  # shut off (test_console.py opens real consoles)
    (SCHED, "unschedule"): {-47},      # no such job
    (HV_PARK, "unpark"): {-47},        # no such parked VM (test_parking.py parks and unparks)
    (HV_PARK, "updatexml"): {-47},
    (HV_PARK, "delete"): {-47},
    **{(CLASSES, a): {-47} for a in ("report", "start", "stop", "reset", "delete", "lease")},  # no such class
    (VM_CLASSES, "reset"): {-47},      # in no class (test_classes.py resets and leases for real)
    (VM_CLASSES, "leasewarn"): {-47},
}


@dataclass
class Scene:
    """What a request's arguments may refer to."""

    sender: str
    vm: str = ""                 # bare JID of the VM the command acts on
    domain: ET.Element | None = None
    dummy: str = ""              # a JID nobody uses
    kind: str = ""               # of the entity the request goes to
    names: list = field(default_factory=list)

    @property
    def uuid(self) -> str:
        return self.vm.split("@")[0]

    def name(self, prefix: str) -> str:
        made = unique_name(prefix)
        self.names.append(made)
        return made


def _item(tag: str, **attrs) -> ET.Element:
    return ET.Element(tag, attrs)


def _text(tag: str, text: str) -> ET.Element:
    el = ET.Element(tag)
    el.text = text
    return el


def _disk(s: Scene, prefix: str = "d") -> str:
    return f"{s.name(prefix)}.qcow2"


# (namespace, action) → scene → (attributes, children); the same for the hypervisor and VM kinds.
ARGS = {
    (PERMS, "get"): lambda s: ({"permission_target": s.sender}, []),
    (PERMS, "set"): lambda s: ({}, [permission_item(s.dummy, "presence", False)]),
    (PERMS, "setown"): lambda s: ({}, [permission_item(s.sender, "permission_setown", False)]),
    (PERMS, "setrole"): lambda s: ({"name": s.name("mxrole").lower()}, [_item("permission", name="capabilities")]),
    (PERMS, "delrole"): lambda s: ({"name": s.names[-1]}, []),  # made by PREPARE
    (HV_NS, "alloc"): lambda s: ({"name": s.name("mxalloc")}, []),
    (HV_NS, "free"): lambda s: ({"jid": s.vm}, []),
    (HV_NS, "clone"): lambda s: ({"jid": s.vm, "name": s.name("mxclone")}, []),
    (HV_NS, "manage"): lambda s: ({}, [_item("item", jid=s.vm)]),
    (HV_NS, "unmanage"): lambda s: ({}, [_item("item", jid=s.vm)]),
    (HV_NS, "setorginfo"): lambda s: ({"target": s.uuid}, [_text("ORGUNIT", "matrix")]),
    (QUOTA, "set"): lambda s: ({"target": s.dummy, "vms": "5"}, []),
    (QUOTA, "get"): lambda s: ({"target": s.dummy}, []),
    (SUBS, "add"): lambda s: ({"jid": s.dummy}, []),
    (SUBS, "remove"): lambda s: ({"jid": s.dummy}, []),
    (CONTROL, "autostart"): lambda s: ({"value": "0"}, []),
    (CONTROL, "setha"): lambda s: ({"value": "0"}, []),
    (CONTROL, "migrate"): lambda s: ({"hypervisorjid": f"hypervisor@{s.sender.split('@')[1]}/hv-test"}, []),
    (CONTROL, "memory"): lambda s: ({"value": "131072"}, []),
    (CONTROL, "setvcpus"): lambda s: ({"value": "1"}, []),
    (DEF, "define"): lambda s: ({}, [s.domain]),
    (SNAP, "take"): lambda s: ({"name": s.name("snap")}, []),
    (SNAP, "delete"): lambda s: ({"name": "no-such-snapshot"}, []),
    (SNAP, "revert"): lambda s: ({"name": "no-such-snapshot"}, []),
    # a job on the VM (destroy) or on the hypervisor (free of the VM); its right is given by PREPARE
    (SCHED, "schedule"): lambda s: ({"job": "destroy", **FAR} if s.kind == "vm" else {"job": "free", "param": s.vm, **FAR}, []),
    (SCHED, "unschedule"): lambda s: ({"uid": "no-such-job"}, []),
    (HV_PARK, "park"): lambda s: ({}, [_item("item", uuid=s.uuid)]),
    (HV_PARK, "unpark"): lambda s: ({}, [_item("item", identifier=NO_SUCH_VM)]),
    (HV_PARK, "updatexml"): lambda s: ({}, [_domain_item()]),
    (HV_PARK, "delete"): lambda s: ({}, [_item("item", identifier=NO_SUCH_VM)]),
    # a real provisioning of the students group; each student's VM is refused (no golden image, no alloc
    # right for the granted user) and freed again: the reply lists them as refused
    (CLASSES, "provision"): lambda s: ({"name": f"mx{uuidlib.uuid4().hex[:8]}", "group": "students",
                                        "golden": "no-such-golden", "role": s.names[-1]}, []),
    **{(CLASSES, a): (lambda s: ({"name": "mxnosuchclass"}, [])) for a in ("report", "start", "stop", "reset", "delete")},
    (CLASSES, "lease"): lambda s: ({"name": "mxnosuchclass", "expiry": "+1h"}, []),
    (VM_CLASSES, "leasewarn"): lambda s: ({"expiry": "2099-01-01T00:00:00"}, []),
    (DISK, "create"): lambda s: ({"name": _disk(s), "size": "1", "unit": "M", "format": "qcow2"}, []),
    (DISK, "delete"): lambda s: ({"name": s.names[-1]}, []),
    (DISK, "rename"): lambda s: ({"name": s.names[-1], "newname": _disk(s, "r")}, []),
    (DISK, "resize"): lambda s: ({"name": s.names[-1], "size": "2", "unit": "M"}, []),
    (DISK, "convert"): lambda s: ({"name": s.names[-1], "format": "raw"}, []),
    (DISK, "setgolden"): lambda s: ({"name": s.names[-1], "golden": s.name("gold")}, []),
    (NET, "define"): lambda s: ({}, [_network(s.name("mxnet"))]),
    **{(NET, action): (lambda s: ({"uuid": s.names[-1]}, [])) for action in ("undefine", "create", "destroy")},
    **{(NET, action): (lambda s: ({"network": s.names[-1], "target": s.dummy, "right": "use"}, []))
       for action in ("grant", "revoke")},
    (NET, "grants"): lambda s: ({"network": s.names[-1]}, []),
    (OOM, "setadjust"): lambda s: ({"adjust": "3"}, []),
    (TAGS, "settags"): lambda s: ({"tags": "matrix"}, []),
}


def _network(name: str) -> ET.Element:
    """An isolated network without address (a bridge only: no dnsmasq, no firewall rule)."""
    NETWORKS_MADE.append(name)
    el = ET.Element("network")
    el.append(_text("name", name))
    return el


async def _prepare_role(admin, hv, s: Scene) -> None:
    await admin.acp(hv, PERMS, "setrole", {"name": s.name("mxdel").lower()})
    s.names[-1] = s.names[-1].lower()


async def _prepare_disk(admin, hv, s: Scene) -> None:
    name = _disk(s)
    await admin.acp(vm_full(s.vm, hv.split("/")[0]), DISK, "create", {"name": name, "size": "1", "unit": "M", "format": "qcow2"})
    s.names[-1] = name


def _domain_item() -> ET.Element:
    el = _item("item", identifier=NO_SUCH_VM)
    el.append(_item("domain", type="kvm"))
    return el


async def _prepare_vm_park_right(admin, hv, s: Scene) -> None:
    """Parking from the hypervisor needs vmparking_park on the VM too (the stranger still lacks the hypervisor's)."""
    await grant(admin, vm_full(s.vm, hv.split("/")[0]), s.sender, "vmparking_park")


async def _prepare_job_right(admin, hv, s: Scene) -> None:
    """Scheduling needs the right to do the job too: the caller gets it (a stranger still lacks the scheduler's)."""
    if s.kind == "vm":
        await grant(admin, vm_full(s.vm, hv.split("/")[0]), s.sender, "destroy")
    else:
        await grant(admin, hv, s.sender, "free")
        await grant(admin, vm_full(s.vm, hv.split("/")[0]), s.sender, VM_PERMISSIONS["free"])


async def _prepare_network(admin, hv, s: Scene) -> None:
    """A network the admin defines and lets the requester manage (the network's own right)."""
    name = unique_name("mxnet")
    await admin.acp(hv, NET, "define", children=[_network(name)])
    await admin.acp(hv, NET, "grant", {"network": name, "target": s.sender, "right": "manage"})
    s.names[-1] = name


async def _remove_networks(admin, hv: str) -> None:
    for name in NETWORKS_MADE:
        try:
            await admin.acp(hv, NET, "undefine", {"uuid": name})
        except AcpError:
            pass


# Requests that need something made first (by the admin), per call.
PREPARE = {
    (SCHED, "schedule"): _prepare_job_right,
    (HV_PARK, "park"): _prepare_vm_park_right,
    (CLASSES, "provision"): _prepare_role,
    (PERMS, "delrole"): _prepare_role,
    **{(NET, action): _prepare_network for action in ("undefine", "create", "destroy", "grant", "revoke", "grants")},
    **{(DISK, action): _prepare_disk for action in ("delete", "rename", "resize", "convert", "setgolden")},
}

# Hypervisor actions that remove or adopt the VM they name: a fresh VM for each allowed call.
DESTRUCTIVE_HV = {(HV_NS, "free"), (HV_NS, "unmanage"), (HV_NS, "manage"), (HV_PARK, "park")}
# Run on a fresh VM for each allowed caller (they destroy the VM they run on).
DESTRUCTIVE_VM = {(CONTROL, "free"), (DEF, "undefine"), (VM_PARK, "park")}


def registry():
    return build_registry(load_modules())


def commands_for(kind: str):
    return [c for c in registry().for_kind(kind) if c.permission is not None]


def test_every_command_without_permission_is_explained():
    unchecked = {(c.namespace, c.action) for kind in ("hypervisor", "vm")
                 for c in registry().for_kind(kind) if c.permission is None}
    assert unchecked == set(NO_PERMISSION), "add a reason to NO_PERMISSION (or declare a permission)"


def test_every_command_with_required_arguments_gets_them():
    """A required argument left out would make the matrix pass on a -45 instead of the handler."""
    missing = sorted({(c.namespace, c.action) for kind in ("hypervisor", "vm") for c in commands_for(kind)
                      if any(a.required for a in c.args) and (c.namespace, c.action) not in ARGS})
    assert not missing, f"give valid arguments in ARGS for {missing}"


async def call(client, to: str, command, scene: Scene) -> AcpError | None:
    """The error reply of one request (None when it succeeded)."""
    attrs, children = ARGS.get((command.namespace, command.action), lambda s: ({}, []))(scene)
    try:
        reply = await client.acp(to, command.namespace, command.action, attrs, children=children, timeout=60)
    except AcpError as exc:
        return exc
    scene.names.extend(el.get("jid") for el in reply if el.get("jid") and command.action in ("alloc", "clone"))
    return None


def assert_denied(error: AcpError | None, command, who: str) -> None:
    assert error is not None, f"{who} was allowed {command.namespace} {command.action}"
    assert error.is_permission_error and error.code == -1 and error.condition == "forbidden", \
        (command.namespace, command.action, error)


def assert_served(error: AcpError | None, command, who: str) -> None:
    """Allowed *and* run: success, or a state error this command may give with valid arguments."""
    if error is None:
        return
    key = (command.namespace, command.action)
    assert not error.is_permission_error, (who, key, error)
    assert error.code not in NOT_SERVED and "internal error" not in (error.text or ""), (who, key, error)
    assert error.code in EXPECTED.get(key, set()), (who, key, error)


def test_a_missing_argument_is_not_counted_as_allowed():
    """The matrix's own judge: -45, -46 and internal errors are failures."""
    class Fake(AcpError):
        def __init__(self, code, text="", ns=("archipel:error:generic",)):
            self.code, self.text, self.namespaces, self.condition = code, text, list(ns), "bad-request"

    command = registry().for_kind("hypervisor")[0]
    for error in (Fake(-45), Fake(-46), Fake(-1, "internal error, see the agent log")):
        with pytest.raises(AssertionError):
            assert_served(error, command, "x")
    assert_served(None, command, "x")


async def _free_quietly(admin, hv: str, jids) -> None:
    for jid in jids:
        try:
            await admin.acp(hv, HV_NS, "free", {"jid": jid.split("/")[0]})
        except AcpError:
            pass


async def _new_vm(agent, admin) -> str:
    full = vm_full(await alloc(admin, agent.full_jid, unique_name("mx")), agent.jid)
    await wait_vm_ready(admin, full)
    return full


async def test_hypervisor_matrix(agent, admin, new_user, stack):
    stranger, granted = await new_user("mxstranger"), await new_user("mxgranted")
    hv = agent.full_jid
    shared = await _new_vm(agent, admin)
    made: list[str] = []
    dummy = f"mxdummy-{uuidlib.uuid4().hex[:6]}@{stack.domain}"
    try:
        for command in commands_for("hypervisor"):
            key = (command.namespace, command.action)
            vm_right = VM_PERMISSIONS.get(command.action) if command.namespace == HV_NS else None

            async def target() -> str:
                if key not in DESTRUCTIVE_HV:
                    return shared.split("/")[0]
                fresh = (await _new_vm(agent, admin)).split("/")[0]
                made.append(fresh)
                if key == (HV_NS, "manage"):
                    await admin.acp(hv, HV_NS, "unmanage", children=[_item("item", jid=fresh)])
                return fresh

            async def run(client, who: str, scene_target: str):
                scene = Scene(sender=client.jid, vm=scene_target, dummy=dummy, kind="hypervisor")
                if key in PREPARE:
                    scene.names.append("")
                    await PREPARE[key](admin, hv, scene)
                error = await call(client, hv, command, scene)
                made.extend(n for n in scene.names if "@" in n)
                return error

            assert_denied(await run(stranger, "stranger", shared.split("/")[0]), command, "stranger")
            vm = await target()
            await grant(admin, hv, granted.jid, command.permission)
            if vm_right:  # the hypervisor's right alone does not reach someone else's VM
                assert_denied(await run(granted, "granted user without the VM's right", vm), command, "no VM right")
                await grant(admin, vm_full(vm, agent.jid), granted.jid, vm_right)
            try:
                assert_served(await run(granted, "granted user", vm), command, "granted user")
            finally:
                await grant(admin, hv, granted.jid, command.permission, value=False)
            vm = vm if key not in DESTRUCTIVE_HV else await target()
            assert_denied(await run(granted, "user after revocation", vm), command, "user after revocation")
            assert_served(await run(admin, "admin", vm), command, "admin")
            if key == (HV_NS, "unmanage"):  # back under the agent, to be freed below
                for jid in made:
                    try:
                        await admin.acp(hv, HV_NS, "manage", children=[_item("item", jid=jid)])
                    except AcpError:
                        pass
    finally:
        await _free_quietly(admin, hv, [shared, *made])
        await _remove_networks(admin, hv)


async def _definition(admin, full: str) -> ET.Element:
    desc = (await admin.acp(full, CONTROL, "xmldesc"))[0]
    for el in desc.iter():
        el.tag = el.tag.split("}", 1)[-1]
    return desc


async def test_vm_matrix(agent, admin, new_user, stack):
    stranger, granted = await new_user("mxvmstranger"), await new_user("mxvmgranted")
    shared = await _new_vm(agent, admin)
    dummy = f"mxdummy-{uuidlib.uuid4().hex[:6]}@{stack.domain}"
    throwaway = []
    try:
        for command in commands_for("vm"):
            key = (command.namespace, command.action)
            destructive = key in DESTRUCTIVE_VM

            async def run(client, full: str):
                scene = Scene(sender=client.jid, vm=full.split("/")[0], dummy=dummy, kind="vm",
                              domain=await _definition(admin, full) if key == (DEF, "define") else None)
                if key in PREPARE:
                    scene.names.append("")
                    await PREPARE[key](admin, agent.full_jid, scene)
                return await call(client, full, command, scene)

            assert_denied(await run(stranger, shared), command, "stranger")
            target = await _new_vm(agent, admin) if destructive else shared
            throwaway += [target] if destructive else []
            await grant(admin, target, granted.jid, command.permission)
            try:
                assert_served(await run(granted, target), command, "granted user")
            finally:
                if not destructive:
                    await grant(admin, target, granted.jid, command.permission, value=False)
            if not destructive:
                assert_denied(await run(granted, target), command, "user after revocation")
            target = await _new_vm(agent, admin) if destructive else shared
            throwaway += [target] if destructive else []
            assert_served(await run(admin, target), command, "admin")
    finally:
        await _free_quietly(admin, agent.full_jid, [shared, *throwaway])


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
