"""``archipel:hypervisor:control`` actions of issue 2 (VM actions come later)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ..commands import Arg, CommandSet, element
from ..commands.payload import local_name
from ..errors import MissingArgument, Unavailable
from .address import machine_address

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
        address = await machine_address(cfg.machine_ip, cfg.xmpp.host)
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


# ------------------------------------------------------------- VM lifecycle
ORG_ARGS = tuple(Arg(key, required=False, help=f"vCard {key.upper()}") for key in ("orgname", "orgunit", "locality", "userid", "categories"))


def _vm_reply(entity):
    return element("virtualmachine", {"jid": entity.jid})


@commands.command(
    NS, "alloc", kinds=("hypervisor",), chat=("alloc", "allocate", "new vm"),
    args=(Arg("name", required=False, help="VM name (unique)"), *ORG_ARGS,
          Arg("domain", source="element", required=False, help="optional libvirt <domain>")),
    help="create a new virtual machine (you get every permission on it)",
    chat_render=lambda p: f"Allocated {p[0].get('jid')}; it will ask you for a subscription.",
)
async def alloc(ctx, name, orgname, orgunit, locality, userid, categories, domain):
    orginfo = {k.upper(): v for k, v in dict(orgname=orgname, orgunit=orgunit, locality=locality, userid=userid, categories=categories).items() if v}
    entity = await ctx.agent.vms.alloc(ctx.sender_bare, name=name, orginfo=orginfo, definition=domain)
    return _vm_reply(entity)


@commands.command(
    NS, "free", kinds=("hypervisor",), chat=("free",), args=(Arg("jid", help="VM JID, UUID (or name in chat)"),),
    help="destroy a virtual machine and delete its entity (its folder goes to the trash)",
    chat_render=lambda p: f"Freed {p[0].get('jid')}.",
)
async def free(ctx, jid):
    target = ctx.agent.vms.find(jid) if ctx.transport == "chat" else ctx.agent.vms.get(jid)
    return element("virtualmachine", {"jid": await ctx.agent.vms.free(target.uuid)})


@commands.command(
    NS, "clone", kinds=("hypervisor",), chat=("clone",),
    args=(Arg("jid", help="source VM (shut off): JID, UUID (or name in chat)"), Arg("name", required=False, help="name of the clone")),
    help="copy a shut-off virtual machine (new UUID and MACs; progress is pushed)",
    chat_render=lambda p: f"Cloned into {p[0].get('jid')}.",
)
async def clone(ctx, jid, name):
    source = ctx.agent.vms.find(jid) if ctx.transport == "chat" else ctx.agent.vms.get(jid)
    return _vm_reply(await ctx.agent.vms.clone(ctx.sender_bare, source.uuid, name))


def _item_uuids(children) -> list[str]:
    uuids = [c.get("jid", "").split("@", 1)[0].lower() for c in children or [] if local_name(c.tag) == "item"]
    uuids = [u for u in uuids if u]
    if not uuids:
        raise MissingArgument("item")
    return uuids


ITEMS_ARG = (Arg("items", source="children", help="<item jid='uuid@domain'/> elements"),)


@commands.command(NS, "manage", kinds=("hypervisor",), args=ITEMS_ARG, adhoc=False, help="adopt existing libvirt domains as VM entities")
async def manage(ctx, items):
    adopted = await ctx.agent.vms.manage(ctx.sender_bare, _item_uuids(items))
    return [element("virtualmachine", {"jid": jid}) for jid in adopted]


@commands.command(NS, "unmanage", kinds=("hypervisor",), args=ITEMS_ARG, adhoc=False, help="release VM entities (domains and files are kept)")
async def unmanage(ctx, items):
    released = await ctx.agent.vms.unmanage(_item_uuids(items))
    return [element("virtualmachine", {"jid": jid}) for jid in released]


ORG_TAGS = ("FN", "ORGNAME", "ORGUNIT", "USERID", "LOCALITY", "CATEGORIES")


@commands.command(
    NS, "setorginfo", kinds=("hypervisor",), adhoc=False,
    args=(Arg("target", help="VM uuid"), Arg("fields", source="children", required=False, help="FN, ORGNAME, ... text elements")),
    help="set a VM's vCard organisation fields (FN renames it; the VM must be stopped then)",
)
async def setorginfo(ctx, target, fields):
    values = {local_name(c.tag).upper(): (c.text or "").strip() for c in fields or [] if local_name(c.tag).upper() in ORG_TAGS}
    entity = await ctx.agent.vms.set_orginfo(target, values)
    return _vm_reply(entity)
