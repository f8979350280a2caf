"""The VMs of this hypervisor: allocation, freeing, cloning, adoption, reconciliation.

One object owns the map uuid → VM entity, the VM database and the VM folders
on the shared storage, so every path that creates or removes a VM goes
through the same steps (and the same order of steps) whatever transport
asked for it.

Lock rules.  ``_lock`` serialises the changes of the map, the database and
libvirt's definitions (alloc, free, clone's reservation and registration,
manage, unmanage); it is never held across a disk copy.  A clone reserves
its uuid and name under the lock, copies outside it (into its own new
folder, which it removes if anything fails or it is cancelled), and takes
the lock again to define and register.  Readers that await (reconcile)
iterate a snapshot of the map and skip entities removed meanwhile.

Stop.  The steps that must not be cut half-way (undefine → account →
rows; define → row → grant) run as *critical* tasks, shielded from
cancellation; :meth:`VMManager.close` refuses new changes, cancels the clone
copies in flight (each removes its own folder), and waits for all of them
before it stops the entities and closes the database, so a stop leaves
every VM either fully present or fully freed, and no half-copied clone.
"""
from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import shutil
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

import libvirt

from ..commands.payload import local_name
from ..errors import Conflict, LibvirtFailure, NotFound, Unavailable
from ..quotas import owner_of, parse_xml
from .records import VMRecord, VMStore, new_password, now_iso
from ..storage.health import require_writable
from ..values import validate_name
from ..virt import domainxml
from ..virt.policy import PolicyContext, check_domain
from ..vm.commands import UNDEFINE_FLAGS
from ..vm.entity import ORGINFO_FIELDS, VMEntity

if TYPE_CHECKING:  # pragma: no cover
    from ..agent import Agent

log = logging.getLogger(__name__)

TRASH = ".trash"
COPY_CHUNK = 8 * 1024 * 1024
# Entities built per turn of the loop at start: those built first log in while the next are built.
LOAD_CHUNK = 50
# The longest the garbage collector stays paused while the entities loaded at start log in (load()).
STARTUP_FREEZE = 120

Progress = Callable[[int], Awaitable[None]]



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


def _copy_chunk(fin, fout) -> int:
    """Copy one chunk (blocking, storage pool); a chunk of zeros becomes a hole (images stay sparse)."""
    chunk = fin.read(COPY_CHUNK)
    if chunk.count(0) == len(chunk):
        fout.seek(len(chunk), 1)
    else:
        fout.write(chunk)
    return len(chunk)


def _finish_copy(fin, fout, src: Path, dst: Path, size: int) -> None:
    fout.truncate(size)  # a trailing hole
    fin.close()
    fout.close()
    shutil.copystat(src, dst)


def _close_quietly(*files) -> None:
    for f in files:
        try:
            f.close()
        except OSError:
            pass


def _list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.exists() else []


