"""``archipel:vm:oom`` getadjust / setadjust: how willing the kernel's OOM killer is to kill a VM's QEMU.

Wire shapes are Archipel's (oomkiller plugin): ``setadjust adjust=N`` with N on
the old ``oom_adj`` scale the web client speaks, -17 to 15 (-17 = "PreventOOM":
never killed; the client's switch sends -17 or 0); ``getadjust`` answers
``<oom adjust score/>`` plus ``score_adj`` (what the kernel really holds).
Differences on purpose:

* the value is written to ``/proc/<pid>/oom_score_adj`` (``oom_adj`` is
  deprecated), converted as the kernel converts ``oom_adj`` (N * 1000 / 17,
  -17 → -1000, 15 → 1000);
* the QEMU is found through libvirt's pid file (``virt/qemu_process.py``),
  not ``ps | grep kvm | grep uuid``; /proc is read and written in a worker thread;
* the push is ``archipel:push:virtualmachine:oom`` ``adjusted``: Archipel
  pushed ``oom``, a namespace its client never listened to;
* the value is kept in ``oom.sqlite3`` (0600, WAL) and applied again each time
  the domain starts (libvirt STARTED event) and for running domains whenever
  libvirt (re)connects, and dropped when the VM is freed or unmanaged; ``score`` is the live ``oom_score`` (Archipel always said 0).
"""
from __future__ import annotations

import asyncio
import logging

import libvirt

from archipelagent.commands import Arg, CommandSet, element
from archipelagent.errors import Unavailable
from archipelagent.sqlite import open_private_db
from archipelagent.values import bounded_int
from archipelagent.virt import qemu_process
from archipelagent.virt.qemu_process import NoProcess, NotAllowed

log = logging.getLogger(__name__)

NS = "archipel:vm:oom"
PUSH = "virtualmachine:oom"
ADJUST_MIN, ADJUST_MAX, NEVER_KILL = -17, 15, -17
SCHEMA = ("CREATE TABLE IF NOT EXISTS oom (uuid TEXT PRIMARY KEY, adjust INTEGER NOT NULL)",)


def score_adj(adjust: int) -> int:
    """Archipel's ``oom_adj`` value → ``oom_score_adj``, as the kernel converts a write to ``oom_adj``."""
    if adjust == NEVER_KILL:
        return qemu_process.SCORE_ADJ_MIN
    if adjust == ADJUST_MAX:
        return qemu_process.SCORE_ADJ_MAX
    return int(adjust * 1000 / 17)  # C's division: towards zero


class OomService:
    """The stored adjust values, and applying them to the QEMU processes."""

    def __init__(self, agent, db):
        self.agent, self.db = agent, db
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, uuid: str) -> asyncio.Lock:
        """One change of a VM's value at a time (a set, a start), so /proc and the row agree."""
        return self._locks.setdefault(uuid, asyncio.Lock())

    async def stored(self, uuid: str) -> int:
        async with self.db.execute("SELECT adjust FROM oom WHERE uuid=?", (uuid,)) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else 0

    async def store(self, uuid: str, adjust: int) -> None:
        if adjust == 0:
            await self.db.execute("DELETE FROM oom WHERE uuid=?", (uuid,))
        else:
            await self.db.execute("INSERT INTO oom VALUES (?, ?) ON CONFLICT(uuid) DO UPDATE SET adjust=excluded.adjust",
                                  (uuid, adjust))
        await self.db.commit()

    async def pid(self, dom) -> int:
        name = await self.agent.libvirt.call(dom.name)
        uuid = await self.agent.libvirt.call(dom.UUIDString)
        return await asyncio.to_thread(qemu_process.qemu_pid, self.agent.libvirt.uri, name, uuid)

    async def apply(self, uuid: str, adjust: int | None = None) -> int | None:
        """Write the (stored) value to the running QEMU of ``uuid``; the pid, or None when it does not run."""
        adjust = await self.stored(uuid) if adjust is None else adjust
        dom = await self.agent.libvirt.lookup(uuid)
        if not await self.agent.libvirt.call(dom.isActive):
            return None
        pid = await self.pid(dom)
        await asyncio.to_thread(qemu_process.write_oom_score_adj, pid, score_adj(adjust))
        return pid

    async def on_lifecycle(self, uuid: str, event: int, detail: int) -> None:
        if event != libvirt.VIR_DOMAIN_EVENT_STARTED:
            return
        try:
            async with self.lock(uuid):
                adjust = await self.stored(uuid)
                if adjust == 0:
                    return  # the kernel's default: nothing to write
                pid = await self.apply(uuid, adjust)
            log.info("oom: VM %s started: oom_score_adj %d applied to pid %s", uuid, score_adj(adjust), pid)
        except Exception as exc:  # noqa: BLE001 - a listener logs, never raises
            log.warning("oom: cannot apply the stored value to VM %s: %s", uuid, exc)

    async def on_vm_gone(self, uuid: str, _jid: str) -> None:
        """Freed or unmanaged: its value goes (a domain managed again starts at the kernel's default)."""
        async with self.lock(uuid):
            await self.store(uuid, 0)
        self._locks.pop(uuid, None)

    def on_libvirt_state(self, connected: bool) -> None:
        if connected:
            self.agent.spawn(self.apply_all(), name="oom-apply")

    async def apply_all(self) -> None:
        """Running domains get their stored value again (the agent or libvirtd was restarted)."""
        async with self.db.execute("SELECT uuid FROM oom") as cursor:
            rows = list(await cursor.fetchall())
        for (uuid,) in rows:
            try:
                async with self.lock(uuid):
                    await self.apply(uuid)
            except Exception as exc:  # noqa: BLE001 - one VM must not stop the others
                log.info("oom: stored value of VM %s not applied: %s", uuid, exc)


