"""The hypervisor's Jabber entity."""
from __future__ import annotations

from ..xmpp.entity import Entity


class HypervisorEntity(Entity):
    kind = "hypervisor"
    role = "hypervisor"

    def managed_vms(self) -> list[tuple[str, str]]:
        """(name, full JID) of the VM entities this hypervisor runs; none before the VM layer."""
        return []

    def vcard_fields(self) -> dict[str, str]:
        fields = super().vcard_fields()
        fields["TITLE"] = "Hypervisor (QEMU)"
        return fields

    def refresh_presence(self) -> None:
        """``Online (N)`` normally; ``dnd`` while libvirt is unreachable (as Archipel)."""
        if not self.agent.libvirt.connected:
            self.set_presence("Libvirt connection lost", "dnd")
        else:
            self.set_presence(f"Online ({len(self.managed_vms())})")

    async def on_online(self) -> None:
        self.refresh_presence()
