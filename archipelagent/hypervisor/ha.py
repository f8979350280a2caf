"""Restart of a dead host's HA VMs on the survivors (opt-in per VM).

* **The flag** is a file next to the VM's disks, ``<vm folder>/.archipel-ha.json`` (root,
  0600, on the shared storage, like the migration hand-over file): its presence means "HA";
  it carries what a survivor needs to bring the VM back -- the record (JID, XMPP password,
  name, owner, vCard fields), the permission rows and the inactive domain XML -- and is
  refreshed by the host running the VM at each lease renewal.  It moves with the folder.
* **The lease**: every ``ha_lease_interval`` seconds each agent writes
  ``<vm_base_path>/.archipel-ha/leases/<its JID>.json`` (its JID, the wall-clock time, the
  UUIDs of its running HA VMs), atomically (temporary file + rename), off the event loop in a
  storage pool of its own (a hung mount costs it two threads, not the agent's pool).
  A clean agent stop withdraws the lease (the host's QEMUs run on without their agent).
* **Death**: a host is dead when its lease is older than ``ha_lease_ttl`` *and* it is gone
  from XMPP presence (peers group): one signal alone (a slow storage, a lost stream) is not
  enough.
* **One taker**: the live host with the lowest JID (itself and its online peers) takes the dead
  host's lease, and only after creating ``claims/<JID>@<lease time>.claim`` with ``O_EXCL`` --
  so two survivors that disagree on who is alive still never both act on one lease.
* **Restart**: the taker places the VMs with :func:`.placement.place` over the live hosts
  (``peerinfo``) and restarts each on its host (itself, or a peer asked ``harestart``): define
  the domain from the flag file, start it, then adopt the entity (same JID, rights; our
  resource).  A start libvirt refuses -- the lock manager (virtlockd) finds the disks still
  held by the "dead" host's QEMU after a network partition -- undefines it again and is
  reported (log and the hypervisor's push ``hypervisor:ha`` ``restartfailed``): never two QEMUs
  on one disk.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt
import slixmpp

from ..commands import element
from ..config import ConfigError
from ..fsio import StorageIO
from ..errors import Conflict, InvalidArgument, LibvirtFailure, NotFound, Unavailable
from .migrations import read_handover, remove_handover, write_handover
from .peers import peers
from .placement import VM, place
from .records import VMRecord

log = logging.getLogger(__name__)

HA_FILE = ".archipel-ha.json"
HA_DIR = ".archipel-ha"
NS = "archipel:hypervisor:control"
PUSH = "hypervisor:ha"


# ------------------------------------------------------------------ pure decisions
@dataclass(frozen=True)
class Lease:
    jid: str                 # bare JID of the host
    time: float              # wall clock of its last renewal
    vms: tuple[str, ...]     # its running HA VMs then

    @classmethod
    def parse(cls, data: dict) -> "Lease":
        return cls(str(data["jid"]), float(data["time"]), tuple(str(u) for u in data.get("vms", ())))


def expired(lease: Lease, now: float, ttl: float) -> bool:
    return now - lease.time > ttl


def dead_hosts(leases: list[Lease], own: str, online: set[str], now: float, ttl: float) -> list[Lease]:
    """Leases of hosts that are dead: expired *and* absent from presence (never ourselves)."""
    return [lease for lease in leases
            if lease.jid != own and lease.jid not in online and expired(lease, now, ttl)]


def taker(own: str, online: set[str]) -> str:
    """Who acts for the dead: the lowest JID among the live hosts (deterministic)."""
    return min({own, *online})


def claim_name(lease: Lease) -> str:
    """One claim per lease instance (a host that came back and died again is a new one)."""
    return f"{lease.jid}@{lease.time:.3f}.claim"


def memory_kib(domain_xml: str) -> int:
    el = ET.fromstring(domain_xml).find("memory")
    if el is None or not (el.text or "").strip().isdigit():
        return 0
    value = int(el.text.strip())
    return value * 1024 if el.get("unit", "KiB") in ("M", "MiB") else value


def settings(config) -> tuple[float, float]:
    """``[HYPERVISOR] ha_lease_interval`` (3 s) and ``ha_lease_ttl`` (15 s)."""
    values = []
    for key, default in (("ha_lease_interval", "3"), ("ha_lease_ttl", "15")):
        raw = config.parser.get("HYPERVISOR", key, fallback=default).strip() or default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError(getattr(config, "path", "archipel.conf"), "HYPERVISOR", key,
                              f"expected a positive number of seconds, found {raw!r}")
        values.append(value)
    interval, ttl = values
    if ttl < 2 * interval:
        raise ConfigError(getattr(config, "path", "archipel.conf"), "HYPERVISOR", "ha_lease_ttl",
                          f"must be at least twice ha_lease_interval ({interval:g} s), found {ttl:g}")
    return interval, ttl


# ------------------------------------------------------------------ storage (blocking: through HA.fs)
def write_lease(folder: Path, lease: Lease) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = folder / f"{lease.jid}.json"
    tmp = folder / f".{lease.jid}.json.tmp"
    write_handover(tmp, {"jid": lease.jid, "time": lease.time, "vms": list(lease.vms)})
    os.replace(tmp, final)


def read_leases(folder: Path) -> list[Lease]:
    found = []
    if not folder.is_dir():
        return found
    for path in folder.glob("*.json"):
        try:
            found.append(Lease.parse(read_handover(path)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("HA: unreadable lease %s: %s", path.name, exc)
    return found


def claim(folder: Path, lease: Lease) -> bool:
    """Atomic on the shared storage: exactly one ``O_EXCL`` create succeeds."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(folder / claim_name(lease), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def drop_lease(folder: Path, lease: Lease) -> None:
    """Remove the dead host's lease unless it renewed it meanwhile (it came back)."""
    path = folder / f"{lease.jid}.json"
    try:
        if Lease.parse(read_handover(path)).time == lease.time:
            os.unlink(path)
    except (OSError, ValueError, KeyError):
        pass


