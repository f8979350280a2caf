"""``archipel:vm:control`` and ``archipel:vm:definition`` on VM entities."""
from __future__ import annotations

import asyncio
import base64
import logging
import xml.etree.ElementTree as ET

import libvirt

from ..commands import Arg, CommandSet, element
from ..errors import ArchipelError, Conflict, InvalidArgument, NotFound
from ..quotas import owner_of
from .presence import human_state
from .screenshot import ppm_to_png

log = logging.getLogger(__name__)

CONTROL = "archipel:vm:control"
DEFINITION = "archipel:vm:definition"
PUSH_CONTROL = "virtualmachine:control"
PUSH_DEFINITION = "virtualmachine:definition"

UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)

commands = CommandSet()


def _vm(**kw):
    return commands.command(kinds=("vm",), **kw)


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    return number


def bool_01(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 0 or 1, got {value!r}")


async def _state(ctx, dom) -> int:
    state, _ = await ctx.agent.libvirt.call(dom.state)
    return state


async def _require_state(ctx, dom, allowed: set[int], verb: str) -> int:
    state = await _state(ctx, dom)
    if state not in allowed:
        raise Conflict(f"cannot {verb} a VM that is {human_state(state)}")
    return state


# ------------------------------------------------------------------- control
def _render_info(payload) -> str:
    a = payload[0].attrib
    return (f"{human_state(int(a['state'])).capitalize()}, {int(a['memory']) // 1024} MiB of "
            f"{int(a['maxMem']) // 1024} MiB, {a['nrVirtCpu']} vCPU, CPU {a['cpuPrct']}%, "
            f"autostart {'on' if a['autostart'] == '1' else 'off'}")


@_vm(namespace=CONTROL, action="info", chat=("info", "how are you", "status"), help="state, memory and CPU of this VM", chat_render=_render_info)
async def info(ctx):
    vm = ctx.entity
    conn = ctx.agent.libvirt
    dom = await vm.domain()
    (state, max_mem, memory, vcpus, cpu_time), autostart = await conn.call(lambda: (dom.info(), dom.autostart()))
    return element("info", {
        "state": state, "maxMem": max_mem, "memory": memory, "nrVirtCpu": vcpus,
        "cpuPrct": f"{vm.cpu_percent(cpu_time):.1f}", "hypervisor": ctx.agent.hypervisor.full_jid,
        "autostart": "1" if autostart else "0",
        "owner": vm.record.owner or "",  # who allocated it (the web client's teacher table)
    })


@_vm(namespace=CONTROL, action="create", chat=("start", "create", "boot", "play", "run"), help="start this VM",
     chat_render=lambda p: f"Started (domain id {p[0].get('id')}).")
async def create(ctx):
    dom = await ctx.entity.domain()
    await _require_state(ctx, dom, {libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED}, "start")
    # a guest may have rewritten a disk header since the definition: check formats and chains again (images.py)
    xml = await ctx.agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
    await ctx.agent.disk_guard.check_definition(ctx.entity.uuid, ET.fromstring(xml), at_start=True)
    async with ctx.agent.quotas.starting(ctx.entity, ctx.sender_bare):  # quotas.py: a non-owner's start is theirs
        await ctx.agent.libvirt.call(dom.create)
    return element("domain", {"id": await ctx.agent.libvirt.call(dom.ID)})


def _destroy_later(ctx, uuid: str, timeout: int) -> None:
    """After a shutdown request with a timeout: destroy the guest if it is still up."""
    async def watchdog():
        await asyncio.sleep(timeout)
        try:
            dom = await ctx.agent.libvirt.lookup(uuid)
            if await ctx.agent.libvirt.call(dom.isActive):
                log.info("%s: still running %s s after shutdown: destroying", uuid, timeout)
                await ctx.agent.libvirt.call(dom.destroy)
        except ArchipelError as exc:
            log.info("%s: shutdown watchdog: %s", uuid, exc.message)

    ctx.agent.spawn(watchdog(), name=f"shutdown-watchdog-{uuid}")


@_vm(namespace=CONTROL, action="shutdown", chat=("shutdown", "stop"), help="ask the guest to shut down (ACPI)",
     args=(Arg("timeout", parse=positive_int, required=False, help="destroy after this many seconds if still running"),))
async def shutdown(ctx, timeout):
    dom = await ctx.entity.domain()
    await _require_state(ctx, dom, {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED}, "shut down")
    await ctx.agent.libvirt.call(dom.shutdown)
    if timeout:
        _destroy_later(ctx, ctx.entity.uuid, timeout)


@_vm(namespace=CONTROL, action="destroy", chat=("destroy", "power off", "poweroff"), help="power this VM off at once")
async def destroy(ctx):
    dom = await ctx.entity.domain()
    await _require_state(ctx, dom, {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED,
                                    libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_PMSUSPENDED}, "destroy")
    await ctx.agent.libvirt.call(dom.destroy)


@_vm(namespace=CONTROL, action="reboot", chat=("reboot", "restart"), help="ask the guest to reboot")
async def reboot(ctx):
    dom = await ctx.entity.domain()
    await _require_state(ctx, dom, {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED}, "reboot")
    await ctx.agent.libvirt.call(dom.reboot, 0)


@_vm(namespace=CONTROL, action="suspend", chat=("pause", "suspend"), help="pause this VM")
async def suspend(ctx):
    dom = await ctx.entity.domain()
    await _require_state(ctx, dom, {libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED}, "suspend")
    await ctx.agent.libvirt.call(dom.suspend)


@_vm(namespace=CONTROL, action="resume", chat=("resume", "unpause"), help="resume this paused VM")
async def resume(ctx):
    dom = await ctx.entity.domain()
    await _require_state(ctx, dom, {libvirt.VIR_DOMAIN_PAUSED}, "resume")
    await ctx.agent.libvirt.call(dom.resume)


def strip_description(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    for desc in root.findall("description"):
        root.remove(desc)
    return root


@_vm(namespace=CONTROL, action="xmldesc", chat=("desc", "xml"), help="the libvirt definition of this VM")
async def xmldesc(ctx):
    try:
        dom = await ctx.entity.domain()
    except NotFound:
        return element("not-defined")
    xml = await ctx.agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_SECURE)
    return strip_description(xml)


@_vm(namespace=CONTROL, action="autostart", args=(Arg("value", parse=bool_01, help="0 or 1"),), chat=("autostart",), help="start this VM with the hypervisor (0 or 1)")
async def autostart(ctx, value):
    dom = await ctx.entity.domain()
    await ctx.agent.libvirt.call(dom.setAutostart, 1 if value else 0)


@_vm(namespace=CONTROL, action="setha", args=(Arg("value", parse=bool_01, help="0 or 1"),), chat=("setha",),
     help="restart this VM on another hypervisor if its host dies (0 or 1)")
async def setha(ctx, value):
    """The flag is a file on the shared storage (hypervisor/ha.py): every peer can read it."""
    await ctx.agent.ha.set(ctx.entity, value)


@_vm(namespace=CONTROL, action="getha", chat=("getha", "ha"), help="whether this VM is restarted elsewhere if its host dies")
async def getha(ctx):
    return element("ha", {"value": "1" if await ctx.agent.ha.enabled(ctx.entity.uuid) else "0"})


async def _affect_flags(ctx, dom) -> int:
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if await ctx.agent.libvirt.call(dom.isActive):
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    return flags


@_vm(namespace=CONTROL, action="memory", args=(Arg("value", parse=positive_int, help="KiB"),), chat=("memory",), help="set the memory (KiB)")
async def memory(ctx, value):
    if value < 1024:
        raise InvalidArgument("value", f"at least 1024 KiB, got {value}")
    dom = await ctx.entity.domain()
    max_mem = await ctx.agent.libvirt.call(dom.maxMemory)
    if value > max_mem:
        raise InvalidArgument("value", f"{value} KiB is above the maximum of {max_mem} KiB")
    async with ctx.agent.quotas.reserve(owner_of(ctx.entity, ctx.sender_bare)):  # quotas.py: check + change as one step
        await ctx.agent.quotas.check_memory(ctx.entity, value, sender=ctx.sender_bare)
        await ctx.agent.libvirt.call(dom.setMemoryFlags, value, await _affect_flags(ctx, dom))
    await ctx.entity.push(PUSH_CONTROL, "memory")


@_vm(namespace=CONTROL, action="setvcpus", args=(Arg("value", parse=positive_int, help="number of vCPUs"),), chat=("vcpus", "setvcpus"), help="set the number of vCPUs")
async def setvcpus(ctx, value):
    dom = await ctx.entity.domain()
    maximum = await ctx.agent.libvirt.call(dom.vcpusFlags, libvirt.VIR_DOMAIN_VCPU_MAXIMUM | libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    if value > maximum:
        raise InvalidArgument("value", f"{value} is above the maximum of {maximum} vCPUs")
    async with ctx.agent.quotas.reserve(owner_of(ctx.entity, ctx.sender_bare)):  # quotas.py: check + change as one step
        await ctx.agent.quotas.check_vcpus(ctx.entity, value, sender=ctx.sender_bare)
        await ctx.agent.libvirt.call(dom.setVcpusFlags, value, await _affect_flags(ctx, dom))
    await ctx.entity.push(PUSH_CONTROL, "nvcpu")
    await ctx.entity.push(PUSH_DEFINITION, "nvcpu")


STAT_NAMES = ("rx_bytes", "rx_packets", "rx_errs", "rx_drop", "tx_bytes", "tx_packets", "tx_errs", "tx_drop")


@_vm(namespace=CONTROL, action="networkinfo", chat=("net", "stat", "network"), help="traffic counters of each network interface")
async def networkinfo(ctx):
    dom = await ctx.entity.domain()
    if not await ctx.agent.libvirt.call(dom.isActive):
        raise Conflict("the VM must be running to read its network counters")
    root = ET.fromstring(await ctx.agent.libvirt.call(dom.XMLDesc, 0))
    out = []
    for target in root.findall("devices/interface/target"):
        dev = target.get("dev")
        if not dev:
            continue
        stats = await ctx.agent.libvirt.call(dom.interfaceStats, dev)
        out.append(element("network", {"name": dev, **dict(zip(STAT_NAMES, stats))}))
    return out


@_vm(namespace=CONTROL, action="free", chat=("free", "delete yourself"), help="destroy this VM and delete its entity")
async def free(ctx):
    """Reply first: freeing removes this entity's account, which closes the stream the reply would use."""
    uuid = ctx.entity.uuid
    ctx.agent.vms.get(uuid)  # NotFound now rather than silently later
    from ..storage.health import require_writable
    require_writable(ctx.agent, "free")  # refused now, not in the background
    asyncio.get_running_loop().call_soon(lambda: ctx.agent.spawn(ctx.agent.vms.free(uuid), name=f"free-{uuid}"))


def _grab_screenshot(conn, dom) -> bytes:
    """Blocking: stream the screenshot (PPM for QEMU) out of libvirt."""
    stream = conn.newStream(0)
    try:
        dom.screenshot(stream, 0, 0)
        chunks: list[bytes] = []
        stream.recvAll(lambda _s, data, acc: acc.append(data) or 0, chunks)
        stream.finish()
        return b"".join(chunks)
    except Exception:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        raise


@_vm(namespace=CONTROL, action="migrate", adhoc=False,
     args=(Arg("hypervisorjid", help="the destination hypervisor's full JID"),),
     help="live-migrate this VM to a peer hypervisor (also needs migrate on the destination)")
async def migrate(ctx, hypervisorjid):
    """Asynchronous (Archipel's shape): the reply comes once the destination accepted; the
    presence then shows ``Migrating - N%`` and the entity comes back from the destination."""
    await ctx.agent.migrations.start(ctx.entity, ctx.sender_bare, hypervisorjid)
    return None


@_vm(namespace=CONTROL, action="cancel", permission="migrate", adhoc=False, chat=("cancel migration",),
     help="abort this VM's running migration: it stays on this hypervisor")
async def cancel(ctx):
    """The source keeps the VM; the migration ends with the push ``migrationcancelled``."""
    await ctx.agent.migrations.cancel(ctx.entity)
    return None


@_vm(namespace=CONTROL, action="screenshot", args=(Arg("size", required=False, default="full", help="'thumbnail' or 'full'"),), adhoc=False, help="a PNG screenshot of the console")
async def screenshot(ctx, size):
    dom = await ctx.entity.domain()
    if not await ctx.agent.libvirt.call(dom.isActive):
        return None
    data = await ctx.agent.libvirt.call(_grab_screenshot, ctx.agent.libvirt.raw, dom, slow=True)  # waits on QEMU's monitor
    width, height, png = await asyncio.to_thread(ppm_to_png, data, 200 if size == "thumbnail" else None)
    return element("screenshot", {"mime": "image/png", "width": width, "height": height}, text=base64.b64encode(png).decode())


# ---------------------------------------------------------------- definition
@_vm(namespace=DEFINITION, action="define", args=(Arg("domain", source="element", help="libvirt <domain> XML"),), adhoc=True, help="define (replace) this VM's libvirt definition")
async def define(ctx, domain):
    await ctx.agent.vms.define(ctx.entity, domain, sender=ctx.sender_bare)


@_vm(namespace=DEFINITION, action="undefine", chat=("undefine",), help="remove this VM's libvirt definition (the entity stays)")
async def undefine(ctx):
    dom = await ctx.entity.domain()
    await ctx.agent.libvirt.call(dom.undefineFlags, UNDEFINE_FLAGS)


@_vm(namespace=DEFINITION, action="capabilities", chat=("capabilities",), help="libvirt capabilities of the hypervisor")
async def capabilities(ctx):
    return ET.fromstring(await ctx.agent.libvirt.capabilities())
