"""Maintenance mode: a hypervisor that refuses new VMs and empties itself by migration.

``maintenance on`` (``archipel:hypervisor:control``, permission ``maintenance``) makes this
hypervisor refuse ``alloc``, ``clone`` and incoming migrations (``require_off``), then
evacuates: it asks each online peer its free memory, VM count, VM limit and maintenance state
(``peerinfo``, served to peers only), plans with :func:`.placement.place` and migrates every
VM it manages -- live when running, definition only when shut off -- two at a time (each
migration holds a libvirt slow-lane worker for its length).  A VM that fits nowhere stays,
with the reason in ``status``.  Progress is in ``status`` and in the hypervisor's pushes
(``maintenance`` ``evacuating``/``evacuated``).  ``off`` stops starting new migrations
(those running finish) and accepts VMs again.  The mode survives an agent restart (a flag
file in the agent's lib_dir); the evacuation does not restart by itself: ``on`` again does.
"""
from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET

import libvirt
import slixmpp

from ..commands import element
from ..config import ConfigError
from ..errors import Conflict, LibvirtFailure, NotFound, Unavailable
from .peers import peers
from .placement import VM, Host, place

log = logging.getLogger(__name__)

NS = "archipel:hypervisor:control"
PUSH = "hypervisor:maintenance"
PARALLEL = 2


def max_vms(config) -> int:
    """``[HYPERVISOR] hypervisor_max_vms``: VMs this host accepts (0 or absent: no limit)."""
    raw = config.parser.get("HYPERVISOR", "hypervisor_max_vms", fallback="0").strip() or "0"
    if not raw.isdigit():
        raise ConfigError(getattr(config, "path", "archipel.conf"), "HYPERVISOR", "hypervisor_max_vms",
                          f"expected a number of VMs (0: no limit), found {raw!r}")
    return int(raw)


