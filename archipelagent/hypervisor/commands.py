"""``archipel:hypervisor:control``: the hypervisor's own facts and the VM lifecycle.

Tenancy: an action of the hypervisor that names a VM (free, clone, unmanage,
setorginfo) needs the hypervisor's permission (checked by dispatch) *and* a
right on that VM.  Handlers turn a VM reference into an entity only through
:func:`vm_targets`, which checks that right first, so no such action escapes
it; :data:`VM_PERMISSIONS` says which right each action needs.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from ..commands import Arg, CommandSet, element
from ..commands.payload import local_name
from ..errors import InvalidArgument, Migrating, MissingArgument, NotFound, PermissionDenied, Unavailable
from ..permissions import Permission
from .address import machine_address
from .peers import is_peer, peers as current_peers

NS = "archipel:hypervisor:control"

commands = CommandSet()

# The right on the named VM each hypervisor action needs (the VM's owner holds them through ``all``).
VM_PERMISSIONS = {
    "free": "free",
    "clone": "clone",
    "unmanage": "unmanage",
    "setorginfo": "setorginfo",
}

# Declared on the VM kind by the wiring (``free`` is also a VM command of its own).
EXTRA_PERMISSIONS = (
    ("vm", Permission("clone", "Clone this VM through the hypervisor (read its disks)")),
    ("vm", Permission("unmanage", "Release this VM from the agent through the hypervisor (domain and files stay)")),
    ("vm", Permission("setorginfo", "Rename this VM and set its vCard fields through the hypervisor")),
    ("hypervisor", Permission("migrate", "Migrate VMs to this hypervisor (checked by migrationprepare)")),
)


async def vm_targets(ctx, refs: list[str]):
    """The VM entities ``refs`` name, once the sender holds the action's right on every one.

    The right is checked on the JID the reference names before looking the VM
    up, so a sender without it learns nothing (``-1`` whether or not the VM
    exists); all are checked before any is returned, so a refused item leaves
    the others untouched.  Chat may name a VM by its name.
    """
    vms = ctx.agent.vms
    permission = VM_PERMISSIONS[ctx.command.action]
    jids = []
    for ref in refs:
        by_name = next((e for e in vms.entities.values() if e.name == ref), None) if ctx.transport == "chat" else None
        jids.append(by_name.jid if by_name is not None else vms.jid_for(ref.split("@", 1)[0].split("/", 1)[0].lower()))
    for jid in jids:
        await ctx.agent.permissions.require(jid, "vm", ctx.sender_bare, permission, action=ctx.command.action)
    entities = []
    for jid in jids:
        try:
            entities.append(vms.get(jid))
        except NotFound:
            raise NotFound(f"no virtual machine {jid} on this hypervisor") from None
    for entity in entities:
        if entity.migrating:
            raise Migrating(f"{entity.jid} is migrating")
    return entities


async def vm_target(ctx, ref: str):
    """One VM, see :func:`vm_targets`."""
    return (await vm_targets(ctx, [ref]))[0]


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
    return element("migration", {"libvirt_uri": cfg.migration_uri or cfg.libvirt_uri,
                                 "base_folder": str(cfg.vm.base_path)})


@commands.command(
    NS, "migrationprepare", kinds=("hypervisor",), permission=None, adhoc=False,
    args=(Arg("requester", help="the user who asked the migration"), Arg("uuid", help="the VM's UUID")),
    help="a peer hypervisor announces a VM it will migrate here (no permission of the sender: it must be a peer, the requester must hold migrate here)",
)
async def migrationprepare(ctx, requester, uuid):
    """Served only to peers (hypervisor/peers.py), for a requester holding ``migrate`` here;
    answers like migrationinfo and expects the VM (hypervisor/migrations.py)."""
    await ctx.agent.migrations.prepare_incoming(ctx.entity, ctx.sender, requester, uuid)
    return await migrationinfo(ctx)


@commands.command(
    NS, "maintenance", kinds=("hypervisor",), chat=("maintenance",),
    args=(Arg("mode", required=False, default="status", help="on, off or status"),),
    help="maintenance mode: on refuses new VMs and evacuates them all to the peers; off; status",
    chat_render=lambda p: (f"Maintenance {p[0].get('mode')}: {p[0].get('moved')} of {p[0].get('total')} moved, "
                           f"{p[0].get('remaining')} here"),
)
async def maintenance(ctx, mode):
    """hypervisor/maintenance.py; answers the status after the change."""
    if mode == "on":
        await ctx.agent.maintenance.enable(ctx.sender_bare)
    elif mode == "off":
        await ctx.agent.maintenance.disable()
    elif mode != "status":
        raise InvalidArgument("mode", f"expected on, off or status, found {mode!r}")
    return ctx.agent.maintenance.status()


@commands.command(
    NS, "peerinfo", kinds=("hypervisor",), permission=None, adhoc=False,
    help="a peer hypervisor asks where it may evacuate VMs (free memory, VMs, limit, maintenance)",
)
async def peerinfo(ctx):
    """Served only to peers (hypervisor/peers.py)."""
    if not is_peer(ctx.entity, ctx.sender):
        raise PermissionDenied("only a peer hypervisor may ask for peerinfo")
    return await ctx.agent.maintenance.peer_info()


@commands.command(
    NS, "harestart", kinds=("hypervisor",), permission=None, adhoc=False,
    args=(Arg("uuid", help="the dead host's HA VM to start here"),),
    help="a peer that took over a dead host asks this one to restart one of its HA VMs",
)
async def harestart(ctx, uuid):
    """Served only to peers (hypervisor/ha.py); refused in maintenance like any arrival."""
    if not is_peer(ctx.entity, ctx.sender):
        raise PermissionDenied("only a peer hypervisor may ask for harestart")
    ctx.agent.maintenance.require_off("HA restart")
    await ctx.agent.ha.restart(uuid)
    return None


@commands.command(NS, "hastatus", kinds=("hypervisor",), adhoc=False, chat=("ha status",),
                  help="HA lease settings, the dead hosts' VMs restarted here and the refused restarts")
async def hastatus(ctx):
    return ctx.agent.ha.status()


def _render_peers(payload) -> str:
    if not payload:
        return "No peer hypervisors."
    return "\n".join(f"{el.get('jid')}: {el.get('state')}" for el in payload)


@commands.command(NS, "peers", kinds=("hypervisor",), chat=("peers", "hypervisors"),
                  help="the other hypervisors of the peers group and whether they are online",
                  chat_render=_render_peers)
async def peers(ctx):
    """Members of the shared roster group ``hypervisor_peers_group`` (hypervisor/peers.py):
    ``state`` is ``online``, ``dnd`` (its libvirt or storage is down) or ``gone``."""
    items = []
    for peer in current_peers(ctx.entity):
        state = "gone" if not peer.online else ("online" if peer.show in ("", "chat") else peer.show)
        attrs = {"jid": peer.jid, "state": state, "status": peer.status}
        if peer.online:
            attrs["resource"] = peer.resources[0]
        items.append(element("hypervisor", attrs))
    return items


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
    ctx.agent.maintenance.require_off("alloc")
    orginfo = {k.upper(): v for k, v in dict(orgname=orgname, orgunit=orgunit, locality=locality, userid=userid, categories=categories).items() if v}
    entity = await ctx.agent.vms.alloc(ctx.sender_bare, name=name, orginfo=orginfo, definition=domain)
    return _vm_reply(entity)


@commands.command(
    NS, "free", kinds=("hypervisor",), chat=("free",), args=(Arg("jid", help="VM JID, UUID (or name in chat)"),),
    help="destroy a virtual machine and delete its entity (its folder goes to the trash)",
    chat_render=lambda p: f"Freed {p[0].get('jid')}.",
)
async def free(ctx, jid):
    target = await vm_target(ctx, jid)
    return element("virtualmachine", {"jid": await ctx.agent.vms.free(target.uuid)})


@commands.command(
    NS, "clone", kinds=("hypervisor",), chat=("clone",),
    args=(Arg("jid", help="source VM (shut off): JID, UUID (or name in chat)"), Arg("name", required=False, help="name of the clone")),
    help="copy a shut-off virtual machine (new UUID and MACs; progress is pushed)",
    chat_render=lambda p: f"Cloned into {p[0].get('jid')}.",
)
async def clone(ctx, jid, name):
    ctx.agent.maintenance.require_off("clone")
    source = await vm_target(ctx, jid)
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
    released = await ctx.agent.vms.unmanage([e.uuid for e in await vm_targets(ctx, _item_uuids(items))])
    return [element("virtualmachine", {"jid": jid}) for jid in released]


ORG_TAGS = ("FN", "ORGNAME", "ORGUNIT", "USERID", "LOCALITY", "CATEGORIES")


@commands.command(
    NS, "setorginfo", kinds=("hypervisor",), adhoc=False,
    args=(Arg("target", help="VM uuid"), Arg("fields", source="children", required=False, help="FN, ORGNAME, ... text elements")),
    help="set a VM's vCard organisation fields (FN renames it; the VM must be stopped then)",
)
async def setorginfo(ctx, target, fields):
    values = {local_name(c.tag).upper(): (c.text or "").strip() for c in fields or [] if local_name(c.tag).upper() in ORG_TAGS}
    entity = await ctx.agent.vms.set_orginfo((await vm_target(ctx, target)).uuid, values)
    return _vm_reply(entity)
