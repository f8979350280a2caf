"""VM parking (Archipel's ``archipel:hypervisor:vmparking`` / ``archipel:vm:vmparking``).

A parked VM is undefined from libvirt; its folder (disks) stays on the shared
storage, its entity goes offline, its Jabber account, roster (subscriptions)
and vCard stay on ejabberd, and its record and rights are kept in the parking
record ``<vm folder>/.archipel-parked.json``.  That file is the registry: it
lives on the storage every hypervisor shares (never in one agent's database),
so ``list`` on any hypervisor sees every parked VM and ``unpark`` on any of
them brings the VM back with the same JID and rights.  The record is written
like the migration hand-over file (root, 0600, ``O_NOFOLLOW``, fsync'd): it
holds the VM account's password (needed to log the same JID in again) but the
definition in it is libvirt's inactive XML without secrets (no graphics
password), and no reply ever shows the password.  ``list``'s ``filter`` is a
plain substring compared in Python (Archipel put it in SQL).  An unpark claims
the record by renaming it (atomic on the shared storage), so two hypervisors
never both define the same VM.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from archipelagent.commands import Arg, CommandSet, element
from archipelagent.errors import Conflict, InvalidArgument, NotFound, PermissionDenied
from archipelagent.hypervisor.migrations import read_handover, remove_handover, write_handover
from archipelagent.hypervisor.records import VMRecord
from archipelagent.hypervisor.vms import plain_xml
from archipelagent.values import bounded_int

log = logging.getLogger(__name__)

HV_NS = "archipel:hypervisor:vmparking"
VM_NS = "archipel:vm:vmparking"
PUSH = "archipel:push:vmparking"
RECORD = ".archipel-parked.json"
PAGE_SIZE = 50
ONLINE_TIMEOUT = 30.0  # seconds a deleted parked VM's entity has to log in and remove its account
UNPARK_RIGHTS = frozenset({"all", "vmparking_park"})  # a user who could park it may bring it back

commands = CommandSet()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _record_path(agent, uuid: str) -> Path:
    return agent.vms.folder(uuid) / RECORD


def _uuid_of(ref: str) -> str:
    uuid = (ref or "").split("@", 1)[0].split("/", 1)[0].strip().lower()
    if not uuid or not all(c in "0123456789abcdef-" for c in uuid) or len(uuid) != 36:
        raise InvalidArgument("identifier", f"{ref!r} is not a VM uuid or JID")
    return uuid


def _strip_secrets(xml: str) -> str:
    """The inactive definition without anything secret (libvirt already omits graphics passwords
    without VIR_DOMAIN_XML_SECURE; the description is the user's and may hold anything)."""
    root = ET.fromstring(xml)
    for graphics in root.iter("graphics"):
        graphics.attrib.pop("passwd", None)
    for desc in root.findall("description"):
        root.remove(desc)
    return ET.tostring(root, encoding="unicode")


# ------------------------------------------------------------------ the registry on the shared storage
def _scan(base: Path) -> list[dict]:
    """Every parking record under the VM folders (storage pool thread)."""
    found = []
    with os.scandir(base) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path) / RECORD
            if os.path.lexists(path):
                try:
                    found.append(read_handover(path))
                except (OSError, ValueError) as exc:
                    log.warning("parking record %s unreadable: %s", path, exc)
    return found


def _claim(path: Path, claimer: str) -> Path:
    """Take a record for this hypervisor (rename: atomic); FileNotFoundError if someone was first."""
    claimed = path.with_name(f"{RECORD}.{claimer}")
    os.rename(path, claimed)
    return claimed


def _release(claimed: Path, path: Path) -> None:
    os.rename(claimed, path)


async def _push(entity, change: str, uuid: str, name: str) -> None:
    try:
        await entity.push(PUSH, change, [element("virtualmachine", {"uuid": uuid, "name": name})])
    except Exception as exc:  # noqa: BLE001 - a push never fails the command
        log.warning("%s: vmparking push %s failed: %s", entity.jid, change, exc)


