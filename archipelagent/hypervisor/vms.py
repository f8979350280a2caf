"""The VMs of this hypervisor: allocation, freeing, cloning, adoption, reconciliation.

One object owns the map uuid → VM entity, the VM database and the VM folders
on the shared storage, so every path that creates or removes a VM goes
through the same steps (and the same order of steps) whatever transport
asked for it.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import re
import shutil
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

import libvirt

from ..commands.payload import local_name
from ..errors import Conflict, InvalidArgument, LibvirtFailure, NotFound, Unavailable
from ..quotas import owner_of, parse_xml
from ..state import VMRecord, VMStore, new_password, now_iso
from ..storage.health import require_writable
from ..virt import domainxml
from ..virt.policy import PolicyContext, check_domain
from ..vm.commands import UNDEFINE_FLAGS
from ..vm.entity import ORGINFO_FIELDS, VMEntity

if TYPE_CHECKING:  # pragma: no cover
    from ..agent import Agent

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TRASH = ".trash"
COPY_CHUNK = 8 * 1024 * 1024
LOGIN_CONCURRENCY = 25

Progress = Callable[[int], Awaitable[None]]


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidArgument("name", "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def plain_xml(el: ET.Element) -> str:
    """A child element of an ACP query, serialised for libvirt.

    Archipel's client sends ``<domain>`` inside the query, so it inherits the
    query's namespace; libvirt wants it un-namespaced.  Only that inherited
    namespace is stripped: any other (e.g. ``qemu:``) stays for the policy to see.
    """
    inherited = el.tag[1:].split("}", 1)[0] if el.tag.startswith("{") else None

    def strip(node: ET.Element) -> None:
        if inherited and node.tag.startswith(f"{{{inherited}}}"):
            node.tag = local_name(node.tag)
        for child in node:
            strip(child)

    copy = ET.fromstring(ET.tostring(el))
    strip(copy)
    return ET.tostring(copy, encoding="unicode")


def _serialise(root) -> str:
    """The policy's checked (and normalised) lxml element, as libvirt XML."""
    from lxml import etree

    return etree.tostring(root, encoding="unicode")


