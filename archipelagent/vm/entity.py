"""A virtual machine's Jabber entity: ``<uuid>@<domain>/<hypervisor node>``.

Its presence mirrors the libvirt domain state, refreshed from libvirt after
every (re)connection and on every lifecycle event, so it cannot drift.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import libvirt

from ..errors import Unavailable
from ..hypervisor.records import VMRecord
from ..virt.events import push_for_event
from ..xmpp.entity import Entity
from .presence import LIBVIRT_LOST, presence_for_state

if TYPE_CHECKING:  # pragma: no cover
    from ..agent import Agent

log = logging.getLogger(__name__)

ORGINFO_FIELDS = ("ORGNAME", "ORGUNIT", "LOCALITY", "USERID", "CATEGORIES")


class VMEntity(Entity):
    kind = "vm"
    role = "virtualmachine"
    needs_roster = False  # see Entity.needs_roster
    login_log_level = logging.DEBUG

    def __init__(self, agent: "Agent", record: VMRecord, *, resource: str):
        super().__init__(agent, record.jid, record.password, name=record.name, resource=resource)
        self.record = record
        self.uuid = record.uuid
        self.state: int | None = None
        self.busy_status: str | None = None  # transient presence like "Cloning..."
        self.migrating = False  # commands answer -43 meanwhile (commands/dispatch.py)
        self.pending_subscribe: str | None = None
        self._cpu_sample: tuple[float, int] | None = None
        self._state_lock = asyncio.Lock()
        self._domain_cache: tuple[int, libvirt.virDomain] | None = None

    @property
    def full_jid(self) -> str:
        return f"{self.jid}/{self.resource}"

    # -------------------------------------------------------------- libvirt
    async def domain(self) -> libvirt.virDomain:
        """The libvirt domain, cached for the current libvirt connection only.

        Domain objects go stale when libvirt reconnects (the generation
        changes) and when the domain is undefined (the cache is dropped on
        lifecycle events), so a stale object is never used.
        """
        conn = self.agent.libvirt
        cached = self._domain_cache
        if cached is not None and cached[0] == conn.generation:
            return cached[1]
        dom = await conn.lookup(self.uuid)
        self._domain_cache = (conn.generation, dom)
        return dom

    async def refresh_state(self) -> int | None:
        """Read the state from libvirt and show it as presence."""
        async with self._state_lock:
            if not self.agent.libvirt.connected:
                self.set_presence(LIBVIRT_LOST[1], LIBVIRT_LOST[0])
                return self.state
            try:  # read with the other entities' reads (virt/states.py)
                found = await self.agent.domain_states.state(self.uuid)
                state = found[0] if found else None
                if found is None:
                    self._domain_cache = None
            except Unavailable:
                self.set_presence(LIBVIRT_LOST[1], LIBVIRT_LOST[0])
                return self.state
            self.state = state
            self.show_state()
            return state

    def show_state(self) -> None:
        if self.busy_status:
            self.set_presence(self.busy_status, "dnd")
            return
        show, status = presence_for_state(self.state)
        self.set_presence(status, show)

    def set_busy(self, status: str | None) -> None:
        self.busy_status = status
        self.show_state()

    async def on_lifecycle(self, event: int, detail: int) -> None:
        """A libvirt lifecycle event for this domain: presence then push."""
        if self._stopping:
            return  # being freed or unmanaged: the hypervisor's push says so
        self._domain_cache = None  # defined/undefined events may replace the object
        await self.refresh_state()
        push = push_for_event(event, detail)
        if push is not None:
            await self.push(push.namespace, push.change)

    def cpu_percent(self, cpu_time_ns: int) -> float:
        """CPU use since the previous ``info`` (0 on the first call)."""
        now = time.monotonic()
        previous, self._cpu_sample = self._cpu_sample, (now, cpu_time_ns)
        if previous is None or now <= previous[0]:
            return 0.0
        return max(0.0, (cpu_time_ns - previous[1]) / ((now - previous[0]) * 1e9) * 100)

    # ---------------------------------------------------------------- xmpp
    async def before_presence(self) -> None:
        await self.refresh_state()

    async def on_online(self) -> None:
        if self.pending_subscribe:
            owner, self.pending_subscribe = self.pending_subscribe, None
            await self.subscribe_user(owner)

    async def subscribe_user(self, user: str) -> None:
        """Put ``user`` in the VM's roster and ask to subscribe (Archipel does this for the owner)."""
        try:
            await self.xmpp.update_roster(user, name=user.split("@")[0], timeout=10)
        except Exception as exc:  # noqa: BLE001 - roster is best effort; the subscribe matters
            log.warning("%s: roster add of %s failed: %s", self.jid, user, exc)
        presence = self.xmpp.make_presence(pto=user, ptype="subscribe")
        nick = presence.xml.makeelement("{http://jabber.org/protocol/nick}nick", {})
        nick.text = self.name
        presence.xml.append(nick)
        presence.send()

    def vcard_fields(self) -> dict[str, str]:
        fields = super().vcard_fields()
        fields["FN"] = self.name
        fields["TITLE"] = "Virtual machine (QEMU)"
        for key in ORGINFO_FIELDS:
            if self.record.orginfo.get(key):
                fields[key] = self.record.orginfo[key]
        return fields

    async def republish_vcard(self) -> None:
        if self.online.is_set():
            await self._publish_vcard()
