"""Classes (issue 14): one VM per member of an LDAP group, from a golden image, for a teacher.

``archipel:hypervisor:classes`` ``provision`` (name, group, golden, role) makes
``{class}-{uid}`` for each member of the LDAP group who has none yet (so a
re-run adds newcomers and reports the others, never duplicates): the VM is
allocated, gets a qcow2 overlay ``root.qcow2`` on the golden image and a
definition using it (with its one NIC on the class's network, if it has one) — every step through ``dispatch.run_command`` *as the
teacher*, so the teacher's permissions, quotas (the VMs are the teacher's:
the class counts against the teacher's quota), the definition policy, the
disk guard and the audit log apply exactly as if the teacher had sent them.
The teacher owns each VM (``all``); the student gets the class role on their
VM only (a ``role_user`` row; a role holding ``all`` is refused).  ``report``
lists each VM, its student, its state and its last change; ``start``,
``stop``, ``reset`` and ``delete`` act on the whole class; ``archipel:vm:classes
reset`` is the student's (or teacher's) reset of one VM: the overlay is
re-created on the golden image and the definition recorded at provisioning
restored, refused while the VM runs unless ``force=yes``.  Classes and their
members live in ``classes.sqlite3`` of this hypervisor (``archipelagent/classes/store.py``);
leases are scheduler jobs (``archipelagent/classes/leases.py``).  With peer hypervisors the new
VMs are spread over them, each made and then acted on by its own hypervisor through the
peers-only ``member`` request, checked there as the teacher (``archipelagent/classes/remote.py``).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from archipelagent.commands import Arg, CommandSet, element
from archipelagent.errors import (ArchipelError, Conflict, InvalidArgument, LibvirtFailure, NotFound, PermissionDenied,
                                  Unavailable)
from archipelagent.permissions.store import ROLE_USER
from archipelagent.classes.leases import duration, durations, parse_expiry, iso, drop_lease, plan_lease
from archipelagent.classes import remote
from archipelagent.classes.store import Classes
from archipelagent.hypervisor.peers import is_peer
from archipelagent.permissions.store import bare
from archipelagent.values import parse_yes as bool_yes, validate_name

log = logging.getLogger(__name__)

NS = "archipel:hypervisor:classes"
VM_NS = "archipel:vm:classes"
HV_CONTROL = "archipel:hypervisor:control"
VM_CONTROL = "archipel:vm:control"
DEFINITION = "archipel:vm:definition"
DISK = "archipel:vm:disk"
TRANSPORT = "classes"
PARALLEL = 8  # VMs a class action works on at once (QEMU starts and qemu-img mostly wait)
ROOT_DISK = "root.qcow2"
CLASS_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_BLOCKED: "running",
          libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
          libvirt.VIR_DOMAIN_SHUTOFF: "off", libvirt.VIR_DOMAIN_CRASHED: "crashed"}


async def _each_bounded(items: list, work) -> list:
    """``work(item)`` for every item, at most PARALLEL at once; results in the items' order."""
    gate = asyncio.Semaphore(PARALLEL)

    async def one(item):
        async with gate:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


def store(agent) -> Classes:
    found = agent.module_services.get("classes")
    if found is None:
        raise Unavailable("the classes module is not set up")
    return found


async def setup(agent) -> None:
    svc = Classes(Path(agent.config.lib_dir) / "classes.sqlite3")
    await svc.open()
    agent.module_services["classes"] = svc


async def teardown(agent) -> None:
    svc = agent.module_services.pop("classes", None)
    if svc is not None:
        await svc.close()


commands = CommandSet()


# ------------------------------------------------------------------ acting as the teacher
async def act(agent, entity, namespace: str, action: str, sender: str, raw: dict):
    """One step through the one dispatch path, as ``sender`` (permission, quota, policy, audit)."""
    from archipelagent.commands.dispatch import run_command
    command = agent.registry.lookup(entity.kind, namespace, action)
    if command is None:
        raise Unavailable(f"{namespace} {action} is not served here (is its module on?)")
    return await run_command(entity, command, sender, raw, TRANSPORT)


