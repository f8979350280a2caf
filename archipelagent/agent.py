"""The agent: one process, one event loop, all entities of one hypervisor.

It wires the layers together — configuration, the command registry, the
permission center, the libvirt connection and the entities — and owns their
start and stop order.  Nothing here knows a particular command.
"""
from __future__ import annotations

import logging

from .commands import Registry
from .config import AgentConfig
from .hypervisor.commands import commands as hypervisor_commands
from .hypervisor.entity import HypervisorEntity
from .permissions import Permission, PermissionCenter, PermissionStore
from .permissions.commands import commands as permission_commands
from .virt.connection import LibvirtConnection

log = logging.getLogger(__name__)

KINDS = ("hypervisor", "vm")


def build_registry() -> Registry:
    """Every command the agent serves; feature modules will add theirs here."""
    registry = Registry()
    registry.add_set(permission_commands)
    registry.add_set(hypervisor_commands)
    return registry


def declare_permissions(center: PermissionCenter, registry: Registry) -> None:
    """Each command's permission exists on the kinds that serve it (Archipel created one per action)."""
    for kind in KINDS:
        for command in registry.for_kind(kind):
            if command.permission:
                center.declare(kind, Permission(command.permission, command.permission_description))


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.registry = build_registry()
        self.permissions: PermissionCenter | None = None
        self.libvirt = LibvirtConnection(
            config.libvirt_uri,
            reconnect_min_delay=config.xmpp.reconnect_min_delay,
            reconnect_max_delay=min(config.xmpp.reconnect_max_delay, 30.0),
        )
        self.hypervisor: HypervisorEntity | None = None

    async def start(self) -> None:
        store = await PermissionStore.open(self.config.hypervisor.permissions_database_path)
        self.permissions = PermissionCenter(store, self.config.root_admins)
        declare_permissions(self.permissions, self.registry)
        self.libvirt.add_state_listener(self._on_libvirt_state)
        await self.libvirt.start()
        hv = self.config.hypervisor
        self.hypervisor = HypervisorEntity(self, hv.jid, hv.password, name=hv.name, resource=hv.name)
        self.hypervisor.start()

    async def stop(self) -> None:
        if self.hypervisor:
            await self.hypervisor.stop()
        await self.libvirt.stop()
        if self.permissions:
            await self.permissions.store.close()

    def _on_libvirt_state(self, connected: bool) -> None:
        if connected:
            log.info("libvirt connected")
        else:
            log.warning("libvirt connection lost")
        if self.hypervisor:
            self.hypervisor.refresh_presence()
