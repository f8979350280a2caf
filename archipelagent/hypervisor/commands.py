"""``archipel:hypervisor:control`` actions of issue 2 (VM actions come later)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ..commands import CommandSet, element
from ..errors import Unavailable
from .address import resolve_machine_ip

NS = "archipel:hypervisor:control"

commands = CommandSet()


def _render_nodeinfo(payload) -> str:
    el = payload[0]
    a = el.attrib
    return (
        f"{a['model']} — {a['nrCPU']} CPUs at {a['mHzCPU']} MHz "
        f"({a['nrSockets']} socket(s) × {a['nrCoreperSocket']} core(s) × {a['nrThreadperCore']} thread(s), "
        f"{a['nrNumaNodes']} NUMA node(s)), {int(a['memory']) // 1024} MiB of memory"
    )


@commands.command(NS, "capabilities", kinds=("hypervisor",), chat=("capabilities", "caps"), help="libvirt capabilities of this hypervisor")
async def capabilities(ctx):
    return ET.fromstring(await ctx.agent.libvirt.capabilities())


@commands.command(NS, "nodeinfo", kinds=("hypervisor",), chat=("nodeinfo", "node info"), help="CPU and memory of this hypervisor", chat_render=_render_nodeinfo)
async def nodeinfo(ctx):
    info = await ctx.agent.libvirt.node_info()
    attrs = {k: info[k] for k in ("model", "nrCPU", "mHzCPU", "nrNumaNodes", "nrSockets", "nrCoreperSocket", "nrThreadperCore")}
    attrs["memory"] = info["memory_kib"]  # KiB, like the VM info payload
    return element("nodeinfo", attrs)


@commands.command(NS, "ip", kinds=("hypervisor",), chat=("ip", "address"), help="the address of this hypervisor", chat_render=lambda p: p[0].text)
async def ip(ctx):
    cfg = ctx.agent.config
    try:
        address = resolve_machine_ip(cfg.machine_ip, cfg.xmpp.host)
    except OSError as exc:
        raise Unavailable(f"cannot determine the address from machine_ip={cfg.machine_ip!r}: {exc}") from None
    return [element("ip", text=address)]


@commands.command(
    NS, "migrationinfo", kinds=("hypervisor",), chat=("migration info", "libvirt uri"),
    help="how other hypervisors migrate VMs here",
    chat_render=lambda p: f"libvirt URI {p[0].get('libvirt_uri')}, VM folder {p[0].get('base_folder')}",
)
async def migrationinfo(ctx):
    cfg = ctx.agent.config
    return element("migration", {"libvirt_uri": cfg.libvirt_uri, "base_folder": str(cfg.vm.base_path)})


def _render_roster(payload) -> str:
    if not payload:
        return "No virtual machines."
    return "\n".join(f"{el.get('name')}: {el.text} ({'managed' if el.get('managed') == 'True' else 'not managed'})" for el in payload)


@commands.command(NS, "rostervm", kinds=("hypervisor",), chat=("roster", "vms", "virtual machines", "domains"), help="the virtual machines of this hypervisor", chat_render=_render_roster)
async def rostervm(ctx):
    """Managed VM entities (none until VM entities exist) and unmanaged persistent domains."""
    hypervisor = ctx.entity
    managed = hypervisor.managed_vms()
    items = [element("item", {"managed": "True", "name": name}, text=full_jid) for name, full_jid in managed]
    managed_uuids = {full_jid.split("@", 1)[0] for _, full_jid in managed}
    for uuid, name, _state, persistent in await ctx.agent.libvirt.list_domains():
        if persistent and uuid not in managed_uuids:
            items.append(element("item", {"managed": "False", "name": name}, text=f"{uuid}@{ctx.agent.config.domain}"))
    return sorted(items, key=lambda el: (el.get("managed") != "True", el.get("name")))