def _with_network(root: ET.Element, network: str) -> ET.Element:
    """The definition with one NIC, on ``network`` (any other NIC removed; libvirt picks the MAC,
    the definition policy adds the anti-spoofing filter)."""
    devices = root.find("devices")
    for iface in list(devices.findall("interface")):
        devices.remove(iface)
    iface = ET.SubElement(devices, "interface", {"type": "network"})
    ET.SubElement(iface, "source", {"network": network})
    ET.SubElement(iface, "model", {"type": "virtio"})
    return root


async def _check_network(agent, network: str, teacher: str) -> None:
    """Before any VM is made: the network exists here and the teacher (the VMs' owner) may use it.

    Each definition is still checked by the definition policy as the teacher's; this only
    turns a per-student refusal into one clear error.
    """
    networks = agent.module_services.get("network")  # modules/network.py: rights per network
    try:
        if networks is not None:
            await networks.sync()  # a class network defined on another hypervisor gets its half here first
            await networks.lookup(network)
        else:
            await agent.libvirt.call("networkLookupByName", network)
    except LibvirtFailure as exc:
        if exc.code == libvirt.VIR_ERR_NO_NETWORK:
            raise NotFound(f"no network named '{network}' on this hypervisor") from None
        raise
    usable = await networks.usable(teacher) if networks is not None else agent.config.vm.allowed_networks
    if usable is not None and network not in usable:
        raise PermissionDenied("provision", f"'use' on network '{network}' is needed by {teacher}, who owns the "
                                            "class's VMs (its manager grants it: archipel:hypervisor:network grant)")


def _with_root_disk(xml: str, path: Path) -> ET.Element:
    """The VM's definition with the overlay as its first disk (replacing any disk on vda)."""
    root = ET.fromstring(xml)
    devices = root.find("devices")
    for disk in list(devices.findall("disk")):
        target = disk.find("target")
        if target is not None and target.get("dev") == "vda":
            devices.remove(disk)
    disk = ET.Element("disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(disk, "source", {"file": str(path)})
    ET.SubElement(disk, "target", {"dev": "vda", "bus": "virtio"})
    devices.insert(0, disk)
    return root


async def _inactive_xml(agent, uuid: str) -> str:
    dom = await agent.libvirt.lookup(uuid)
    return await agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)


async def _require_teacher(agent, cls: dict, user: str) -> None:
    if cls["teacher"] != user and not await agent.permissions.is_admin(user):
        raise PermissionDenied("class", f"class {cls['name']} is {cls['teacher']}'s")


async def _class(ctx, name: str) -> dict:
    cls = await store(ctx.agent).get(name)
    if cls is None:
        raise NotFound(f"no class named {name!r}")
    await _require_teacher(ctx.agent, cls, ctx.sender_bare)
    return cls


def _class_name(value: str) -> str:
    value = (value or "").strip().lower()
    if not CLASS_NAME.match(value):
        raise ValueError("1-32 of a-z, 0-9, '_', '-', starting with a letter or digit")
    return value


async def _check_role(agent, role: str) -> None:
    for found in await agent.permissions.roles():
        if found.name == role:
            if "all" in found.permissions:
                raise InvalidArgument("role", f"role {role!r} holds 'all': students get a role's rights, never all")
            return
    raise InvalidArgument("role", f"no role named {role!r}")


# ------------------------------------------------------------------ provisioning
async def provision_member(agent, cls: dict, uid: str) -> dict:
    """One student's VM: alloc, overlay on the golden image, definition, the student's role."""
    name = validate_name(f"{cls['name']}-{uid}")
    teacher, hv = cls["teacher"], agent.hypervisor
    reply = await act(agent, hv, HV_CONTROL, "alloc", teacher, {"name": name})
    jid = reply[0].get("jid") if isinstance(reply, list) else reply.get("jid")
    entity = agent.vms.get(jid)
    try:
        await act(agent, entity, DISK, "create", teacher, {"name": ROOT_DISK.split(".")[0], "golden": cls["golden"]})
        definition = _with_root_disk(await _inactive_xml(agent, entity.uuid), agent.vms.folder(entity.uuid) / ROOT_DISK)
        if cls.get("network"):
            definition = _with_network(definition, cls["network"])
        await act(agent, entity, DEFINITION, "define", teacher, {"domain": definition})
        student = f"{uid}@{agent.config.domain}"
        await agent.permissions.set_permission(entity.jid, "vm", student, cls["role"], True, target_type=ROLE_USER)
        await store(agent).add_member(cls["name"], uid, entity.uuid, await _inactive_xml(agent, entity.uuid))
    except BaseException:
        try:  # a half-made VM is not left behind: the next run makes it again
            await act(agent, hv, HV_CONTROL, "free", teacher, {"jid": entity.jid})
        except Exception as exc:  # noqa: BLE001
            log.warning("class %s: could not free the half-made VM %s: %s", cls["name"], name, exc)
        raise
    return {"uid": uid, "jid": entity.jid, "name": name}


