"""Live migration between peer hypervisors: the source's run and the destination's adoption.

The decisions are in :mod:`.migration` (pure); this module does the I/O.

* **Source** (``archipel:vm:control migrate``): the destination must be an online peer
  (:mod:`.peers`); the source's hypervisor asks it ``migrationprepare`` on behalf of the
  requester (the destination checks ``migrate`` on itself for that user and answers its
  migration URI), writes the *hand-over file* next to the disks, then runs libvirt's
  peer-to-peer migration in the slow lane, showing ``Migrating - N%`` from the job info.
  Meanwhile the VM answers -43 to every command but info/xmldesc/networkinfo/capabilities.
  When the VM's entity is online from the destination, the source forgets it (stream closed,
  record and rights deleted; the account stays: it moved).
* **Destination**: a domain it was told to expect arrives (libvirt ``RESUMED``/migrated for a
  running VM, ``DEFINED`` of a shut-off one): it reads the hand-over file, records the VM,
  restores its rights and starts the entity with its own resource.

The hand-over file ``<vm folder>/.archipel-handover.json`` (root, 0600, on the shared
storage) carries the VM's record (JID, XMPP password, name, owner, vCard fields) and its
permission rows: the password never travels in domain XML, chat, pushes or logs.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import slixmpp

from ..errors import Conflict, InvalidArgument, LibvirtFailure, NotFound, PermissionDenied, Unavailable
from . import migration as policy
from .peers import is_peer
from .records import VMRecord

log = logging.getLogger(__name__)

HANDOVER = ".archipel-handover.json"
NS = "archipel:hypervisor:control"
INCOMING_TTL = 600.0  # seconds an announced migration may take to arrive
SETTLE_TIMEOUT = 15.0  # seconds the source's domain may take to settle after libvirt's job ends


def write_handover(path: Path, data: dict) -> None:
    """Root-only file (0600), never followed through a symlink; fsync'd (shared storage)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(data).encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_handover(path: Path) -> dict:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return json.loads(f.read(1 << 20))