class Maintenance:
    def __init__(self, agent):
        self.agent = agent
        self.max_vms = max_vms(agent.config)
        self._flag = agent.config.lib_dir / "maintenance"
        self.on = self._flag.exists()
        self.task: asyncio.Task | None = None
        self.total = 0
        self.moved: list[str] = []
        self.failed: dict[str, str] = {}   # uuid -> why it stayed

    def require_off(self, what: str) -> None:
        if self.on:
            raise Conflict(f"{what} refused: this hypervisor is in maintenance")

    @property
    def evacuating(self) -> bool:
        return self.task is not None and not self.task.done()

    async def enable(self, requester: str) -> None:
        if self.evacuating:
            raise Conflict("an evacuation is already running")
        self.on = True
        await self.agent.fs.call(self._flag.touch, what="maintenance flag")
        self.total, self.moved, self.failed = 0, [], {}
        self.task = self.agent.spawn(self._evacuate(requester), name="maintenance-evacuation")

    async def disable(self) -> None:
        if self.evacuating:
            self.task.cancel()  # migrations already running go on (their own tasks)
        self.on = False
        await self.agent.fs.call(lambda: self._flag.unlink(missing_ok=True), what="maintenance flag")
        await self.agent.hypervisor.push(PUSH, "off")

    def status(self) -> ET.Element:
        left = [e.jid for e in self.agent.vms.entities.values()]
        el = element("maintenance", {"mode": "on" if self.on else "off",
                                     "evacuating": "yes" if self.evacuating else "no",
                                     "total": str(self.total), "moved": str(len(self.moved)),
                                     "failed": str(len(self.failed)), "remaining": str(len(left))})
        for uuid, reason in sorted(self.failed.items()):
            ET.SubElement(el, "refused", {"jid": self.agent.vms.jid_for(uuid), "reason": reason})
        return el

    def info(self) -> ET.Element:
        """What a peer needs to place a VM here (``peerinfo``)."""
        return element("peer", {"free_kib": "0", "vms": str(len(self.agent.vms.entities)),
                                "max_vms": str(self.max_vms), "maintenance": "yes" if self.on else "no"})

    async def peer_info(self) -> ET.Element:
        el = self.info()
        try:
            free = await self.agent.libvirt.call("getFreeMemory")
            el.set("free_kib", str(int(free) // 1024))
        except (LibvirtFailure, Unavailable) as exc:
            el.set("maintenance", "yes")  # cannot take VMs without libvirt
            log.warning("peerinfo: libvirt: %s", exc)
        return el

    # ------------------------------------------------------------ placement
    async def placement_hosts(self) -> list[Host]:
        """This hypervisor (its own peerinfo) and the online peers: where an HA take-over or a
        class's new VMs may go (an evacuation asks :meth:`peer_hosts` only)."""
        own = await self.peer_info()
        me = Host(self.agent.hypervisor.full_jid, int(own.get("free_kib", "0")), int(own.get("vms", "0")),
                  int(own.get("max_vms", "0")), own.get("maintenance") == "yes")
        return [me, *await self.peer_hosts()]

    async def peer_hosts(self) -> list[Host]:
        """The online peers, each from its own ``peerinfo`` (one that does not answer is left out):
        where an evacuation, an HA take-over or a class's new VMs may go."""
        hv = self.agent.hypervisor
        hosts = []
        for peer in peers(hv):
            if not peer.online:
                continue
            full = f"{peer.jid}/{peer.resources[0]}"
            iq = hv.xmpp.make_iq_get(ito=full)
            query = ET.Element(f"{{{NS}}}query")
            ET.SubElement(query, f"{{{NS}}}archipel", {"action": "peerinfo"})
            iq.append(query)
            try:
                reply = await iq.send(timeout=15)
            except (slixmpp.exceptions.IqError, slixmpp.exceptions.IqTimeout) as exc:
                log.warning("placement: %s did not give its peerinfo: %s", full, exc)
                continue
            info = reply.xml.find(f".//{{{NS}}}peer")
            if info is None:
                continue
            hosts.append(Host(full, int(info.get("free_kib", "0")), int(info.get("vms", "0")),
                              int(info.get("max_vms", "0")), info.get("maintenance") == "yes"))
        return hosts

    async def _vms(self) -> list[VM]:
        found = []
        for uuid, entity in list(self.agent.vms.entities.items()):
            if entity.migrating:
                continue
            try:
                dom = await entity.domain()
                state, _max, memory, _n, _t = await self.agent.libvirt.call(dom.info)
            except (NotFound, LibvirtFailure, Unavailable) as exc:
                self.failed[uuid] = f"not migratable: {exc}"
                continue
            found.append(VM(uuid, int(memory), state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)))
        return found

    async def _evacuate(self, requester: str) -> None:
        vms = await self._vms()
        plan = place(vms, await self.peer_hosts())
        self.total = len(vms) + len(self.failed)
        self.failed.update(plan.refused)
        for uuid, reason in plan.refused.items():
            log.warning("evacuation: VM %s stays: %s", uuid, reason)
        await self.agent.hypervisor.push(PUSH, "evacuating", [self.status()])
        gate = asyncio.Semaphore(PARALLEL)

        async def move(uuid: str, destination: str) -> None:
            async with gate:
                entity = self.agent.vms.entities.get(uuid)
                if entity is None:
                    return
                try:
                    await self.agent.migrations.start(entity, requester, destination)
                    moved = await self.agent.migrations.wait(uuid)
                except Exception as exc:  # noqa: BLE001 - one VM's refusal must not stop the others
                    self.failed[uuid] = str(exc)
                    return
                if moved:
                    self.moved.append(uuid)
                else:
                    self.failed[uuid] = "the migration failed (the VM stayed here)"
                await self.agent.hypervisor.push(PUSH, "evacuating", [self.status()])

        await asyncio.gather(*(move(u, d) for u, d in sorted(plan.moves.items())))
        log.info("evacuation done: %d moved, %d stayed", len(self.moved), len(self.failed))
        await self.agent.hypervisor.push(PUSH, "evacuated", [self.status()])