def _render_provision(payload) -> str:
    return "\n".join(f"{v.get('student')}: {v.get('status')} {v.get('name') or ''} {v.get('error') or ''}".rstrip()
                     for v in payload) or "The group has no members."



@commands.command(NS, "provision", kinds=("hypervisor",), permission="class_provision",
                  permission_description="Create classes: one VM per member of an LDAP group",
                  args=(Arg("name", parse=_class_name, help="the class name (VMs are named <class>-<uid>)"),
                        Arg("group", required=False, help="LDAP group cn (first run)"),
                        Arg("golden", required=False, help="golden image name (first run)"),
                        Arg("role", required=False, help="role the students get on their VM (first run)"),
                        Arg("network", parse=lambda v: validate_name(v.strip(), "network"), required=False,
                            help="the network of each VM's NIC (first run; the teacher needs 'use' on it)")),
                  chat=("class provision",), help="make a VM for every member of the class's LDAP group who has none",
                  chat_render=_render_provision)
async def provision(ctx, name, group, golden, role, network):
    agent, classes = ctx.agent, store(ctx.agent)
    if agent.directory is None:
        raise Unavailable("classes need the LDAP directory ([LDAP])")
    async with classes.lock(name):
        return await _provision(ctx, name, group, golden, role, network)


async def _provision(ctx, name, group, golden, role, network):
    agent, classes = ctx.agent, store(ctx.agent)
    cls = await classes.get(name)
    if cls is None:
        for arg, value in (("group", group), ("golden", golden), ("role", role)):
            if not value:
                raise InvalidArgument(arg, f"a new class needs its {arg}")
        await _check_role(agent, role)
        validate_name(golden, "golden")
        if network:
            await _check_network(agent, network, ctx.sender_bare)
        await classes.add(name, group, golden, role, ctx.sender_bare, network)
        cls = await classes.get(name)
    else:
        await _require_teacher(agent, cls, ctx.sender_bare)
        for arg, value in (("group", group), ("golden", golden), ("role", role), ("network", network)):
            if value and value != cls[arg]:
                raise Conflict(f"class {name} has {arg} {cls[arg]!r}; delete it to change that")
        if cls.get("network"):  # the teacher may have lost the right since: no newcomer is made then
            await _check_network(agent, cls["network"], cls["teacher"])
    try:
        uids = await agent.directory.members(cls["group"])
    except Exception as exc:  # DirectoryUnavailable and friends
        raise Unavailable(f"LDAP: {exc}") from None
    existing = {m["uid"]: m for m in await classes.members(name)}
    where, nowhere = await remote.plan(agent, [uid for uid in uids if uid not in existing])

    async def one(uid: str) -> ET.Element:
        if uid in existing:
            member = existing[uid]
            if member["hypervisor"]:  # made on a peer: that hypervisor answers for it (report)
                return element("vm", {"student": uid, "status": "existing", "jid": agent.vms.jid_for(member["uuid"]),
                                      "name": f"{name}-{uid}", "hypervisor": member["hypervisor"]})
            vm = agent.vms.entities.get(member["uuid"])
            return element("vm", {"student": uid, "status": "existing" if vm else "missing",
                                  "jid": vm.jid if vm else None, "name": vm.name if vm else None})
        if uid in nowhere:
            return element("vm", {"student": uid, "status": "refused", "error": nowhere[uid], "code": Conflict.code})
        try:
            if where.get(uid):
                made = await _provision_on_peer(agent, cls, uid, where[uid])
            else:
                made = await provision_member(agent, cls, uid)
                if cls.get("expiry"):
                    await plan_lease(agent, cls, made["jid"])
        except ArchipelError as exc:  # one refused student (quota, name) does not stop the others
            return element("vm", {"student": uid, "status": "refused", "error": exc.message, "code": exc.code})
        return element("vm", {"student": uid, "status": "created", "jid": made["jid"], "name": made["name"],
                              "hypervisor": made.get("hypervisor")})

    return await _each_bounded(uids, one)