# ------------------------------------------------------------------ park
async def park_vm(agent, entity, parker: str) -> None:
    """Undefine a shut-off VM, keep its disks, account and rights (in the parking record)."""
    if entity.migrating:
        raise Conflict(f"{entity.jid} is migrating")
    dom = await entity.domain()
    if await agent.libvirt.call(dom.isActive):
        raise Conflict("the VM must be shut off to be parked")
    xml = await agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
    record = entity.record
    rows = await agent.permissions.store.targets(entity.jid)
    data = {"uuid": record.uuid, "jid": record.jid, "password": record.password, "name": record.name,
            "created": record.created, "owner": record.owner, "orginfo": record.orginfo,
            "grants": [list(row) for row in rows], "definition": _strip_secrets(xml),
            "parker": parker, "date": _now(), "source": agent.hypervisor.jid}
    path = _record_path(agent, entity.uuid)
    await agent.fs.call(write_handover, path, data, what="parking record")
    try:
        await agent.libvirt.call(dom.undefineFlags, libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                 | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except BaseException:
        await agent.fs.call(remove_handover, path, what="parking record removal")
        raise
    await agent.vms.release_migrated(entity, status="Parked", change=None)
    await _push(agent.hypervisor, "parked", record.uuid, record.name)
    log.info("VM %s (%s) parked by %s", record.name, record.uuid, parker)


@commands.command(VM_NS, "park", kinds=("vm",), permission="vmparking_park",
                  permission_description="Park this VM (undefine it, keep its disks, account and rights)",
                  chat=("park",), help="park this VM: it leaves the hypervisor, keeps its disks, JID and rights",
                  chat_render=lambda p: "Parking.")
async def park_self(ctx):
    """Checked now, parked in the background: the reply must leave before the VM's stream closes."""
    entity, agent = ctx.entity, ctx.agent
    dom = await entity.domain()
    if await agent.libvirt.call(dom.isActive):
        raise Conflict("the VM must be shut off to be parked")
    agent.spawn(park_vm(agent, entity, ctx.sender_bare), name=f"park-{entity.uuid}")
    return []


def _items(children, attribute: str) -> list[ET.Element]:
    items = [c for c in children or () if c.tag.split("}", 1)[-1] == "item"]
    if not items:
        raise InvalidArgument("item", f"expected <item {attribute}=.../> children")
    return items


@commands.command(HV_NS, "park", kinds=("hypervisor",), permission="vmparking_park",
                  permission_description="Park VMs of this hypervisor",
                  args=(Arg("items", source="children", help="<item uuid=.../>"),),
                  help="park the VMs named by <item uuid/> (each needs vmparking_park on the VM too)")
async def park(ctx, items):
    agent = ctx.agent
    uuids = [_uuid_of(item.get("uuid") or "") for item in _items(items, "uuid")]
    for uuid in uuids:  # the VM's own right, before anything is looked up (tenancy)
        await agent.permissions.require(agent.vms.jid_for(uuid), "vm", ctx.sender_bare, "vmparking_park", action="park")
    entities = [agent.vms.get(uuid) for uuid in uuids]
    for entity in entities:
        await park_vm(agent, entity, ctx.sender_bare)
    return [element("virtualmachine", {"uuid": e.uuid, "name": e.name}) for e in entities]


# ------------------------------------------------------------------ list
def _render_list(payload) -> str:
    if not payload:
        return "No parked VMs."
    return "\n".join(f"{v.get('name')} ({v.get('uuid')}) parked by {v.get('parker')} on {v.get('date')}" for v in payload)


@commands.command(HV_NS, "list", kinds=("hypervisor",), permission="vmparking_list",
                  permission_description="List the parked VMs (of every hypervisor)",
                  args=(Arg("filter", required=False, default="", help="only names or uuids containing this text"),
                        Arg("page", parse=bounded_int(1, 100000), required=False, default=1,
                            help=f"page of {PAGE_SIZE}")),
                  chat=("park list", "parked"), help="the parked VMs", chat_render=_render_list)
async def list_parked(ctx, filter, page):
    records = await ctx.agent.fs.call(_scan, ctx.agent.vms.base_path, what="list of parked VMs")
    needle = (filter or "").lower()
    records = sorted((r for r in records if needle in r.get("name", "").lower() or needle in r.get("uuid", "")),
                     key=lambda r: (r.get("date", ""), r.get("uuid", "")))
    start = (page - 1) * PAGE_SIZE
    out = []
    for r in records[start:start + PAGE_SIZE]:
        vm = element("virtualmachine", {"uuid": r["uuid"], "name": r.get("name"), "parker": r.get("parker"),
                                        "date": r.get("date"), "owner": r.get("owner"), "total": len(records)})
        vm.append(ET.fromstring(r["definition"]))
        out.append(vm)
    return out


# ------------------------------------------------------------------ unpark / updatexml
async def _may_unpark(agent, user: str, data: dict) -> None:
    if await agent.permissions.is_admin(user) or data.get("owner") == user:
        return
    for target_type, target, permission, value in data.get("grants", []):
        if target_type == "user" and target == user and permission in UNPARK_RIGHTS and value:
            return
    raise PermissionDenied("unpark", "you held neither all nor vmparking_park on that VM")


async def unpark_vm(agent, uuid: str, user: str, start: bool):
    """Claim the record, define the VM here, bring its entity back with the same JID and rights."""
    path = _record_path(agent, uuid)
    claimer = agent.hypervisor.jid.split("@", 1)[0]
    try:
        claimed = await agent.fs.call(_claim, path, claimer, what="claim of a parking record")
    except FileNotFoundError:
        raise NotFound(f"no parked VM {uuid}") from None
    try:
        data = await agent.fs.call(read_handover, claimed, what="parking record")
        if data.get("uuid") != uuid or data.get("jid") != agent.vms.jid_for(uuid):
            raise Conflict(f"the parking record of {uuid} names another VM")
        await _may_unpark(agent, user, data)
        if uuid in agent.vms.entities:
            raise Conflict(f"{uuid} is already defined here")
        root = await agent.vms.checked_definition(data["definition"], uuid, data["name"], data.get("owner") or None)
        await agent.libvirt.call("defineXML", ET.tostring(root, encoding="unicode"))
    except BaseException:
        await agent.fs.call(_release, claimed, path, what="release of a parking record")
        raise
    record = VMRecord(uuid, data["jid"], data["password"], data["name"], data["created"],
                      data.get("owner", ""), data.get("orginfo") or {})
    entity = await agent.vms.adopt_migrated(record, [tuple(row) for row in data.get("grants", [])])
    await agent.fs.call(remove_handover, claimed, what="parking record removal")
    if start:
        dom = await agent.libvirt.lookup(uuid)
        await agent.libvirt.call(dom.create)
    await _push(agent.hypervisor, "unparked", uuid, record.name)
    log.info("VM %s (%s) unparked by %s", record.name, uuid, user)
    return entity


@commands.command(HV_NS, "unpark", kinds=("hypervisor",), permission="vmparking_unpark",
                  permission_description="Bring parked VMs back on this hypervisor",
                  args=(Arg("items", source="children", help="<item identifier=uuid start=yes|no/>"),),
                  help="define parked VMs here, same JID and rights (you must have held all or vmparking_park on them)")
async def unpark(ctx, items):
    out = []
    for item in _items(items, "identifier"):
        uuid = _uuid_of(item.get("identifier") or "")
        start = (item.get("start") or "no").lower() in ("1", "yes", "true", "y")
        entity = await unpark_vm(ctx.agent, uuid, ctx.sender_bare, start)
        out.append(element("virtualmachine", {"uuid": uuid, "jid": entity.jid, "name": entity.name}))
    return out


async def delete_parked(agent, uuid: str, user: str) -> None:
    """Gone for good: the VM's entity comes back only to remove its own account (the only way
    in-band), then it is freed like any VM (rows dropped, folder to the trash)."""
    path = _record_path(agent, uuid)
    try:
        claimed = await agent.fs.call(_claim, path, agent.hypervisor.jid.split("@", 1)[0], what="claim of a parking record")
    except FileNotFoundError:
        raise NotFound(f"no parked VM {uuid}") from None
    try:
        data = await agent.fs.call(read_handover, claimed, what="parking record")
        if data.get("uuid") != uuid or data.get("jid") != agent.vms.jid_for(uuid):
            raise Conflict(f"the parking record of {uuid} names another VM")
        await _may_unpark(agent, user, data)
        if uuid in agent.vms.entities:
            raise Conflict(f"{uuid} is defined here")
        record = VMRecord(uuid, data["jid"], data["password"], data["name"], data["created"],
                          data.get("owner", ""), data.get("orginfo") or {})
        entity = await agent.vms.adopt_migrated(record, [tuple(row) for row in data.get("grants", [])])
    except BaseException:
        await agent.fs.call(_release, claimed, path, what="release of a parking record")
        raise
    await agent.fs.call(remove_handover, claimed, what="parking record removal")  # never into the trash
    try:
        await asyncio.wait_for(entity.online.wait(), ONLINE_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("parked VM %s did not come online in %.0f s: its account may be left", uuid, ONLINE_TIMEOUT)
    await agent.vms.free(uuid)
    await _push(agent.hypervisor, "deleted", uuid, record.name)
    log.info("parked VM %s (%s) deleted by %s", record.name, uuid, user)


@commands.command(HV_NS, "delete", kinds=("hypervisor",), permission="vmparking_delete",
                  permission_description="Delete parked VMs for good",
                  args=(Arg("items", source="children", help="<item identifier=uuid/>"),),
                  help="delete parked VMs: account removed, folder to the trash (you must have held all or "
                       "vmparking_park on them)")
async def delete(ctx, items):
    uuids = [_uuid_of(item.get("identifier") or "") for item in _items(items, "identifier")]
    for uuid in uuids:
        await delete_parked(ctx.agent, uuid, ctx.sender_bare)
    return [element("virtualmachine", {"uuid": uuid}) for uuid in uuids]


@commands.command(HV_NS, "updatexml", kinds=("hypervisor",), permission="vmparking_updatexml",
                  permission_description="Change the definition of a parked VM",
                  args=(Arg("items", source="children", help="<item identifier=uuid><domain/></item>"),),
                  help="replace a parked VM's definition (checked by the definition policy now and at unpark)")
async def updatexml(ctx, items):
    agent = ctx.agent
    (item,) = _items(items, "identifier")[:1]
    uuid = _uuid_of(item.get("identifier") or "")
    domain = next((c for c in item if c.tag.split("}", 1)[-1] == "domain"), None)
    if domain is None:
        raise InvalidArgument("domain", "expected a <domain> inside the <item>")
    path = _record_path(agent, uuid)
    try:
        claimed = await agent.fs.call(_claim, path, agent.hypervisor.jid.split("@", 1)[0], what="claim of a parking record")
    except FileNotFoundError:
        raise NotFound(f"no parked VM {uuid}") from None
    try:
        data = await agent.fs.call(read_handover, claimed, what="parking record")
        await _may_unpark(agent, ctx.sender_bare, data)
        root = await agent.vms.checked_definition(plain_xml(domain), uuid, data["name"], data.get("owner") or None)
        if (root.findtext("uuid") or uuid).lower() != uuid or root.findtext("name") != data["name"]:
            raise InvalidArgument("domain", "the uuid and name of a parked VM cannot change")
        data["definition"] = _strip_secrets(ET.tostring(root, encoding="unicode"))
        await agent.fs.call(write_handover, claimed, data, what="parking record")
    finally:
        await agent.fs.call(_release, claimed, path, what="release of a parking record")
    await _push(agent.hypervisor, "updated", uuid, data["name"])
    return []