class VMManager:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.store: VMStore | None = None
        self.entities: dict[str, VMEntity] = {}
        self._lock = asyncio.Lock()  # alloc/free/clone/manage change the map one at a time (module doc)
        self._reserved_names: set[str] = set()  # names of clones being copied
        self._critical: set[asyncio.Task] = set()  # steps a stop must let finish
        self._copies: set[asyncio.Task] = set()  # clone copies a stop cancels (they clean up)
        self._closing = False
        self._gone_listeners: list[Callable[[str, str], Awaitable[None]]] = []

    def add_gone_listener(self, listener: Callable[[str, str], Awaitable[None]]) -> None:
        """``await listener(uuid, jid)`` after a VM is freed or unmanaged here.  What a feature
        module keeps per VM (tags, OOM value, jobs) goes with it, so a domain managed again
        later, under the same JID, starts clean.  A VM that migrates or is parked keeps it."""
        self._gone_listeners.append(listener)

    def remove_gone_listener(self, listener: Callable[[str, str], Awaitable[None]]) -> None:
        if listener in self._gone_listeners:
            self._gone_listeners.remove(listener)

    async def _tell_gone(self, entities: list[VMEntity]) -> None:
        for entity in entities:
            for listener in list(self._gone_listeners):
                try:
                    await listener(entity.uuid, entity.jid)
                except Exception:  # noqa: BLE001 - a module's clean-up never fails the free
                    log.exception("clean-up after VM %s left failed in %r", entity.uuid, listener)

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
        """Every check a definition passes before libvirt sees it, in one place: the
        definition policy (in the storage pool: it resolves paths on the shared storage,
        and a hung NFS mount answers -48 instead of stalling anything), then the disk
        guard (formats pinned, backing chains confined: storage/images.py).  ``owner``:
        the VM's owner (None: judged as a non-admin's VM, the stricter policy)."""
        ctx = await self.policy_context(uuid, name, owner)
        root = await self.agent.fs.call(check_domain, xml, ctx, what="check a definition")
        await self.agent.disk_guard.check_definition(uuid, root)
        return root

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
        networks = self.agent.module_services.get("network")  # modules/network.py: rights per network
        allowed_networks = await networks.usable(owner) if networks is not None else vm.allowed_networks
        return PolicyContext(
            uuid=uuid, name=name, vm_folder=self.folder(uuid).resolve(), allow_host_devices=vm.enable_block_device_access,
            allowed_networks=allowed_networks, allowed_bridges=vm.allowed_bridges,
            library_paths=tuple(self.agent.library_paths),  # declared by the storage module
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
        """Names are unique across managed entities, clones being copied and every libvirt domain (one RPC)."""
        if name in self._reserved_names or any(e.name == name for e in self.entities.values()):
            return True
        try:
            await self.agent.libvirt.call("lookupByName", name)
        except LibvirtFailure as exc:
            if exc.code == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise
        return True

    def _start_entity(self, entity: VMEntity) -> None:
        """Log the entity in; the agent's login gate (xmpp/ratelimit.py) paces the attempts."""
        entity.start()

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

    # ------------------------------------------------- critical sections
    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise Unavailable("the agent is stopping")

    async def _run_critical(self, coro: Awaitable):
        """Run ``coro`` to its end even if the caller is cancelled (a stop); :meth:`close` waits for it."""
        task = asyncio.ensure_future(coro)
        self._critical.add(task)
        task.add_done_callback(self._critical_done)
        return await asyncio.shield(task)

    def _critical_done(self, task: asyncio.Task) -> None:
        self._critical.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("critical VM operation failed: %s", task.exception())  # the caller reports it

    async def _announce_gone(self, entity: VMEntity, status: str) -> None:
        """Unavailable presence, then the account goes (ejabberd's removal tells no subscriber)."""
        try:
            await entity.remove_account(status=status)
        except Exception as exc:  # noqa: BLE001 - the account must not block the removal
            log.warning("VM %s: account removal failed: %s", entity.uuid, exc)
        await entity.stop()

    # ------------------------------------------------------- start / stop
    async def open(self) -> None:
        self.store = await VMStore.open(self.agent.config.hypervisor.database_path)

    async def load(self) -> None:
        """Rebuild the entities from the database; running domains are never touched."""
        started = time.monotonic()
        records = await self.store.all()
        if records:
            # The start builds ~1,000 objects per entity that live as long as the agent, then
            # each login adds its stream's.  The collector would scan the growing heap again and
            # again (with 1,000 entities: building them took twice as long with it on, and three
            # full passes of 0.3 s came during the logins).  It is paused until every entity is
            # online (or STARTUP_FREEZE); the start makes next to no cyclic garbage.
            gc.disable()
        try:
            for index, record in enumerate(records, 1):
                self._start_entity(self._new_entity(record))
                if index % LOAD_CHUNK == 0:
                    await asyncio.sleep(0)  # the entities already built go on logging in
        except BaseException:
            gc.enable()
            raise
        log.info("%d VM entities loaded from the database", len(self.entities))
        if records:
            self.agent.spawn(self._after_start(started), name="vms-online")

    async def _after_start(self, since: float) -> None:
        """One line when every entity loaded at start is online (one per entity would be 1,000);
        then the collector runs again."""
        entities = list(self.entities.values())
        try:
            await asyncio.wait_for(asyncio.gather(*(e.online.wait() for e in entities)), STARTUP_FREEZE)
            log.info("%d VM entities online %.1f s after the agent started loading them",
                     len(entities), time.monotonic() - since)
        except asyncio.TimeoutError:
            offline = sum(1 for e in entities if not e.online.is_set() and self.entities.get(e.uuid) is e)
            log.warning("%d of %d VM entities still offline %.0f s after the agent started loading them",
                        offline, len(entities), time.monotonic() - since)
        finally:
            gc.enable()

    async def reconcile(self) -> dict[str, list[str]]:
        """Compare the database with libvirt and report drift; change nothing destructive.

        Runs after start and after every libvirt reconnection: presences are
        refreshed from libvirt, an entity whose domain exists nowhere is
        reported (and shows "Not defined"), never silently deleted.
        """
        domains = {d.uuid: d for d in await self.agent.libvirt.list_domains()}
        report = {"missing_domain": [], "unmanaged_domains": []}
        # A snapshot: alloc/free may change the map while this awaits (refresh_state).
        live = [(uuid, entity) for uuid, entity in list(self.entities.items()) if not entity._stopping]

        def still_managed(uuid: str, entity) -> bool:
            return self.entities.get(uuid) is entity and not entity._stopping  # not freed meanwhile

        async def refresh(uuid: str, entity) -> None:
            if still_managed(uuid, entity):
                await entity.refresh_state()
        # All at once: the state reads requested together share one libvirt read (virt/states.py).
        await asyncio.gather(*(refresh(uuid, entity) for uuid, entity in live))
        for uuid, entity in live:
            if uuid not in domains and still_managed(uuid, entity):
                report["missing_domain"].append(uuid)
                log.warning("VM %s (%s): its libvirt domain is gone (entity kept, shown as Not defined)", entity.name, uuid)
        report["unmanaged_domains"] = sorted(u for u, d in domains.items() if d.persistent and u not in self.entities)
        if report["unmanaged_domains"]:
            log.info("%d libvirt domains are not managed by the agent (see rostervm / manage)", len(report["unmanaged_domains"]))
        return report

    def refuse_changes(self) -> None:
        """From now on alloc/free/clone/manage/unmanage answer ``-48`` (the agent is stopping)."""
        self._closing = True

    async def close(self) -> None:
        """Refuse new changes, let the critical steps in flight finish, then stop the entities."""
        self.refuse_changes()
        for copy in list(self._copies):
            copy.cancel()
        while self._critical or self._copies:
            await asyncio.gather(*self._critical, *self._copies, return_exceptions=True)
        await asyncio.gather(*(e.stop() for e in list(self.entities.values())), return_exceptions=True)
        if self.store:
            await self.store.close()

    # --------------------------------------------------------------- alloc
    async def alloc(self, requester: str, *, name: str | None, orginfo: dict[str, str], definition: ET.Element | None) -> VMEntity:
        require_writable(self.agent, "alloc")
        self._refuse_if_closing()
        entity = await self._run_critical(self._alloc(requester, name, orginfo, definition))
        await self._push_hypervisor("alloc", entity.jid)
        return entity

    async def _alloc(self, requester: str, name: str | None, orginfo: dict[str, str], definition: ET.Element | None) -> VMEntity:
        async with self.agent.quotas.reserve(requester), self._lock:  # quota lock first, always (quotas.py)
            self._refuse_if_closing()
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
                xml = _serialise(root)
            else:
                xml = domainxml.default_domain(uuid, name, domain_type=await self._domain_type())
            await self.agent.quotas.check_new(requester, parse_xml(xml), sender=requester)  # quotas.py
            await self.agent.fs.call(folder.mkdir, parents=True, exist_ok=True, what="mkdir of the VM folder")
            await self.agent.libvirt.call("defineXML", xml)
            entity = await self._register(requester, uuid, name, orginfo)
        log.info("allocated VM %s (%s) for %s", name, uuid, requester)
        return entity

    async def _register(self, requester: str, uuid: str, name: str, orginfo: dict[str, str]) -> VMEntity:
        """Row, owner's ``all``, entity (under the lock, once the domain is defined)."""
        record = VMRecord(uuid=uuid, jid=self.jid_for(uuid), password=new_password(self.agent.config.vm.password_size),
                          name=name, created=now_iso(), owner=requester, orginfo=orginfo)
        await self.store.add(record)
        await self.agent.permissions.set_permission(record.jid, "vm", requester, "all", True)
        entity = self._new_entity(record)
        entity.pending_subscribe = requester
        self._start_entity(entity)
        return entity

    # ---------------------------------------------------------------- free
    async def free(self, uuid_or_jid: str) -> str:
        """Destroy and undefine the domain, remove the account and rows; trash the folder."""
        entity = self.get(uuid_or_jid)
        require_writable(self.agent, "free")  # the folder moves to the trash
        self._refuse_if_closing()
        await self._run_critical(self._free_and_tell(entity))
        await self._push_hypervisor("free", entity.jid)
        return entity.jid

    async def _free_and_tell(self, entity: VMEntity) -> None:
        await self._free(entity)
        await self._tell_gone([entity])  # outside the lock, inside the critical task: a stop waits for it

    async def _free(self, entity: VMEntity) -> None:
        async with self._lock:
            self._refuse_if_closing()
            uuid = entity.uuid
            if self.entities.get(uuid) is not entity:
                raise NotFound(f"no virtual machine {uuid} on this hypervisor")  # freed meanwhile
            entity.set_busy("Freeing...")
            try:
                dom = await self.agent.libvirt.lookup(uuid)
            except NotFound:
                dom = None
            if dom is not None:
                if await self.agent.libvirt.call(dom.isActive):
                    await self.agent.libvirt.call(dom.destroy)
                await self.agent.libvirt.call(dom.undefineFlags, UNDEFINE_FLAGS)
            await self._forget(entity, "Freed")
            trashed = await self.agent.fs.call(self._trash_folder, uuid, what="move of the VM folder to the trash")
        log.info("freed VM %s (%s); folder %s", entity.name, uuid, trashed or "absent")

    async def _forget(self, entity: VMEntity, status: str) -> None:
        """The one teardown of an entity (free, unmanage): offline, account, map, record, rights."""
        await self._announce_gone(entity, status)
        del self.entities[entity.uuid]
        await self.store.remove(entity.uuid)
        await self.agent.permissions.store.delete_entity(entity.jid)

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
        """Copy an off VM: new UUID and MACs, disks in the VM folder copied with progress pushes.

        The uuid and name are reserved under the lock, the copy runs outside
        it (alloc and free of others go on meanwhile), and the definition and
        registration take the lock again.  If anything fails or the clone is
        cancelled, its own new folder is removed.
        """
        src = self.get(source)
        require_writable(self.agent, "clone")
        self._refuse_if_closing()
        dom = await self.agent.libvirt.lookup(src.uuid)
        state, _ = await self.agent.libvirt.call(dom.state)
        if state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
            raise Conflict(f"the source VM '{src.name}' must be shut off to be cloned")
        xml = await self.agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
        async with self.agent.quotas.reserve(requester):  # the owner's quota stays reserved until the copy registers
            async with self._lock:
                self._refuse_if_closing()
                uuid = str(uuidlib.uuid4())
                name = validate_name(name) if name else f"{src.name}-clone"
                if await self._name_taken(name):
                    raise Conflict(f"a virtual machine named '{name}' already exists")
                await self.agent.quotas.check_clone(requester, src, sender=requester)  # quotas.py
                self._reserved_names.add(name)
            src_folder, new_folder = self.folder(src.uuid), self.folder(uuid)
            src.set_busy("Cloning...")
            try:
                await self.agent.fs.call(new_folder.mkdir, parents=True, exist_ok=False, what="mkdir of the clone's folder")
                copy = asyncio.ensure_future(self._copy_clone(xml, src_folder, new_folder, uuid, name, requester))
                self._copies.add(copy)  # a stop cancels it (and waits for its clean-up)
                copy.add_done_callback(self._copies.discard)
                root = await copy
                # from here on the outcome is decided by the critical task alone (a stop lets it finish)
                entity = await self._run_critical(self._define_clone(requester, uuid, name, root, src, new_folder))
            finally:
                self._reserved_names.discard(name)
                src.set_busy(None)
        await self._push_hypervisor("clone", entity.jid, source=src.jid)
        return entity

    async def _copy_clone(self, xml: str, src_folder: Path, new_folder: Path, uuid: str, name: str, requester: str):
        """Copy the files and check the new definition; failed or cancelled, the new folder goes."""
        try:
            files = await self.agent.fs.call(_list_files, src_folder, what="listing of the source folder")
            path_map = {str(p): str(new_folder / p.name) for p in files}
            await self._copy_with_progress(files, new_folder, uuid)
            new_xml = domainxml.clone_domain(xml, uuid=uuid, name=name, path_map=path_map)
            root = await self.checked_definition(new_xml, uuid, name, requester)  # the copies, read as the source's records say
            return root
        except BaseException:
            await self._run_critical(self._remove_folder(new_folder))
            raise

    async def _define_clone(self, requester: str, uuid: str, name: str, root, src: VMEntity, folder: Path) -> VMEntity:
        """Define and register the copy; on failure undo the definition and remove the copied folder."""
        defined = False
        try:
            async with self._lock:
                self._refuse_if_closing()
                await self.agent.libvirt.call("defineXML", _serialise(root))
                defined = True
                return await self._register(requester, uuid, name, dict(src.record.orginfo))
        except BaseException:
            if defined:
                try:
                    dom = await self.agent.libvirt.lookup(uuid)
                    await self.agent.libvirt.call(dom.undefineFlags, UNDEFINE_FLAGS)
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not undefine the failed clone %s: %s", uuid, exc)
            await self._remove_folder(folder)
            raise

    async def _remove_folder(self, folder: Path) -> None:
        """A failed clone's own new folder: nothing else ever used it, so it is deleted, not trashed."""
        try:
            await self.agent.fs.call(shutil.rmtree, folder, ignore_errors=True, what="removal of a failed clone's folder")
        except Exception as exc:  # noqa: BLE001 - report, the clone's own error matters more
            log.warning("could not remove the folder %s of a failed clone: %s", folder, exc)

    async def _copy_with_progress(self, files: list[Path], dest: Path, uuid: str) -> None:
        """Chunk by chunk in the storage pool: a hung storage times out, a stop cancels between chunks."""
        fs = self.agent.fs
        sizes = [await fs.call(lambda p=p: p.stat().st_size, what="stat of a disk to clone") for p in files]
        total, done, last = max(1, sum(sizes)), 0, -1
        for path, size in zip(files, sizes):
            target = dest / path.name
            fin = await fs.call(open, path, "rb", what="open of a disk to clone")
            try:
                fout = await fs.call(open, target, "xb", what="creation of a cloned disk")
            except BaseException:
                await fs.call(_close_quietly, fin)
                raise
            try:
                while copied := await fs.call(_copy_chunk, fin, fout, what="copy of a disk chunk"):
                    done += copied
                    pct = done * 100 // total
                    if pct >= last + 10:
                        last = pct
                        self.agent.spawn(self._push_hypervisor("cloning", self.jid_for(uuid), progress=pct), name="clone-progress")
                await fs.call(_finish_copy, fin, fout, path, target, size, what="end of a disk copy")
            except BaseException:
                await asyncio.shield(fs.call(_close_quietly, fin, fout))
                raise

    # -------------------------------------------------------------- define
    async def define(self, entity: VMEntity, definition: ET.Element, sender: str | None = None) -> None:
        require_writable(self.agent, "define")
        root = await self.checked_definition(plain_xml(definition), entity.uuid, entity.name, entity.record.owner)
        async with self.agent.quotas.reserve(owner_of(entity, sender)):  # quotas.py: check + define as one step
            await self.agent.quotas.check_define(entity, root, sender=sender)
            await self.agent.libvirt.call("defineXML", _serialise(root))

    # ------------------------------------------------------ manage/unmanage
    async def manage(self, requester: str, uuids: list[str]) -> list[str]:
        """Adopt existing libvirt domains as entities (same UUID, same XML)."""
        self._refuse_if_closing()
        adopted = await self._run_critical(self._manage(requester, uuids))
        for jid in adopted:
            await self._push_hypervisor("manage", jid)
        return adopted

    async def _manage(self, requester: str, uuids: list[str]) -> list[str]:
        adopted = []
        async with self._lock:
            self._refuse_if_closing()
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
                entity = await self._register(requester, uuid, domains[uuid].name, {})
                adopted.append(entity.jid)
        return adopted

    async def unmanage(self, uuids: list[str]) -> list[str]:
        """Release entities: the domain and its files stay, the account goes."""
        entities = [self.get(u) for u in uuids]
        self._refuse_if_closing()
        released = await self._run_critical(self._unmanage_and_tell(entities))
        for jid in released:
            await self._push_hypervisor("unmanage", jid)
        return released

    async def _unmanage_and_tell(self, entities: list[VMEntity]) -> list[str]:
        released = await self._unmanage(entities)
        await self._tell_gone([e for e in entities if e.jid in released])
        return released

    async def _unmanage(self, entities: list[VMEntity]) -> list[str]:
        released = []
        async with self._lock:
            self._refuse_if_closing()
            for entity in entities:
                if self.entities.get(entity.uuid) is not entity:
                    continue  # freed or unmanaged meanwhile
                await self._forget(entity, "Unmanaged")
                released.append(entity.jid)
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

    # ------------------------------------------------------------ migration
    async def release_migrated(self, entity: VMEntity, status: str = "Migrated", change: str | None = "migrated") -> None:
        """The VM now lives on another hypervisor (or is parked: ``status="Parked"``): close its
        stream here (the account is kept, so it is not removed), forget its record and rights
        (they went in the hand-over file, hypervisor/migrations.py, or the parking record)."""
        async with self._lock:
            if self.entities.get(entity.uuid) is not entity:
                return
            await self.store.remove(entity.uuid)
            await self.agent.permissions.store.delete_entity(entity.jid)
            del self.entities[entity.uuid]  # last: rostervm no longer listing it means all is forgotten
            await entity.stop(status=status)
            self.agent.published.forget(entity.jid)  # another agent publishes for it now
        if change:
            await self._push_hypervisor(change, entity.jid)

    async def adopt_migrated(self, record: VMRecord, grants: list[tuple]) -> VMEntity:
        """A VM arrived by migration: its record, its rights, its entity with our resource."""
        async with self._lock:
            if record.uuid in self.entities:
                return self.entities[record.uuid]
            await self.store.add(record)
            for target_type, target, permission, value in grants:
                await self.agent.permissions.store.set_grant(record.jid, target, permission, bool(value),
                                                             target_type=target_type)
            entity = self._new_entity(record)
            self._start_entity(entity)
        await self._push_hypervisor("arrived", record.jid)
        return entity

    # ------------------------------------------------------------ events
    async def on_lifecycle(self, uuid: str, event: int, detail: int) -> None:
        entity = self.entities.get(uuid)
        if entity is not None:
            await entity.on_lifecycle(event, detail)