def _class_attrs(cls: dict) -> dict:
    """What a peer needs to keep its own row of the class."""
    return {"name": cls["name"], "teacher": cls["teacher"], "group": cls["group"], "golden": cls["golden"],
            "role": cls["role"], "network": cls.get("network"), "expiry": cls.get("expiry"),
            "warn": cls.get("warn"), "grace": cls.get("grace")}


async def _provision_on_peer(agent, cls: dict, uid: str, peer: str) -> dict:
    """The peer makes the VM, checking the teacher's rights itself; recorded here with the peer's JID."""
    reply = await remote.ask(agent, peer, {**_class_attrs(cls), "op": "provision", "uid": uid})
    vm = next((el for el in reply if el.tag.rsplit("}", 1)[-1] == "vm" and el.get("jid")), None)
    if vm is None:
        raise Unavailable(f"{peer} made no VM")
    hypervisor = bare(peer)
    await store(agent).add_member(cls["name"], uid, vm.get("jid").split("@", 1)[0], "", hypervisor=hypervisor)
    return {"uid": uid, "jid": vm.get("jid"), "name": vm.get("name"), "hypervisor": hypervisor}


async def _on_peer(agent, cls: dict, member: dict, op: str, **extra) -> list[ET.Element]:
    """``op`` on a member whose VM lives on a peer, asked of that peer (which checks the teacher)."""
    peer = remote.peer_full_jid(agent, member["hypervisor"])
    return await remote.ask(agent, peer, {**_class_attrs(cls), "op": op, "uid": member["uid"], **extra})


def _render_report(payload) -> str:
    return "\n".join(f"{v.get('name')}: {v.get('student')}, {v.get('state')}, changed {v.get('changed')}"
                     + (f", network {v.get('network')}" if v.get("network") else "")
                     for v in payload) or "No VMs in this class."


async def _state(agent, uuid: str) -> str:
    if uuid not in agent.vms.entities:
        return "missing"
    try:
        dom = await agent.libvirt.lookup(uuid)
        return STATES.get((await agent.libvirt.call(dom.state))[0], "unknown")
    except NotFound:
        return "not defined"


@commands.command(NS, "report", kinds=("hypervisor",), permission="class_report",
                  permission_description="See the VMs of one's classes",
                  args=(Arg("name", parse=_class_name, help="the class"),),
                  chat=("class report",), help="each VM of the class: student, state, last change",
                  chat_render=_render_report)
async def report(ctx, name):
    cls = await _class(ctx, name)
    out = []
    for m in await store(ctx.agent).members(cls["name"]):
        entity = ctx.agent.vms.entities.get(m["uuid"])
        state, changed, error = None, m["changed"], None
        if m["hypervisor"]:
            try:
                found = (await _on_peer(ctx.agent, cls, m, "state"))[0]
                state, changed = found.get("state"), found.get("changed")
            except (ArchipelError, IndexError) as exc:
                state, error = "unknown", getattr(exc, "message", str(exc))
        out.append(element("vm", {"student": m["uid"], "jid": entity.jid if entity else ctx.agent.vms.jid_for(m["uuid"]),
                                  "name": entity.name if entity else f"{name}-{m['uid']}",
                                  "state": state or await _state(ctx.agent, m["uuid"]), "changed": changed,
                                  "hypervisor": m["hypervisor"], "error": error,
                                  "network": cls.get("network"),
                                  "expiry": iso(cls["expiry"]) if cls.get("expiry") else None}))
    return out