def service(agent) -> OomService:
    found = agent.module_services.get("oom")
    if found is None:
        raise Unavailable("the oom module is not set up")
    return found


async def setup(agent) -> None:
    db = await open_private_db(agent.config.lib_dir / "oom.sqlite3", SCHEMA)
    svc = OomService(agent, db)
    agent.module_services["oom"] = svc
    agent.libvirt.add_lifecycle_listener(svc.on_lifecycle)
    agent.libvirt.add_state_listener(svc.on_libvirt_state)
    agent.vms.add_gone_listener(svc.on_vm_gone)


async def teardown(agent) -> None:
    svc = agent.module_services.pop("oom", None)
    if svc is not None:
        agent.libvirt.remove_lifecycle_listener(svc.on_lifecycle)
        agent.libvirt.remove_state_listener(svc.on_libvirt_state)
        agent.vms.remove_gone_listener(svc.on_vm_gone)
        await svc.db.close()


# ------------------------------------------------------------------ commands
commands = CommandSet()


async def _process_figures(svc: OomService, uuid: str) -> tuple[int, int] | None:
    """(oom_score_adj, oom_score) of the VM's QEMU, or None when it does not run."""
    dom = await svc.agent.libvirt.lookup(uuid)
    if not await svc.agent.libvirt.call(dom.isActive):
        return None
    try:
        pid = await svc.pid(dom)
        return await asyncio.to_thread(qemu_process.read_oom, pid)
    except NoProcess as exc:
        raise Unavailable(f"cannot find this VM's QEMU process: {exc}") from None


@commands.command(NS, "getadjust", kinds=("vm",), permission="oom_getadjust",
                  permission_description="See how the OOM killer treats this VM",
                  chat=("oom", "get oom"), help="the OOM adjust value of this VM (-17 = never killed) and its score",
                  chat_render=lambda p: "OOM adjust {adjust} (oom_score_adj {score_adj}), score {score}".format(**p[0].attrib))
async def getadjust(ctx):
    svc = service(ctx.agent)
    adjust = await svc.stored(ctx.entity.uuid)
    live = await _process_figures(svc, ctx.entity.uuid)
    adj, score = live if live is not None else (score_adj(adjust), 0)
    return element("oom", {"adjust": adjust, "score": score, "score_adj": adj})


@commands.command(NS, "setadjust", kinds=("vm",), permission="oom_setadjust",
                  permission_description="Change how the OOM killer treats this VM",
                  args=(Arg("adjust", parse=bounded_int(ADJUST_MIN, ADJUST_MAX),
                            help=f"{ADJUST_MIN} (never killed) to {ADJUST_MAX} (killed first); 0 is the default"),),
                  chat=("set oom",), help="set the OOM adjust value of this VM, kept across restarts")
async def setadjust(ctx, adjust):
    svc = service(ctx.agent)
    async with svc.lock(ctx.entity.uuid):
        try:
            await svc.apply(ctx.entity.uuid, adjust)  # a running QEMU first: nothing stored that was not applied
        except NoProcess as exc:
            raise Unavailable(f"cannot find this VM's QEMU process: {exc}") from None
        except NotAllowed as exc:
            raise Unavailable(str(exc)) from None
        await svc.store(ctx.entity.uuid, adjust)
    try:
        await ctx.entity.push(PUSH, "adjusted", [element("oom", {"adjust": adjust, "score_adj": score_adj(adjust)})])
    except Exception as exc:  # noqa: BLE001 - a push never fails the command
        log.warning("%s: oom push failed: %s", ctx.entity.jid, exc)
    return None
