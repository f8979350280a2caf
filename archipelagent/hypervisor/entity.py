"""The hypervisor's Jabber entity."""
from __future__ import annotations

from ..xmpp.entity import Entity
from ..permissions.roles_node import publish_roles


class HypervisorEntity(Entity):
    kind = "hypervisor"
    role = "hypervisor"

    def managed_vms(self) -> list[tuple[str, str]]:
        """(name, full JID) of the VM entities this hypervisor runs."""
        return [(vm.name, vm.full_jid) for vm in self.agent.vms.entities.values()]

    def vcard_fields(self) -> dict[str, str]:
        fields = super().vcard_fields()
        fields["TITLE"] = "Hypervisor (QEMU)"
        return fields

    def refresh_presence(self) -> None:
        """``Online (N)`` normally; ``dnd`` while libvirt is unreachable (as Archipel) or the storage is degraded."""
        storage = self.agent.storage_health
        degraded = storage.presence() if storage is not None else None
        if not self.agent.libvirt.connected:
            self.set_presence("Libvirt connection lost", "dnd")
        elif degraded is not None:
            self.set_presence(*degraded)
        else:
            self.set_presence(f"Online ({len(self.managed_vms())})")

    @property
    def full_jid(self) -> str:
        return f"{self.jid}/{self.resource}"

    async def before_presence(self) -> None:
        self.refresh_presence()

    async def on_online(self) -> None:
        await publish_roles(self)