async def reset_vm(agent, cls: dict, member: dict, force: bool) -> None:
    """Back to the golden image: overlay re-created, the provisioning definition restored."""
    entity = agent.vms.get(member["uuid"])
    teacher = cls["teacher"]
    state = await _state(agent, member["uuid"])
    if state in ("running", "paused", "shutting down"):
        if not force:
            raise Conflict(f"{entity.name} is {state}: stop it first or pass force=yes")
        await act(agent, entity, VM_CONTROL, "destroy", teacher, {})
    await act(agent, entity, DISK, "delete", teacher, {"name": ROOT_DISK, "undefine": "yes"})
    await act(agent, entity, DISK, "create", teacher, {"name": ROOT_DISK.split(".")[0], "golden": cls["golden"]})
    await act(agent, entity, DEFINITION, "define", teacher, {"domain": ET.fromstring(member["definition"])})
    await store(agent).touch(member["uuid"])


async def _bulk(ctx, name: str, op: str, **extra) -> list:
    cls = await _class(ctx, name)
    async with store(ctx.agent).lock(name):
        return await _bulk_locked(ctx, cls, name, op, extra)


async def _bulk_locked(ctx, cls: dict, name: str, op: str, extra: dict) -> list:
    agent = ctx.agent

    async def one(member: dict) -> ET.Element:
        attrs = {"student": member["uid"], "name": f"{name}-{member['uid']}", "hypervisor": member["hypervisor"]}
        try:
            if member["hypervisor"]:
                await _on_peer(agent, cls, member, op, **extra)
                if op == "delete":
                    await store(agent).remove_member(cls["name"], member["uid"])
            else:
                await MEMBER_OPS[op](agent, cls, member, **extra)
        except ArchipelError as exc:
            return element("vm", {**attrs, "status": "error", "error": exc.message, "code": exc.code})
        return element("vm", {**attrs, "status": "ok"})

    return await _each_bounded(await store(ctx.agent).members(cls["name"]), one)


def _render_bulk(payload) -> str:
    return "\n".join(f"{v.get('name')}: {v.get('status')} {v.get('error') or ''}".rstrip() for v in payload) or "Nothing to do."


FORCE = Arg("force", parse=bool_yes, required=False, default=False, help="yes: act on running VMs too")


async def start_vm(agent, cls: dict, member: dict) -> None:
    if await _state(agent, member["uuid"]) != "running":
        await act(agent, agent.vms.get(member["uuid"]), VM_CONTROL, "create", cls["teacher"], {})
        await store(agent).touch(member["uuid"])


async def stop_vm(agent, cls: dict, member: dict) -> None:
    if await _state(agent, member["uuid"]) in ("running", "paused"):
        await act(agent, agent.vms.get(member["uuid"]), VM_CONTROL, "destroy", cls["teacher"], {})
        await store(agent).touch(member["uuid"])


async def delete_vm(agent, cls: dict, member: dict) -> None:
    await drop_lease(agent, agent.vms.jid_for(member["uuid"]))
    if member["uuid"] in agent.vms.entities:
        await act(agent, agent.hypervisor, HV_CONTROL, "free", cls["teacher"], {"jid": member["uuid"]})
    await store(agent).remove_member(cls["name"], member["uid"])


async def _reset_vm(agent, cls: dict, member: dict, force="") -> None:
    await reset_vm(agent, cls, member, bool(force))  # "yes" / "" as a peer is sent it


MEMBER_OPS = {"start": start_vm, "stop": stop_vm, "reset": _reset_vm, "delete": delete_vm}


@commands.command(NS, "start", kinds=("hypervisor",), permission="class_start",
                  permission_description="Start every VM of one's class",
                  args=(Arg("name", parse=_class_name),), chat=("class start",), chat_render=_render_bulk,
                  help="start every VM of the class that is not running")
async def start(ctx, name):
    return await _bulk(ctx, name, "start")


@commands.command(NS, "stop", kinds=("hypervisor",), permission="class_stop",
                  permission_description="Power off every VM of one's class",
                  args=(Arg("name", parse=_class_name),), chat=("class stop",), chat_render=_render_bulk,
                  help="power off every running VM of the class")
async def stop(ctx, name):
    return await _bulk(ctx, name, "stop")


