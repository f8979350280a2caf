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
        agent, conn = self.agent, self.agent.libvirt
        started = time.monotonic()
        state, _ = await conn.call(dom.state)
        running = state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)
        arrived = self._wait_own_presence(entity, dest_resource)
        poller = agent.spawn(self._progress(entity, dom), name=f"migrate-progress-{entity.uuid}") if running else None
        try:
            await conn.call(dom.migrateToURI3, uri, {}, policy.migration_flags(running, unsafe=True), slow=True)
        except (LibvirtFailure, Unavailable) as exc:
            if poller:
                poller.cancel()
            arrived.cancel()
            await self._failed(entity, dom, exc)
            return
        if poller:
            poller.cancel()
        log.info("VM %s migrated to %s in %.2fs", entity.uuid, uri, time.monotonic() - started)
        try:
            await asyncio.wait_for(arrived, 30)
        except asyncio.TimeoutError:
            log.warning("VM %s: no presence from %s after the migration; forgetting it anyway",
                        entity.uuid, dest_resource)
        await agent.vms.release_migrated(entity)
        self.outgoing.discard(entity.uuid)

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
        while True:
            try:
                info = await self.agent.libvirt.call(dom.jobInfo)
            except (LibvirtFailure, Unavailable):
                info = None
            entity.set_busy(policy.status_text(policy.progress_percent(info or [])))
            await asyncio.sleep(0.5)

    async def _failed(self, entity, dom, exc) -> None:
        """The source still has the VM unless libvirt says otherwise (policy.decide_outcome)."""
        conn = self.agent.libvirt
        try:
            state, _ = await conn.call(dom.state)
        except (LibvirtFailure, Unavailable):
            state = None
        side = {libvirt.VIR_DOMAIN_RUNNING: policy.Side.RUNNING, libvirt.VIR_DOMAIN_PAUSED: policy.Side.PAUSED,
                libvirt.VIR_DOMAIN_SHUTOFF: policy.Side.SHUTOFF}.get(state, policy.Side.ABSENT)
        # p2p: the source libvirtd aborts and cleans the destination when the migration fails
        outcome = policy.decide_outcome(side, policy.Side.ABSENT)
        log.warning("VM %s: migration failed (%s): %s", entity.uuid, exc, outcome.reason)
        if outcome.keep is policy.Keep.SOURCE and outcome.resume:
            try:
                await conn.call(dom.resume)
            except (LibvirtFailure, Unavailable) as resume_exc:
                log.warning("VM %s: resume after a failed migration failed: %s", entity.uuid, resume_exc)
        await self.agent.fs.call(remove_handover, self._handover_path(entity.uuid), what="hand-over removal")
        entity.migrating = False
        self.outgoing.discard(entity.uuid)
        entity.set_busy(None)
        await entity.refresh_state()
        await entity.push("virtualmachine:control", "migrationfailed")

    # ------------------------------------------------------- destination
    async def prepare_incoming(self, entity, sender: str, requester: str, uuid: str) -> None:
        """Checks of the destination: a peer asks, for a user holding ``migrate`` here."""
        if not is_peer(entity, sender):
            raise PermissionDenied("only a peer hypervisor may prepare a migration")
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

    async def adopt_arrived(self) -> list[str]:
        """At start, after the records are loaded: a persistent domain nobody manages here whose
        folder still holds a hand-over file arrived while this agent was down (the libvirtds
        finished the migration without it): adopt it."""
        adopted = []
        for domain in await self.agent.libvirt.list_domains():
            if not domain.persistent or domain.uuid in self.agent.vms.entities:
                continue
            path = self._handover_path(domain.uuid)
            if await self.agent.fs.call(os.path.lexists, path, what="hand-over lookup"):
                await self._adopt(domain.uuid)
                adopted.append(domain.uuid)
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