class HA:
    def __init__(self, agent):
        self.agent = agent
        self.interval, self.ttl = settings(agent.config)
        # its own small storage pool (fsio.py): on a hung mount, the lease rounds block at most
        # these two threads and never starve the agent's pool (agent.fs) of its workers
        self.fs = StorageIO(workers=2, name="ha-io")
        self._written: dict[str, dict] = {}  # uuid -> flag-file content last written
        self.restarted: list[str] = []       # VMs this host brought back
        self.failed: dict[str, str] = {}     # uuid -> why a restart here failed

    @property
    def root(self) -> Path:
        return self.agent.vms.base_path / HA_DIR

    def _flag_path(self, uuid: str) -> Path:
        return self.agent.vms.folder(uuid) / HA_FILE

    # ---------------------------------------------------------------- the flag
    async def enabled(self, uuid: str) -> bool:
        return await self.fs.call(os.path.lexists, self._flag_path(uuid), what="HA flag lookup")

    async def set(self, entity, on: bool) -> None:
        if on:
            await self._write_flag(entity, force=True)
        else:
            self._written.pop(entity.uuid, None)
            await self.fs.call(remove_handover, self._flag_path(entity.uuid), what="HA flag removal")

    async def _write_flag(self, entity, force: bool = False) -> None:
        dom = await entity.domain()
        xml = await self.agent.libvirt.call(
            dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        record = entity.record
        rows = await self.agent.permissions.store.targets(entity.jid)
        data = {"uuid": record.uuid, "jid": record.jid, "password": record.password, "name": record.name,
                "created": record.created, "owner": record.owner, "orginfo": record.orginfo,
                "grants": [list(row) for row in rows], "domain": xml, "host": self.agent.hypervisor.jid}
        if not force and self._written.get(entity.uuid) == data:
            return
        await self.fs.call(write_handover, self._flag_path(entity.uuid), data, what="HA flag")
        self._written[entity.uuid] = data

    # ---------------------------------------------------------------- the loop
    def start(self) -> None:
        self.agent.spawn(self._loop(), name="ha-lease")

    async def _loop(self) -> None:
        try:
            await self.forget_restarted_elsewhere()
        except Exception as exc:  # noqa: BLE001 - the lease must start anyway
            log.warning("HA: checking the VMs restarted elsewhere failed: %s", exc)
        while True:
            try:
                await self.renew()
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad round must not stop the lease
                log.warning("HA: lease round failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def forget_restarted_elsewhere(self) -> list[str]:
        """At start: an HA VM of ours that is not running here and whose flag file says another
        host runs it was restarted there while we were dead: drop our (shut-off) definition --
        never the disks -- and forget the entity (its account is the other host's now)."""
        if not self.agent.libvirt.connected:
            return []
        active = {d.uuid for d in await self.agent.libvirt.list_domains()
                  if d.state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)}
        forgotten = []
        for uuid, entity in list(self.agent.vms.entities.items()):
            if uuid in active:
                continue
            try:
                data = await self.fs.call(read_handover, self._flag_path(uuid), what="HA flag")
            except (OSError, ValueError):
                continue
            host = data.get("host")
            if not host or host == self.agent.hypervisor.jid:
                continue
            try:
                dom = await self.agent.libvirt.lookup(uuid)
                await self.agent.libvirt.call(dom.undefine)
            except NotFound:
                pass
            await self.agent.vms.release_migrated(entity, status="Restarted elsewhere", change="migrated")
            log.warning("HA: VM %s was restarted on %s while this host was dead: forgotten here", uuid, host)
            forgotten.append(uuid)
        return forgotten

    async def running_ha(self) -> list[str]:
        """Our running VMs that carry the flag (their flag files refreshed)."""
        if not self.agent.libvirt.connected:
            return []
        running = {d.uuid for d in await self.agent.libvirt.list_domains()
                   if d.state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)}
        found = []
        for uuid, entity in list(self.agent.vms.entities.items()):
            if uuid in running and not entity.migrating and await self.enabled(uuid):
                await self._write_flag(entity)
                found.append(uuid)
        return sorted(found)

    async def renew(self) -> None:
        lease = Lease(self.agent.hypervisor.jid, time.time(), tuple(await self.running_ha()))
        await self.fs.call(write_lease, self.root / "leases", lease, what="HA lease")

    async def scan(self) -> None:
        hv = self.agent.hypervisor
        if hv is None or hv.xmpp is None or not hv.online.is_set():
            return  # we cannot tell who is present: never judge others dead then
        online = {p.jid for p in peers(hv) if p.online}
        leases = await self.fs.call(read_leases, self.root / "leases", what="HA leases")
        for lease in dead_hosts(leases, hv.jid, online, time.time(), self.ttl):
            if taker(hv.jid, online) != hv.jid:
                continue
            if not await self.fs.call(claim, self.root / "claims", lease, what="HA claim"):
                continue
            log.warning("HA: %s is dead (lease %.0f s old, not present): restarting its HA VMs %s",
                        lease.jid, time.time() - lease.time, ", ".join(lease.vms) or "(none)")
            await self.take_over(lease)
            await self.fs.call(drop_lease, self.root / "leases", lease, what="HA lease removal")

    # ---------------------------------------------------------------- take-over
    async def take_over(self, lease: Lease) -> None:
        vms = []
        for uuid in lease.vms:
            try:
                data = await self.fs.call(read_handover, self._flag_path(uuid), what="HA flag")
                vms.append(VM(uuid, memory_kib(data["domain"])))
            except (OSError, ValueError, KeyError) as exc:
                await self._report(uuid, f"its HA file is unreadable: {exc}")
        plan = place(vms, await self.agent.maintenance.placement_hosts())
        for uuid, reason in plan.refused.items():
            await self._report(uuid, reason)
        own = self.agent.hypervisor.full_jid
        for uuid, destination in sorted(plan.moves.items()):
            try:
                if destination == own:
                    await self.restart(uuid)
                else:
                    await self._ask(destination, uuid)
            except Exception as exc:  # noqa: BLE001 - one VM's failure must not stop the others
                await self._report(uuid, f"restart on {destination} failed: {exc}")

    async def _ask(self, destination: str, uuid: str) -> None:
        hv = self.agent.hypervisor
        iq = hv.xmpp.make_iq_set(ito=destination)
        query = ET.Element(f"{{{NS}}}query")
        ET.SubElement(query, f"{{{NS}}}archipel", {"action": "harestart", "uuid": uuid})
        iq.append(query)
        try:
            await iq.send(timeout=120)
        except slixmpp.exceptions.IqError as exc:
            raise Conflict(exc.iq["error"]["text"] or exc.iq["error"]["condition"]) from None
        except slixmpp.exceptions.IqTimeout:
            raise Unavailable(f"{destination} did not answer") from None

    async def _report(self, uuid: str, reason: str) -> None:
        log.error("HA: VM %s not restarted: %s", uuid, reason)
        self.failed[uuid] = reason
        await self.agent.hypervisor.push(PUSH, "restartfailed", [element("vm", {"uuid": uuid, "reason": reason})])

    async def restart(self, uuid: str) -> None:
        """Bring a dead host's HA VM back here: define, start (the lock manager may refuse),
        then adopt its entity.  Each step fails before the next: no entity without a QEMU."""
        try:
            uuid = str(uuidlib.UUID(uuid))
        except ValueError:
            raise InvalidArgument("uuid", f"not a UUID: {uuid!r}") from None
        agent = self.agent
        if uuid in agent.vms.entities:
            raise Conflict(f"VM {uuid} is already on this hypervisor")
        try:
            data = await self.fs.call(read_handover, self._flag_path(uuid), what="HA flag")
        except FileNotFoundError:
            raise NotFound(f"VM {uuid} is not marked HA") from None
        except (OSError, ValueError) as exc:
            raise Conflict(f"the HA file of VM {uuid} is unreadable: {exc}") from None
        if data.get("uuid") != uuid or data.get("jid") != agent.vms.jid_for(uuid):
            raise Conflict(f"the HA file of VM {uuid} names another VM")
        dom = await agent.libvirt.call("defineXML", data["domain"])
        try:
            await agent.libvirt.call(dom.create, slow=True)
        except (LibvirtFailure, Unavailable) as exc:
            try:
                await agent.libvirt.call(dom.undefine)
            except (LibvirtFailure, Unavailable) as undo:
                log.warning("HA: undefine of %s after a refused start failed: %s", uuid, undo)
            reason = str(getattr(exc, "__cause__", None) or exc)
            self.failed[uuid] = reason
            log.error("HA: start of VM %s refused (its disks may still be in use by the old host): %s",
                      uuid, reason)
            raise Conflict(f"start refused: {reason}") from None
        record = VMRecord(uuid, data["jid"], data["password"], data["name"], data["created"],
                          data.get("owner", ""), data.get("orginfo") or {})
        entity = await agent.vms.adopt_migrated(record, [tuple(row) for row in data.get("grants", [])])
        self.restarted.append(uuid)
        try:  # the flag now names this host (a dead host that comes back forgets the VM)
            await self._write_flag(entity, force=True)
        except (LibvirtFailure, Unavailable, NotFound, OSError) as exc:
            log.warning("HA: flag of %s not rewritten yet (next lease round): %s", uuid, exc)
        log.info("HA: VM %s (%s) restarted here", record.name, uuid)

    async def stop(self) -> None:
        """A clean stop withdraws our lease: the agent is away, not the host -- its QEMUs run on,
        and the survivors must not try to restart them (the locks would refuse, noisily)."""
        hv = self.agent.hypervisor
        if hv is not None:
            try:
                await self.fs.call(lambda: (self.root / "leases" / f"{hv.jid}.json").unlink(missing_ok=True),
                                   timeout=5, what="HA lease withdrawal")
            except (OSError, Unavailable) as exc:
                log.warning("HA: lease not withdrawn: %s", exc)
        self.fs.close()

    def status(self) -> ET.Element:
        el = element("ha", {"interval": f"{self.interval:g}", "ttl": f"{self.ttl:g}",
                            "restarted": str(len(self.restarted))})
        for uuid in self.restarted:
            ET.SubElement(el, "restarted", {"uuid": uuid})
        for uuid, reason in sorted(self.failed.items()):
            ET.SubElement(el, "failed", {"uuid": uuid, "reason": reason})
        return el