@commands.command(NS, "reset", kinds=("hypervisor",), permission="class_reset",
                  permission_description="Reset VMs of one's class to the golden image",
                  args=(Arg("name", parse=_class_name), FORCE), chat=("class reset",), chat_render=_render_bulk,
                  help="re-create every VM's disk from the golden image (running ones only with force=yes)")
async def reset(ctx, name, force):
    return await _bulk(ctx, name, "reset", force="yes" if force else "")


@commands.command(NS, "delete", kinds=("hypervisor",), permission="class_delete",
                  permission_description="Delete one's class and its VMs",
                  args=(Arg("name", parse=_class_name),), chat=("class delete",), chat_render=_render_bulk,
                  help="free every VM of the class (folders to the trash) and forget the class")
async def delete(ctx, name):
    classes = store(ctx.agent)
    out = await _bulk(ctx, name, "delete")
    if not await classes.members(name):
        await classes.remove(name)
    return out


@commands.command(VM_NS, "reset", kinds=("vm",), permission="class_reset",
                  permission_description="Reset this class VM to its golden image",
                  args=(FORCE,), chat=("reset",), chat_render=lambda p: "Reset to the golden image.",
                  help="re-create this class VM's disk from the golden image and restore its definition")
async def reset_one(ctx, force):
    found = await store(ctx.agent).member_of_vm(ctx.entity.uuid)
    if found is None:
        raise NotFound("this VM belongs to no class")
    cls, member = found
    await reset_vm(ctx.agent, cls, member, force)
    return []


# ------------------------------------------------------------------ leases (jobs of the scheduler)
@commands.command(NS, "lease", kinds=("hypervisor",), permission="class_lease",
                  permission_description="Set or extend the lease of one's class",
                  args=(Arg("name", parse=_class_name),
                        Arg("expiry", parse=parse_expiry, help="+<duration> (30m, 2h, 7d) or a local ISO date"),
                        Arg("warn", parse=durations, required=False, default="24h,1h",
                            help="warn the student this long before (comma list)"),
                        Arg("grace", parse=duration, required=False, default=7 * 86400.0,
                            help="after the expiry, the VM goes to the trash after this long")),
                  chat=("class lease",), chat_render=lambda p: f"Lease until {p[0].get('expiry')}.",
                  help="give the class an expiry: warnings by chat and push, shut off at expiry, trash after the grace")
async def lease(ctx, name, expiry, warn, grace):
    cls = await _class(ctx, name)
    if expiry <= time.time():
        raise InvalidArgument("expiry", f"{iso(expiry)} is in the past")
    await store(ctx.agent).set_lease(name, expiry, warn, grace)
    cls = await store(ctx.agent).get(name)
    failed = []
    for member in await store(ctx.agent).members(name):
        if member["hypervisor"]:  # the peer plans the jobs of its VM, as the teacher
            try:
                await _on_peer(ctx.agent, cls, member, "lease")
            except ArchipelError as exc:
                failed.append(f"{name}-{member['uid']}: {exc.message}")
        elif member["uuid"] in ctx.agent.vms.entities:
            await plan_lease(ctx.agent, cls, ctx.agent.vms.jid_for(member["uuid"]))
    return [element("lease", {"class": name, "expiry": iso(expiry), "warn": warn, "grace": int(grace),
                              "failed": "; ".join(failed) or None})]


@commands.command(VM_NS, "leasewarn", kinds=("vm",), permission="class_lease",
                  permission_description="Warn this class VM's student of its lease",
                  args=(Arg("expiry", help="the expiry to announce"),), adhoc=False,
                  help="tell the student (chat) and subscribers (push) when this VM's lease ends")
async def leasewarn(ctx, expiry):
    found = await store(ctx.agent).member_of_vm(ctx.entity.uuid)
    if found is None:
        raise NotFound("this VM belongs to no class")
    cls, member = found
    text = (f"{ctx.entity.name}: this virtual machine's lease ends at {expiry}; it will then be shut off, "
            f"and moved to the trash later. Ask {cls['teacher']} to extend it.")
    for to in {f"{member['uid']}@{ctx.agent.config.domain}", cls["teacher"]}:
        ctx.entity.xmpp.send_message(mto=to, mbody=text, mtype="chat")
    try:
        await ctx.entity.push("archipel:push:classes", "leasewarning", [element("lease", {"expiry": expiry})])
    except Exception as exc:  # noqa: BLE001 - a push never fails the warning
        log.warning("%s: lease push failed: %s", ctx.entity.jid, exc)
    return []