def remove_handover(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def existing(paths: list[Path]) -> set[Path]:
    """Which of ``paths`` exist (links included): one storage call for an agent's 1,000 VMs at start."""
    return {path for path in paths if os.path.lexists(path)}


def disk_sources(xml: str) -> list[str]:
    """Paths of the domain's file disks (the definition comes from libvirt, not from a user)."""
    root = ET.fromstring(xml)
    paths = []
    for disk in root.iter("disk"):
        source = disk.find("source")
        if source is not None and source.get("file"):
            paths.append(source.get("file"))
    return paths


class Migrations:
    """Migrations this agent runs (outgoing) and expects (incoming)."""

    def __init__(self, agent):
        self.agent = agent
        self.incoming: dict[str, float] = {}  # uuid -> deadline (monotonic)
        self.outgoing: set[str] = set()
        self.cancelling: set[str] = set()  # cancel asked: abort the job as soon as it exists
        self.ended: dict[str, asyncio.Future] = {}  # uuid -> True (moved) / False (stayed), for evacuation

    def _handover_path(self, uuid: str) -> Path:
        return self.agent.vms.folder(uuid) / HANDOVER

    # ------------------------------------------------------------ source
    async def start(self, entity, requester: str, destination: str) -> None:
        """Check, prepare with the destination, then run the migration in the background."""
        agent = self.agent
        if "/" not in destination:
            raise InvalidArgument("hypervisorjid", "must be the destination's full JID (with its resource)")
        dom = await entity.domain()
        xml = await agent.libvirt.call(dom.XMLDesc, 0)
        reason = policy.refusal(agent.hypervisor.jid, destination, migrating=entity.uuid in self.outgoing,
                                domain_type=ET.fromstring(xml).get("type", ""), disk_paths=disk_sources(xml),
                                base_path=str(agent.vms.base_path))
        if reason:
            raise Conflict(f"cannot migrate: {reason}")
        if not is_peer(agent.hypervisor, destination):
            raise InvalidArgument("hypervisorjid", f"{destination} is not an online peer hypervisor "
                                                   f"(group {agent.config.hypervisor.peers_group})")
        self.outgoing.add(entity.uuid)
        try:
            uri = await self._prepare(destination, requester, entity.uuid)
            record = entity.record
            rows = await agent.permissions.store.targets(entity.jid)
            data = {"uuid": record.uuid, "jid": record.jid, "password": record.password, "name": record.name,
                    "created": record.created, "owner": record.owner, "orginfo": record.orginfo,
                    "grants": [list(row) for row in rows], "source": agent.hypervisor.jid}
            await agent.fs.call(write_handover, self._handover_path(entity.uuid), data,
                                what="hand-over file of a migrating VM")
        except BaseException:
            self.outgoing.discard(entity.uuid)
            raise
        entity.migrating = True
        entity.set_busy(policy.status_text(None))
        self.ended[entity.uuid] = asyncio.get_running_loop().create_future()
        agent.spawn(self._run(entity, dom, uri, destination.split("/", 1)[1]), name=f"migrate-{entity.uuid}")

    async def _prepare(self, destination: str, requester: str, uuid: str) -> str:
        hv = self.agent.hypervisor
        iq = hv.xmpp.make_iq_set(ito=destination)
        query = ET.Element(f"{{{NS}}}query")
        ET.SubElement(query, f"{{{NS}}}archipel", {"action": "migrationprepare", "requester": requester, "uuid": uuid})
        iq.append(query)
        try:
            reply = await iq.send(timeout=15)
        except slixmpp.exceptions.IqError as exc:
            error = exc.iq.xml.find("{jabber:client}error")
            text = exc.iq["error"]["text"] or exc.iq["error"]["condition"]
            if error is not None and error.find("{archipel:error:permission}*") is not None or \
                    exc.iq["error"]["condition"] == "forbidden":
                raise PermissionDenied(f"the destination refused: {text}") from None
            raise Conflict(f"the destination refused: {text}") from None
        except slixmpp.exceptions.IqTimeout:
            raise Unavailable(f"{destination} did not answer") from None
        info = reply.xml.find(f"{{{NS}}}query/{{{NS}}}migration")
        if info is None:
            info = reply.xml.find(f".//{{{NS}}}migration")
        if info is None or not info.get("libvirt_uri"):
            raise Conflict("the destination gave no migration URI")
        return info.get("libvirt_uri")

    async def _run(self, entity, dom, uri: str, dest_resource: str) -> None:
        try:
            await self._migrate(entity, dom, uri, dest_resource)
        finally:
            self._end(entity.uuid, False)  # no-op once ended; an unexpected error must not hang a waiter

    async def _migrate(self, entity, dom, uri: str, dest_resource: str) -> None:
        agent, conn = self.agent, self.agent.libvirt
        started = time.monotonic()
        state, _ = await conn.call(dom.state)
        running = state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)
        arrived = self._wait_own_presence(entity, dest_resource)
        poller = agent.spawn(self._progress(entity, dom), name=f"migrate-progress-{entity.uuid}") if running else None
        try:
            if entity.uuid in self.cancelling:
                raise LibvirtFailure("migration cancelled before it started")
            await conn.call(dom.migrateToURI3, uri, {}, policy.migration_flags(running, unsafe=True), slow=True)
        except (LibvirtFailure, Unavailable) as exc:
            if poller:
                poller.cancel()
            arrived.cancel()
            await self._failed(entity, dom, exc)
            return
        if poller:
            poller.cancel()
        self.cancelling.discard(entity.uuid)  # too late: the VM is on the destination
        log.info("VM %s migrated to %s in %.2fs", entity.uuid, uri, time.monotonic() - started)
        try:
            await asyncio.wait_for(arrived, 30)
        except asyncio.TimeoutError:
            log.warning("VM %s: no presence from %s after the migration; forgetting it anyway",
                        entity.uuid, dest_resource)
        await agent.vms.release_migrated(entity)
        self.outgoing.discard(entity.uuid)
        self._end(entity.uuid, True)

    def _end(self, uuid: str, moved: bool) -> None:
        future = self.ended.pop(uuid, None)
        if future is not None and not future.done():
            future.set_result(moved)

    async def wait(self, uuid: str) -> bool:
        """Until the migration of ``uuid`` this agent started ends: True if the VM moved."""
        future = self.ended.get(uuid)
        return True if future is None else await asyncio.shield(future)

    def _wait_own_presence(self, entity, resource: str) -> asyncio.Future:
        """Resolves when the VM's account is online from ``resource`` (the destination's agent)."""
        future = asyncio.get_running_loop().create_future()

        def seen(presence):
            if presence["from"].bare == entity.jid and presence["from"].resource == resource \
                    and not future.done():
                future.set_result(True)
        entity.xmpp.add_event_handler("presence_available", seen)
        future.add_done_callback(lambda _f: entity.xmpp.del_event_handler("presence_available", seen))
        return future

    async def _progress(self, entity, dom) -> None:
        """``Migrating - N%`` from libvirt's job info every 0.5 s (slow lane: the query waits
        on QEMU's monitor); a push at each new tenth; a pending cancel aborts the job as soon
        as libvirt has one.  One task per running migration, no thread."""
        pushed = None
        while True:
            try:
                info = await self.agent.libvirt.call(dom.jobInfo, slow=True)
            except (LibvirtFailure, Unavailable):
                info = None
            if entity.uuid in self.cancelling and info and info[0] != 0:
                await self._abort(dom)
            percent = policy.progress_percent(info or [])
            entity.set_busy(policy.status_text(percent))
            if percent is not None and percent // 10 != pushed:
                pushed = percent // 10
                await entity.push("virtualmachine:control", "migrating",
                                  [ET.Element("migration", {"percent": str(percent)})])
            await asyncio.sleep(0.5)

    async def cancel(self, entity) -> None:
        """Abort the running migration: libvirt cancels QEMU's job and the source keeps the
        VM (``_failed``).  Asked before libvirt started the job, the poller aborts it when it
        appears; asked too late (the VM already moved), nothing changes."""
        if entity.uuid not in self.outgoing:
            raise Conflict("the VM is not migrating")
        self.cancelling.add(entity.uuid)
        await self._abort(await entity.domain())

    async def _abort(self, dom) -> None:
        try:
            await self.agent.libvirt.call(dom.abortJob)
        except (LibvirtFailure, Unavailable) as exc:  # no job yet (the poller retries) or already over
            log.info("migration abort of %s: %s", dom.UUIDString(), exc)

    async def _failed(self, entity, dom, exc) -> None:
        """The source still has the VM unless libvirt says otherwise (policy.decide_outcome)."""
        conn = self.agent.libvirt
        entity._domain_cache = None  # the handle may predate a libvirt reconnection
        try:
            dom = await entity.domain()
            state, _ = await conn.call(dom.state)
        except (NotFound, LibvirtFailure, Unavailable):
            state = None
        side = {libvirt.VIR_DOMAIN_RUNNING: policy.Side.RUNNING, libvirt.VIR_DOMAIN_PAUSED: policy.Side.PAUSED,
                libvirt.VIR_DOMAIN_SHUTOFF: policy.Side.SHUTOFF}.get(state, policy.Side.ABSENT)
        # p2p: the source libvirtd aborts and cleans the destination when the migration fails
        outcome = policy.decide_outcome(side, policy.Side.ABSENT)
        log.warning("VM %s: migration failed (%s): %s", entity.uuid, getattr(exc, "__cause__", None) or exc,
                    outcome.reason)
        if outcome.keep is policy.Keep.SOURCE and outcome.resume:
            try:
                await conn.call(dom.resume)
            except (LibvirtFailure, Unavailable) as resume_exc:
                log.warning("VM %s: resume after a failed migration failed: %s", entity.uuid, resume_exc)
        await self.agent.fs.call(remove_handover, self._handover_path(entity.uuid), what="hand-over removal")
        cancelled = entity.uuid in self.cancelling
        self.cancelling.discard(entity.uuid)
        entity.migrating = False
        self.outgoing.discard(entity.uuid)
        entity.set_busy(None)
        await entity.refresh_state()
        self._end(entity.uuid, False)
        await entity.push("virtualmachine:control", "migrationcancelled" if cancelled else "migrationfailed")

    # ------------------------------------------------------- destination
    async def prepare_incoming(self, entity, sender: str, requester: str, uuid: str) -> None:
        """Checks of the destination: a peer asks, for a user holding ``migrate`` here."""
        if not is_peer(entity, sender):
            raise PermissionDenied("only a peer hypervisor may prepare a migration")
        self.agent.maintenance.require_off("incoming migration")
        await self.agent.permissions.require(entity.jid, "hypervisor", requester.split("/")[0], "migrate",
                                             action="migrationprepare")
        try:
            uuid = str(uuidlib.UUID(uuid))
        except ValueError:
            raise InvalidArgument("uuid", f"not a UUID: {uuid!r}") from None
        if uuid in self.agent.vms.entities:
            raise Conflict(f"VM {uuid} is already on this hypervisor")
        now = time.monotonic()
        self.incoming = {u: d for u, d in self.incoming.items() if d > now}
        self.incoming[uuid] = now + INCOMING_TTL

    async def on_lifecycle(self, uuid: str, event: int, detail: int) -> None:
        if uuid not in self.incoming:
            return
        if event == libvirt.VIR_DOMAIN_EVENT_RESUMED and detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED:
            await self._adopt(uuid)
        elif event == libvirt.VIR_DOMAIN_EVENT_DEFINED:
            try:
                dom = await self.agent.libvirt.lookup(uuid)
                active = await self.agent.libvirt.call(dom.isActive)
            except (NotFound, LibvirtFailure, Unavailable):
                return
            if not active:  # a shut-off VM moved: only its definition comes
                await self._adopt(uuid)

    async def reconcile(self) -> None:
        """At start, after the records are loaded: mend what a migration left half-done while
        this agent was down (killed mid-way on either side).

        * a domain arrived here with its hand-over file: adopt it (:meth:`adopt_arrived`);
        * a VM of ours still here with a hand-over file: if libvirtd still runs the migration
          the previous agent started, follow it to its end; else it never left: the file is
          stale and removed (the destination's expectation expires on its own);
        * a VM of ours whose domain is gone from here: if its account is online from another
          resource (the destination's agent), it moved: forget it (:meth:`_forget_if_elsewhere`).
        """
        conn = self.agent.libvirt
        domains = await conn.list_domains()
        await self.adopt_arrived(domains)
        local = {d.uuid for d in domains}
        here = {}
        for uuid, entity in list(self.agent.vms.entities.items()):
            if uuid in local:
                here[self._handover_path(uuid)] = (uuid, entity)
            else:
                self._forget_if_elsewhere(entity)
        # One storage call for all of them (1,000 VMs: one thread hand-off, not 1,000).
        found = await self.agent.fs.call(existing, list(here), what="hand-over lookup") if here else set()
        for path, (uuid, entity) in here.items():
            if path not in found or self.agent.vms.entities.get(uuid) is not entity:
                continue
            try:
                dom = await conn.lookup(uuid)
                info = await conn.call(dom.jobInfo, slow=True)
            except (NotFound, LibvirtFailure, Unavailable):
                info = None
            if info and info[0] != 0:
                log.warning("VM %s: a migration started by the previous agent still runs: following it", uuid)
                self.outgoing.add(uuid)
                entity.migrating = True
                entity.set_busy(policy.status_text(None))
                self.agent.spawn(self._follow(entity, dom), name=f"migrate-follow-{uuid}")
            else:
                await self.agent.fs.call(remove_handover, path, what="hand-over removal")
                log.warning("VM %s: stale hand-over file removed (the migration never completed; "
                            "the VM is here)", uuid)

    async def _follow(self, entity, dom) -> None:
        """A migration this agent did not start (restarted mid-way): progress until libvirt's
        job ends, then the VM is either still here (kept) or gone (forgotten once seen online
        from the destination)."""
        conn = self.agent.libvirt
        while True:
            try:
                info = await conn.call(dom.jobInfo, slow=True)
            except (LibvirtFailure, Unavailable):
                info = None
            if not info or info[0] == 0:
                break
            entity.set_busy(policy.status_text(policy.progress_percent(info)))
            await asyncio.sleep(0.5)
        if not await self._left(entity.uuid):
            await self._failed(entity, dom, "the migration did not complete")
            return
        entity.migrating = False
        self.outgoing.discard(entity.uuid)
        self._forget_if_elsewhere(entity)

    async def _left(self, uuid: str) -> bool:
        """Whether the VM left this host, from its domain here once libvirt's job is over
        (policy.source_after_job); a domain still paused is looked at again for a while,
        and kept if it does not settle.  libvirt unreachable: kept (reconciled at next start)."""
        conn = self.agent.libvirt
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                dom = await conn.lookup(uuid)
                state, reason = await conn.call(dom.state)
            except NotFound:
                state = reason = None
            except (LibvirtFailure, Unavailable):
                return False
            verdict = policy.source_after_job(state, reason)
            if verdict is not None:
                return verdict
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)

    def _forget_if_elsewhere(self, entity) -> None:
        """Forget a VM whose domain is not here once its account is seen online from another
        resource (another hypervisor's agent runs it): now if the roster already shows one,
        else at the next such presence.  Until then it stays, "Not defined"."""
        def others() -> list[str]:
            try:
                return [r for r in entity.xmpp.client_roster[entity.jid].resources if r != entity.resource]
            except KeyError:
                return []

        def seen(presence):
            if presence["from"].bare == entity.jid and presence["from"].resource != entity.resource:
                check(str(presence["from"].resource))

        def check(resource: str) -> None:
            self.agent.spawn(self._release_if_absent(entity, resource, seen), name=f"migrate-forget-{entity.uuid}")

        entity.xmpp.add_event_handler("presence_available", seen)
        for resource in others():
            check(resource)

    async def _release_if_absent(self, entity, resource: str, handler) -> None:
        if self.agent.vms.entities.get(entity.uuid) is not entity:
            entity.xmpp.del_event_handler("presence_available", handler)
            return  # already forgotten
        if not await self._left(entity.uuid):
            return  # here after all (or libvirt cannot say): not ours to forget
        log.warning("VM %s is online from %s and not defined here: it moved while this agent was "
                    "away; forgetting it", entity.uuid, resource)
        entity.xmpp.del_event_handler("presence_available", handler)
        await self.agent.vms.release_migrated(entity)

    async def adopt_arrived(self, domains=None) -> list[str]:
        """At start, after the records are loaded: a persistent domain nobody manages here whose
        folder still holds a hand-over file arrived while this agent was down (the libvirtds
        finished the migration without it): adopt it.  ``domains``: a listing already made."""
        if domains is None:
            domains = await self.agent.libvirt.list_domains()
        unmanaged = {self._handover_path(d.uuid): d.uuid for d in domains
                     if d.persistent and d.uuid not in self.agent.vms.entities}
        if not unmanaged:
            return []
        found = await self.agent.fs.call(existing, list(unmanaged), what="hand-over lookup")
        adopted = []
        for path, uuid in unmanaged.items():
            if path in found and uuid not in self.agent.vms.entities:
                await self._adopt(uuid)
                adopted.append(uuid)
        return adopted

    async def _adopt(self, uuid: str) -> None:
        self.incoming.pop(uuid, None)
        agent = self.agent
        path = self._handover_path(uuid)
        try:
            data = await agent.fs.call(read_handover, path, what="hand-over file of an arriving VM")
        except (OSError, ValueError) as exc:
            log.error("VM %s arrived but its hand-over file is unreadable: %s (left unmanaged)", uuid, exc)
            return
        if data.get("uuid") != uuid or data.get("jid") != agent.vms.jid_for(uuid):
            log.error("VM %s arrived with a hand-over file for another VM: left unmanaged", uuid)
            return
        record = VMRecord(uuid, data["jid"], data["password"], data["name"], data["created"],
                          data.get("owner", ""), data.get("orginfo") or {})
        await agent.vms.adopt_migrated(record, [tuple(row) for row in data.get("grants", [])])
        await agent.fs.call(remove_handover, path, what="hand-over removal")
        log.info("VM %s (%s) arrived from %s", record.name, uuid, data.get("source"))
