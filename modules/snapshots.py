"""``archipel:virtualmachine:snapshoting``: internal qcow2 snapshots of a VM.

The wire shapes are Archipel's: ``take`` reads ``<domainsnapshot><name/>
<description/></domainsnapshot>`` (or a ``name`` attribute), ``get`` and
``current`` answer libvirt ``<domainsnapshot>`` XML, pushes are ``snapshoting``
``taken``/``deleted``/``restored``.  Differences on purpose:

* the user's ``<domainsnapshot>`` is never handed to libvirt: only its name
  and description are read, and the agent writes the snapshot XML itself
  (a user-supplied ``<disks>``/``<memory file=…>`` would name host paths);
* snapshot XML sent back is stripped of the domain's secrets (description,
  passwords);
* every permission is its own (``snapshot_take`` …): a user may be granted
  snapshots without ``drives_resize`` or ``define``;
* a VM with a writable raw disk is refused with a clear error (internal
  snapshots live in qcow2 files);
* every libvirt call runs in the agent's bounded executor; the presence says
  ``Snapshoting...`` (dnd) meanwhile.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import xml.etree.ElementTree as ET

import libvirt

from archipelagent.commands import Arg, CommandSet, element
from archipelagent.commands.payload import local_name
from archipelagent.errors import Conflict, InvalidArgument, LibvirtFailure, NotFound

from archipelagent.values import is_secret_name
from archipelagent_modules.storage import (PathRefused, realpath, require_writable, validate_name)

log = logging.getLogger(__name__)

NS = "archipel:virtualmachine:snapshoting"
PUSH = "snapshoting"
BUSY = "Snapshoting..."
MAX_DESCRIPTION = 2048

commands = CommandSet()
_locks: dict[str, asyncio.Lock] = {}


def _cmd(action: str, **kw):
    return commands.command(namespace=NS, action=action, permission=f"snapshot_{action}", kinds=("vm",), **kw)


# ---------------------------------------------------------------- helpers
def snapshot_xml(name: str, description: str | None, skip_disks: list[str]) -> str:
    """The snapshot definition the agent writes (never the user's XML)."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    if description:
        ET.SubElement(root, "description").text = description
    if skip_disks:
        disks = ET.SubElement(root, "disks")
        for dev in skip_disks:
            ET.SubElement(disks, "disk", {"name": dev, "snapshot": "no"})
    return ET.tostring(root, encoding="unicode")


def scrub(xml: str) -> ET.Element:
    """libvirt snapshot XML without the domain's description or anything secret."""
    root = ET.fromstring(xml)
    for holder in [root, *root.iter("domain"), *root.iter("inactiveDomain")]:
        if holder is root:
            continue
        for desc in holder.findall("description"):
            holder.remove(desc)
    for el in root.iter():
        for attr in list(el.attrib):
            if is_secret_name(attr):
                del el.attrib[attr]
        for child in list(el):
            if is_secret_name(local_name(child.tag)):
                el.remove(child)
    return root


def writable_disks(domain_xml: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(target dev, driver type, source) of each writable disk; target devs of read-only ones."""
    root = ET.fromstring(domain_xml)
    writable, readonly = [], []
    for disk in root.iter("disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else "?"
        if disk.get("device", "disk") in ("cdrom", "floppy") or disk.find("readonly") is not None:
            readonly.append(dev)
            continue
        driver = disk.find("driver")
        source = disk.find("source")
        src = (source.get("file") or source.get("dev") or "") if source is not None else ""
        writable.append((dev, (driver.get("type") if driver is not None else None) or "raw", src))
    return writable, readonly


def _parse_take(domainsnapshot, name_attr) -> tuple[str | None, str | None]:
    name = name_attr
    description = None
    if domainsnapshot is not None:
        for child in domainsnapshot:
            tag = local_name(child.tag)
            if tag == "name" and (child.text or "").strip():
                name = name or child.text.strip()
            elif tag == "description":
                description = (child.text or "").strip()
    return name, description


class _Busy:
    """Presence ``Snapshoting...`` (dnd) for the duration, then back to the state."""

    def __init__(self, entity):
        self.entity = entity

    def __enter__(self):
        self.entity.set_busy(BUSY)

    def __exit__(self, *exc):
        self.entity.set_busy(None)
        return False


def _lock(ctx) -> asyncio.Lock:
    disks = ctx.agent.disks
    if disks is not None:  # shared with the storage module: no snapshot while a disk is renamed/converted
        return disks.lock(ctx.entity.uuid)
    return _locks.setdefault(ctx.entity.uuid, asyncio.Lock())


async def _refuse_busy_disks(ctx) -> None:
    disks = ctx.agent.disks
    if disks is None:
        return
    busy = disks.busy_in(await disks.real_folder(ctx.entity.uuid))
    if busy:
        raise Conflict(f"a disk of this VM is busy: {', '.join(busy)}")


async def _check_disks(ctx, sources: list[str]) -> None:
    """Fail closed: every writable disk has its recorded format and a confined chain
    (the one check, archipelagent/storage/images.py); an unreadable disk refuses the
    command with qemu-img's error (-1050) instead of letting libvirt probe it."""
    guard = ctx.agent.disk_guard
    folder = await ctx.agent.fs.call(realpath, guard.vm_base_path / ctx.entity.uuid, what="resolve the VM folder")
    golden = await ctx.agent.fs.call(realpath, guard.golden_path, what="resolve the golden folder")
    for src in sources:
        path = await ctx.agent.fs.call(realpath, src, what="resolve a disk path")
        if path.parent != folder:
            raise PathRefused("disk", f"'{src}' is outside this VM's folder")
        await guard.checked_disk(path, (folder, golden))


async def _snapshot(ctx, dom, name: str):
    try:
        return await ctx.agent.libvirt.call(dom.snapshotLookupByName, name, 0)
    except LibvirtFailure as exc:
        if exc.code == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise NotFound(f"no snapshot named '{name}' on this VM") from None
        raise


async def _snapshot_element(ctx, snap) -> ET.Element:
    return scrub(await ctx.agent.libvirt.call(snap.getXMLDesc, 0))


async def _push(ctx, change: str, name: str) -> None:
    try:
        await ctx.entity.push(PUSH, change, [element("snapshot", {"name": name})])
    except Exception as exc:  # noqa: BLE001 - a push never fails the command
        log.warning("%s: snapshot push %s failed: %s", ctx.entity.jid, change, exc)


def _render_list(payload) -> str:
    if not payload:
        return "No snapshots."
    lines = []
    for snap in payload:
        name = snap.findtext("name") or snap.findtext(f"{{{NS}}}name") or "?"
        when = snap.findtext("creationTime") or snap.findtext(f"{{{NS}}}creationTime")
        stamp = datetime.datetime.fromtimestamp(int(when)).strftime("%Y-%m-%d %H:%M:%S") if when and when.isdigit() else ""
        lines.append(f"{name} {stamp}".strip())
    return "\n".join(lines)


# ---------------------------------------------------------------- commands
@_cmd("take", chat=("snapshot", "take snapshot"),
      args=(Arg("name", required=False, help="snapshot name (default: a timestamp)"),
            Arg("domainsnapshot", source="element", required=False, help="<domainsnapshot><name/><description/>"),
            Arg("description", required=False, rest=True, help="free text")),
      chat_render=lambda p: f"Snapshot {p[0].findtext('name') or ''} taken.",
      help="take an internal snapshot of this VM (qcow2 disks only)")
async def take(ctx, name, domainsnapshot, description):
    name_found, desc_found = _parse_take(domainsnapshot, name)
    description = desc_found if desc_found is not None else description
    name = name_found or datetime.datetime.now().strftime("snapshot-%Y%m%d-%H%M%S")
    validate_name(name, "name")
    if description and len(description) > MAX_DESCRIPTION:
        raise InvalidArgument("description", f"at most {MAX_DESCRIPTION} characters")
    if description and any(ord(c) < 32 and c not in "\t\n\r" for c in description):
        raise InvalidArgument("description", "contains control characters")
    await require_writable(ctx.agent, "take a snapshot")
    dom = await ctx.entity.domain()
    async with _lock(ctx):
        await _refuse_busy_disks(ctx)
        active = await ctx.agent.libvirt.call(dom.isActive)
        flags = 0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE
        writable, readonly = writable_disks(await ctx.agent.libvirt.call(dom.XMLDesc, flags))
        if not writable:
            raise Conflict("this VM has no writable disk to snapshot")
        raw = [f"{dev} ({src or 'no source'}) is {fmt}" for dev, fmt, src in writable if fmt != "qcow2"]
        if raw:
            raise Conflict("snapshots need qcow2 disks (internal snapshots live in the qcow2 file): "
                           + "; ".join(raw) + ". Convert the disk to qcow2 first (archipel:vm:disk convert)")
        await _check_disks(ctx, [src for _dev, _fmt, src in writable])
        try:
            await _snapshot(ctx, dom, name)
            raise Conflict(f"a snapshot named '{name}' already exists")
        except NotFound:
            pass
        with _Busy(ctx.entity):
            snap = await ctx.agent.libvirt.call(dom.snapshotCreateXML, snapshot_xml(name, description, readonly), 0)
            result = await _snapshot_element(ctx, snap)
    await _push(ctx, "taken", name)
    return result


@_cmd("delete", chat=("delete snapshot",), args=(Arg("name", help="snapshot name"),),
      help="delete a snapshot of this VM (its children are kept)")
async def delete(ctx, name):
    validate_name(name, "name")
    await require_writable(ctx.agent, "delete a snapshot")
    dom = await ctx.entity.domain()
    async with _lock(ctx):
        await _refuse_busy_disks(ctx)
        snap = await _snapshot(ctx, dom, name)
        with _Busy(ctx.entity):
            await ctx.agent.libvirt.call(snap.delete, 0)
    await _push(ctx, "deleted", name)


@_cmd("get", chat=("snapshots", "list snapshots"), chat_render=_render_list,
      help="the snapshots of this VM (libvirt <domainsnapshot> XML)")
async def get(ctx):
    dom = await ctx.entity.domain()

    def blocking():
        return [(s.getName(), s.getXMLDesc(0)) for s in dom.listAllSnapshots(0)]

    snaps = await ctx.agent.libvirt.call(blocking)
    out = [scrub(xml) for _name, xml in snaps]
    out.sort(key=lambda el: int(el.findtext("creationTime") or 0))
    return out


@_cmd("current", chat=("current snapshot",), help="the current snapshot of this VM (nothing when there is none)")
async def current(ctx):
    dom = await ctx.entity.domain()
    if not await ctx.agent.libvirt.call(dom.hasCurrentSnapshot, 0):
        return None
    snap = await ctx.agent.libvirt.call(dom.snapshotCurrent, 0)
    return await _snapshot_element(ctx, snap)


@_cmd("revert", chat=("revert", "revert to snapshot", "restore snapshot"), args=(Arg("name", help="snapshot name"),),
      help="revert this VM (disks, and memory when it was running) to a snapshot")
async def revert(ctx, name):
    validate_name(name, "name")
    await require_writable(ctx.agent, "revert to a snapshot")
    dom = await ctx.entity.domain()
    async with _lock(ctx):
        await _refuse_busy_disks(ctx)
        snap = await _snapshot(ctx, dom, name)
        with _Busy(ctx.entity):
            await ctx.agent.libvirt.call(dom.revertToSnapshot, snap, 0)
    await ctx.entity.refresh_state()
    await _push(ctx, "restored", name)