# ------------------------------------------------------------------ a peer's VMs of a class (classes/remote.py)
MEMBER_PERMISSIONS = {"provision": "class_provision", "state": "class_report", "start": "class_start",
                      "stop": "class_stop", "reset": "class_reset", "delete": "class_delete", "lease": "class_lease"}


def _optional_float(value: str) -> float | None:
    return float(value) if value.strip() else None


@commands.command(NS, "member", kinds=("hypervisor",), permission=None, adhoc=False,
                  args=(Arg("op", choices=tuple(MEMBER_PERMISSIONS), help="what to do with the student's VM"),
                        Arg("name", parse=_class_name), Arg("teacher", help="the class's teacher (bare JID)"),
                        Arg("uid", help="the student"),
                        Arg("group", required=False), Arg("golden", required=False), Arg("role", required=False),
                        Arg("network", parse=lambda v: validate_name(v.strip(), "network"), required=False),
                        Arg("expiry", parse=_optional_float, required=False),
                        Arg("warn", parse=durations, required=False), Arg("grace", parse=float, required=False),
                        FORCE),
                  help="a peer hypervisor's class asks this one to make or act on a student's VM here "
                       "(peers only; checked here as the teacher)")
async def member(ctx, op, name, teacher, uid, group, golden, role, network, expiry, warn, grace, force):
    """Served to peers only; the teacher's rights are checked here, never taken from the peer."""
    agent, classes = ctx.agent, store(ctx.agent)
    if not is_peer(ctx.entity, ctx.sender):
        raise PermissionDenied("member", "only a peer hypervisor may ask")
    teacher = bare(teacher)
    await agent.permissions.require(ctx.entity.jid, ctx.entity.kind, teacher, MEMBER_PERMISSIONS[op],
                                    action=f"class {op}")
    async with classes.lock(name):  # only the class row: the VMs of one class are made in parallel
        cls = await classes.get(name)
        if cls is None:
            if op != "provision":
                raise NotFound(f"no class named {name!r} here")
            for arg, value in (("group", group), ("golden", golden), ("role", role)):
                if not value:
                    raise InvalidArgument(arg, f"a new class needs its {arg}")
            await _check_role(agent, role)
            validate_name(golden, "golden")
            await classes.add(name, group, golden, role, teacher, network)
            cls = await classes.get(name)
        elif cls["teacher"] != teacher:
            raise PermissionDenied("member", f"class {name} is {cls['teacher']}'s here")
        if expiry is not None and op in ("provision", "lease") and (expiry, warn, grace) != (
                cls.get("expiry"), cls.get("warn"), cls.get("grace")):
            await classes.set_lease(name, expiry, warn or "", grace or 0.0)
            cls = await classes.get(name)
    found = next((m for m in await classes.members(name) if m["uid"] == uid and not m["hypervisor"]), None)
    if op == "provision":
        if found is not None:  # made by an earlier request whose answer was lost: the same VM again
            return [element("vm", {"student": uid, "jid": agent.vms.jid_for(found["uuid"]), "name": f"{name}-{uid}"})]
        if cls.get("network"):
            await _check_network(agent, cls["network"], teacher)
        made = await provision_member(agent, cls, uid)
        if cls.get("expiry"):
            await plan_lease(agent, cls, made["jid"])
        return [element("vm", {"student": uid, "jid": made["jid"], "name": made["name"]})]
    if found is None:
        raise NotFound(f"{name}-{uid} is not here")
    if op == "state":
        return [element("vm", {"student": uid, "state": await _state(agent, found["uuid"]), "changed": found["changed"]})]
    if op == "lease":
        if found["uuid"] in agent.vms.entities and cls.get("expiry"):
            await plan_lease(agent, cls, agent.vms.jid_for(found["uuid"]))
        return []
    await MEMBER_OPS[op](agent, cls, found, **({"force": "yes" if force else ""} if op == "reset" else {}))
    if op == "delete" and not await classes.members(name):
        await classes.remove(name)
    return []