def _copy_file(src: Path, dst: Path, report: Callable[[int], None]) -> None:
    """Blocking copy with progress (worker thread)."""
    total = max(1, src.stat().st_size)
    done = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(COPY_CHUNK):
            fout.write(chunk)
            done += len(chunk)
            report(done * 100 // total)
    shutil.copystat(src, dst)


class VMManager:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.store: VMStore | None = None
        self.entities: dict[str, VMEntity] = {}
        self._login_gate = asyncio.Semaphore(LOGIN_CONCURRENCY)
        self._lock = asyncio.Lock()  # alloc/free/clone/manage change the map one at a time

    # ----------------------------------------------------------- helpers
    @property
    def base_path(self) -> Path:
        return Path(self.agent.config.vm.base_path)

    def folder(self, uuid: str) -> Path:
        return self.base_path / uuid

    @property
    def resource(self) -> str:
        """VM resource = the hypervisor's node name, lowercased (as Archipel)."""
        return self.agent.config.hypervisor.jid.split("@", 1)[0].lower()

    def jid_for(self, uuid: str) -> str:
        return f"{uuid}@{self.agent.config.domain}"

    async def checked_definition(self, xml: str, uuid: str, name: str, owner: str | None = None):
        """The definition policy, in a worker thread: it resolves paths on the shared
        storage, and a hung NFS mount must not stall the event loop.  ``owner``: the
        VM's owner (None: judged as a non-admin's VM, the stricter policy)."""
        ctx = await self.policy_context(uuid, name, owner)
        return await asyncio.to_thread(check_domain, xml, ctx)

    async def policy_context(self, uuid: str, name: str, owner: str | None = None) -> PolicyContext:
        """What the VM may use: config, the host's capacity (libvirt node info) and
        whether its owner is an admin (an LDAP outage counts as not: fail closed)."""
        vm = self.agent.config.vm
        node = await self.agent.libvirt.node_info()
        try:
            owner_is_admin = bool(owner) and await self.agent.permissions.is_admin(owner)
        except Unavailable as exc:
            log.warning("VM %s: owner's admin status unknown (%s); judged as a non-admin's VM", uuid, exc)
            owner_is_admin = False
        return PolicyContext(
            uuid=uuid, name=name, vm_folder=self.folder(uuid).resolve(), allow_host_devices=vm.enable_block_device_access,
            allowed_networks=vm.allowed_networks, allowed_bridges=vm.allowed_bridges,
            library_paths=tuple(getattr(self.agent, "library_paths", ())),  # set by the storage module
            owner_is_admin=owner_is_admin, host_memory_kib=node["memory_kib"], host_cpus=node["nrCPU"],
            max_memory_kib=vm.max_memory_kib, max_vcpus=vm.max_vcpus,
        )

    def get(self, uuid_or_jid: str) -> VMEntity:
        key = uuid_or_jid.split("@", 1)[0].split("/", 1)[0].lower()
        entity = self.entities.get(key)
        if entity is None:
            raise NotFound(f"no virtual machine {uuid_or_jid!r} on this hypervisor")
        return entity

    def find(self, name_or_uuid: str) -> VMEntity:
        """For chat: a name or a uuid/JID."""
        for entity in self.entities.values():
            if entity.name == name_or_uuid:
                return entity
        return self.get(name_or_uuid)

    async def _name_taken(self, name: str) -> bool:
        """Names are unique across managed entities and every libvirt domain (one RPC, not a listing)."""
        if any(e.name == name for e in self.entities.values()):
            return True
        try:
            await self.agent.libvirt.call("lookupByName", name)
        except LibvirtFailure as exc:
            if exc.code == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise
        return True

    def _start_entity(self, entity: VMEntity) -> None:
        async def gated_start():
            async with self._login_gate:
                entity.start()
                try:
                    await asyncio.wait_for(entity.online.wait(), 30)
                except asyncio.TimeoutError:
                    pass  # it keeps trying on its own backoff; just free the gate

        self.agent.spawn(gated_start(), name=f"login-{entity.uuid}")

    def _new_entity(self, record: VMRecord) -> VMEntity:
        entity = VMEntity(self.agent, record, resource=self.resource)
        self.entities[record.uuid] = entity
        return entity

    async def _domain_type(self) -> str:
        caps = ET.fromstring(await self.agent.libvirt.capabilities())
        types = {d.get("type") for d in caps.iter("domain")}
        return "kvm" if "kvm" in types else "qemu"

    async def _push_hypervisor(self, change: str, vm_jid: str, **attrs) -> None:
        hv = self.agent.hypervisor
        child = ET.Element("virtualmachine", {"jid": vm_jid, **{k: str(v) for k, v in attrs.items()}})
        await hv.push("hypervisor", change, [child])
        hv.refresh_presence()

    # ------------------------------------------------------- start / stop
    async def open(self) -> None:
        self.store = await VMStore.open(self.agent.config.hypervisor.database_path)

    async def load(self) -> None:
        """Rebuild the entities from the database; running domains are never touched."""
        for record in await self.store.all():
            self._start_entity(self._new_entity(record))
        log.info("%d VM entities loaded from the database", len(self.entities))

    async def reconcile(self) -> dict[str, list[str]]:
        """Compare the database with libvirt and report drift; change nothing destructive.

        Runs after start and after every libvirt reconnection: presences are
        refreshed from libvirt, an entity whose domain exists nowhere is
        reported (and shows "Not defined"), never silently deleted.
        """
        domains = {d.uuid: d for d in await self.agent.libvirt.list_domains()}
        report = {"missing_domain": [], "unmanaged_domains": []}
        for uuid, entity in self.entities.items():
            if uuid not in domains:
                report["missing_domain"].append(uuid)
                log.warning("VM %s (%s): its libvirt domain is gone (entity kept, shown as Not defined)", entity.name, uuid)
            await entity.refresh_state()
        report["unmanaged_domains"] = sorted(u for u, d in domains.items() if d.persistent and u not in self.entities)
        if report["unmanaged_domains"]:
            log.info("%d libvirt domains are not managed by the agent (see rostervm / manage)", len(report["unmanaged_domains"]))
        return report

    async def close(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.entities.values()), return_exceptions=True)
        if self.store:
            await self.store.close()

    # --------------------------------------------------------------- alloc
    async def alloc(self, requester: str, *, name: str | None, orginfo: dict[str, str], definition: ET.Element | None) -> VMEntity:
        require_writable(self.agent, "alloc")
        async with self._lock, self.agent.quotas.reserve(requester):  # quota check + define as one step
            uuid = str(uuidlib.uuid4())
            if name:
                validate_name(name)
            else:
                name = f"vm-{uuid[:8]}"
            if await self._name_taken(name):
                raise Conflict(f"a virtual machine named '{name}' already exists")
            folder = self.folder(uuid)
            if definition is not None:
                root = await self.checked_definition(plain_xml(definition), uuid, name, requester)
                await self.agent.disk_guard.check_definition(uuid, root)  # formats pinned, chains confined (images.py)
                xml = _serialise(root)
            else:
                xml = domainxml.default_domain(uuid, name, domain_type=await self._domain_type())
            await self.agent.quotas.check_new(requester, parse_xml(xml), sender=requester)  # quotas.py
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            await self.agent.libvirt.call("defineXML", xml)
            record = VMRecord(uuid=uuid, jid=self.jid_for(uuid), password=new_password(self.agent.config.vm.password_size),
                              name=name, created=now_iso(), owner=requester, orginfo=orginfo)
            await self.store.add(record)
            await self.agent.permissions.set_permission(record.jid, "vm", requester, "all", True)
            entity = self._new_entity(record)
            entity.pending_subscribe = requester
            self._start_entity(entity)
        log.info("allocated VM %s (%s) for %s", name, uuid, requester)
        await self._push_hypervisor("alloc", record.jid)
        return entity

    # ---------------------------------------------------------------- free
    async def free(self, uuid_or_jid: str) -> str:
        """Destroy and undefine the domain, remove the account and rows; trash the folder."""
        entity = self.get(uuid_or_jid)
        require_writable(self.agent, "free")  # the folder moves to the trash
        async with self._lock:
            uuid = entity.uuid
            entity.set_busy("Freeing...")
            try:
                dom = await self.agent.libvirt.lookup(uuid)
            except NotFound:
                dom = None
            if dom is not None:
                if await self.agent.libvirt.call(dom.isActive):
                    await self.agent.libvirt.call(dom.destroy)
                await self.agent.libvirt.call(dom.undefineFlags, UNDEFINE_FLAGS)
            try:
                await entity.remove_account()
            except Exception as exc:  # noqa: BLE001 - the account must not block freeing
                log.warning("VM %s: account removal failed: %s", uuid, exc)
            await entity.stop()
            del self.entities[uuid]
            await self.store.remove(uuid)
            await self.agent.permissions.store.delete_entity(entity.jid)
            trashed = await asyncio.to_thread(self._trash_folder, uuid)
        log.info("freed VM %s (%s); folder %s", entity.name, uuid, trashed or "absent")
        await self._push_hypervisor("free", entity.jid)
        return entity.jid

    def _trash_folder(self, uuid: str) -> str | None:
        """Move the VM folder to ``<vm_base_path>/.trash/<uuid>-<UTC time>`` (same filesystem: a rename)."""
        folder = self.folder(uuid)
        if not folder.exists():
            return None
        trash = self.base_path / TRASH
        trash.mkdir(exist_ok=True)
        target = trash / f"{uuid}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
        folder.rename(target)
        return str(target)

    # --------------------------------------------------------------- clone
    async def clone(self, requester: str, source: str, name: str | None) -> VMEntity:
        """Copy an off VM: new UUID and MACs, disks in the VM folder copied with progress pushes."""
        src = self.get(source)
        require_writable(self.agent, "clone")
        dom = await self.agent.libvirt.lookup(src.uuid)
        state, _ = await self.agent.libvirt.call(dom.state)
        if state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
            raise Conflict(f"the source VM '{src.name}' must be shut off to be cloned")
        xml = await self.agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
        async with self._lock, self.agent.quotas.reserve(requester):  # quota check + copy as one step
            uuid = str(uuidlib.uuid4())
            name = validate_name(name) if name else f"{src.name}-clone"
            if await self._name_taken(name):
                raise Conflict(f"a virtual machine named '{name}' already exists")
            await self.agent.quotas.check_clone(requester, src, sender=requester)  # quotas.py
            src_folder, new_folder = self.folder(src.uuid), self.folder(uuid)
            await asyncio.to_thread(new_folder.mkdir, parents=True, exist_ok=True)
            files = await asyncio.to_thread(lambda: sorted(p for p in src_folder.iterdir() if p.is_file()) if src_folder.exists() else [])
            path_map = {str(p): str(new_folder / p.name) for p in files}
            src.set_busy("Cloning...")
            try:
                await self._copy_with_progress(files, new_folder, uuid)
            finally:
                src.set_busy(None)
            new_xml = domainxml.clone_domain(xml, uuid=uuid, name=name, path_map=path_map)
            root = await self.checked_definition(new_xml, uuid, name, requester)
            await self.agent.disk_guard.check_definition(uuid, root)  # the copies, read as the source's records say
            await self.agent.libvirt.call("defineXML", _serialise(root))
            record = VMRecord(uuid=uuid, jid=self.jid_for(uuid), password=new_password(self.agent.config.vm.password_size),
                              name=name, created=now_iso(), owner=requester, orginfo=dict(src.record.orginfo))
            await self.store.add(record)
            await self.agent.permissions.set_permission(record.jid, "vm", requester, "all", True)
            entity = self._new_entity(record)
            entity.pending_subscribe = requester
            self._start_entity(entity)
        await self._push_hypervisor("clone", record.jid, source=src.jid)
        return entity

    async def _copy_with_progress(self, files: list[Path], dest: Path, uuid: str) -> None:
        loop = asyncio.get_running_loop()
        last = {"pct": -1}

        def report(pct: int) -> None:
            if pct >= last["pct"] + 10 or pct == 100:
                last["pct"] = pct
                loop.call_soon_threadsafe(lambda p=pct: self.agent.spawn(
                    self._push_hypervisor("cloning", self.jid_for(uuid), progress=p), name="clone-progress"))

        for path in files:
            await asyncio.to_thread(_copy_file, path, dest / path.name, report)

    # -------------------------------------------------------------- define
    async def define(self, entity: VMEntity, definition: ET.Element, sender: str | None = None) -> None:
        require_writable(self.agent, "define")
        root = await self.checked_definition(plain_xml(definition), entity.uuid, entity.name, entity.record.owner)
        await self.agent.disk_guard.check_definition(entity.uuid, root)  # formats pinned, chains confined (images.py)
        async with self.agent.quotas.reserve(owner_of(entity, sender)):  # quotas.py: check + define as one step
            await self.agent.quotas.check_define(entity, root, sender=sender)
            await self.agent.libvirt.call("defineXML", _serialise(root))

    # ------------------------------------------------------ manage/unmanage
    async def manage(self, requester: str, uuids: list[str]) -> list[str]:
        """Adopt existing libvirt domains as entities (same UUID, same XML)."""
        adopted = []
        async with self._lock:
            domains = {d.uuid: d for d in await self.agent.libvirt.list_domains()}
            for uuid in uuids:
                if uuid in self.entities:
                    raise Conflict(f"{uuid} is already managed")
                if uuid not in domains:
                    raise NotFound(f"no libvirt domain with uuid {uuid}")
            for uuid in uuids:  # adopt: the admin's disks get their format recorded after the chain check (images.py)
                dom = await self.agent.libvirt.lookup(uuid)
                xml = await self.agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
                await self.agent.disk_guard.check_definition(uuid, ET.fromstring(xml), adopt=True)
            for uuid in uuids:
                record = VMRecord(uuid=uuid, jid=self.jid_for(uuid), password=new_password(self.agent.config.vm.password_size),
                                  name=domains[uuid].name, created=now_iso(), owner=requester)
                await self.store.add(record)
                await self.agent.permissions.set_permission(record.jid, "vm", requester, "all", True)
                entity = self._new_entity(record)
                entity.pending_subscribe = requester
                self._start_entity(entity)
                adopted.append(record.jid)
        for jid in adopted:
            await self._push_hypervisor("manage", jid)
        return adopted

    async def unmanage(self, uuids: list[str]) -> list[str]:
        """Release entities: the domain and its files stay, the account goes."""
        entities = [self.get(u) for u in uuids]
        released = []
        async with self._lock:
            for entity in entities:
                try:
                    await entity.remove_account()
                except Exception as exc:  # noqa: BLE001
                    log.warning("VM %s: account removal failed: %s", entity.uuid, exc)
                await entity.stop()
                del self.entities[entity.uuid]
                await self.store.remove(entity.uuid)
                await self.agent.permissions.store.delete_entity(entity.jid)
                released.append(entity.jid)
        for jid in released:
            await self._push_hypervisor("unmanage", jid)
        return released

    # ----------------------------------------------------------- orginfo
    async def set_orginfo(self, uuid: str, fields: dict[str, str]) -> VMEntity:
        entity = self.get(uuid)
        new_name = fields.pop("FN", None)
        if new_name and new_name != entity.name:
            validate_name(new_name)
            if await self._name_taken(new_name):
                raise Conflict(f"a virtual machine named '{new_name}' already exists")
            dom = await self.agent.libvirt.lookup(entity.uuid)
            if await self.agent.libvirt.call(dom.isActive):
                raise Conflict("the VM must be stopped to be renamed")
            await self.agent.libvirt.call(dom.rename, new_name, 0)
            entity.name = entity.record.name = new_name
            await self.store.update(entity.uuid, name=new_name)
        orginfo = dict(entity.record.orginfo)
        orginfo.update({k: v for k, v in fields.items() if k in ORGINFO_FIELDS})
        entity.record.orginfo = orginfo
        await self.store.update(entity.uuid, orginfo=orginfo)
        await entity.republish_vcard()
        return entity

    # ------------------------------------------------------------ events
    async def on_lifecycle(self, uuid: str, event: int, detail: int) -> None:
        entity = self.entities.get(uuid)
        if entity is not None:
            await entity.on_lifecycle(event, detail)
