"""Class switches: one Linux bridge per class network on every hypervisor, joined by VXLAN.

The recipe of Proxmox's SDN VXLAN zones: bridge ``acn<vni>`` + VXLAN port
``acv<vni>`` (VNI = the class network's id).  The underlay here is multicast
on ``[NETWORKS] vxlan_device`` (group ``239.1.x.y`` derived from the VNI):
hypervisors on one L2 segment find each other without a peer list.  libvirt
sees the bridge: on the DHCP hypervisor it is the isolated/NAT network's own
bridge (libvirt creates it, runs dnsmasq; the agent adds the VXLAN port), on
the others a ``<forward mode='bridge'/>`` network on the bridge the agent made.

Commands run with ``ip``/``bridge`` as subprocesses (never blocking the loop),
in ``[NETWORKS] network_namespace`` when set (the rig's libvirtds live in
network namespaces of their own; in production libvirtd and the agent share
the host's).
"""
from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger(__name__)

VXLAN_PORT = 4789


class SwitchError(Exception):
    pass


def group_for(vni: int) -> str:
    return f"239.1.{(vni >> 8) & 0xFF}.{vni & 0xFF}"


def vxlan_name(vni: int) -> str:
    return f"acv{vni}"


def bridge_name(vni: int) -> str:
    return f"acn{vni}"


class Switch:
    def __init__(self, underlay_device: str | None, namespace: str | None = None):
        self.underlay = underlay_device
        self.namespace = namespace

    def _argv(self, tool: str, *args: str) -> list[str]:
        ns = ["-n", self.namespace] if self.namespace else []
        return [tool, *ns, *args]

    async def run(self, tool: str, *args: str, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self._argv(tool, *args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        if check and proc.returncode != 0:
            raise SwitchError(f"{tool} {' '.join(args)}: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    async def links(self, kind: str | None = None, *, details: bool = False) -> list[dict]:
        args = (["-d"] if details else []) + ["-j", "link", "show"] + (["type", kind] if kind else [])
        text = await self.run("ip", *args)
        return json.loads(text or "[]")

    async def exists(self, name: str) -> bool:
        return any(link.get("ifname") == name for link in await self.links())

    async def healthy(self, vni: int, *, bridge_too: bool) -> bool:
        """One ``ip link`` call: the VXLAN port is up on its bridge (nothing to do)."""
        links = {link.get("ifname"): link for link in await self.links()}
        bridge = links.get(bridge_name(vni))
        if bridge is None:
            return False
        if bridge_too and "UP" not in bridge.get("flags", ()):
            return False
        if not self.underlay:
            return True
        port = links.get(vxlan_name(vni))
        return port is not None and port.get("master") == bridge_name(vni) and "UP" in port.get("flags", ())

    async def ensure_bridge(self, vni: int) -> None:
        """The bridge of a class network on a hypervisor that does not serve its DHCP."""
        bridge = bridge_name(vni)
        if not await self.exists(bridge):
            await self.run("ip", "link", "add", bridge, "type", "bridge", "stp_state", "0")
        await self.run("ip", "link", "set", bridge, "up")

    async def ensure_vxlan(self, vni: int) -> None:
        """The VXLAN port of the class network, on its bridge (which must exist)."""
        if not self.underlay:
            log.warning("class network VNI %d: no [NETWORKS] vxlan_device, the network stays on this hypervisor", vni)
            return
        port, bridge = vxlan_name(vni), bridge_name(vni)
        if not await self.exists(port):
            await self.run("ip", "link", "add", port, "type", "vxlan", "id", str(vni), "group", group_for(vni),
                           "dev", self.underlay, "dstport", str(VXLAN_PORT))
        await self.run("ip", "link", "set", port, "master", bridge)
        await self.run("ip", "link", "set", port, "up")

    async def remove(self, vni: int, *, bridge_too: bool) -> None:
        await self.run("ip", "link", "del", vxlan_name(vni), check=False)
        if bridge_too:
            await self.run("ip", "link", "del", bridge_name(vni), check=False)
