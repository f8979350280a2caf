"""The agent: one process, one event loop, all entities of one hypervisor.

It wires the layers together — configuration, the command registry, the
permission center, the libvirt connection and the entities — and owns their
start and stop order.  Nothing here knows a particular command.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Coroutine

from .audit import AuditLog
from .audit.commands import commands as audit_commands
from .commands import Registry
from .commands.acp import AcpTransport
from .commands.adhoc import AdhocTransport
from .commands.chat import ChatTransport
from .commands.dispatch import InFlight
from .config import AgentConfig
from .fsio import StorageIO
from .metrics import Metrics, read_config as metrics_config
from .modules import FeatureModule, load_modules
from .hypervisor.ha import HA
from .hypervisor.maintenance import Maintenance
from .hypervisor.migrations import Migrations
from .hypervisor.commands import EXTRA_PERMISSIONS as vm_target_permissions, commands as hypervisor_commands
from .hypervisor.entity import HypervisorEntity
from .hypervisor.vms import VMManager
from .permissions import Permission, PermissionCenter, PermissionStore
from .permissions.commands import commands as permission_commands
from .virt.connection import LibvirtConnection
from .virt.states import StateReader
from .xmpp.published import PublishedMemory
from .xmpp.ratelimit import LoginGate
from .vm.commands import commands as vm_commands
from .quotas import QuotaCenter
from .quotas.commands import EXTRA_PERMISSIONS as quota_permissions, commands as quota_commands
from .permissions.subscriptions import commands as subscription_commands, decide_subscription
from .storage.commands import commands as storage_commands
from .storage.health import StorageHealth, StorageSettings
from .storage.images import DiskGuard

log = logging.getLogger(__name__)

KINDS = ("hypervisor", "vm")


def build_registry(modules: list[FeatureModule] = ()) -> Registry:
    """Every command the agent serves: the core sets, then each feature module's."""
    registry = Registry()
    registry.add_set(permission_commands)
    registry.add_set(hypervisor_commands)
    registry.add_set(audit_commands)
    registry.add_set(vm_commands)
    registry.add_set(quota_commands)
    registry.add_set(subscription_commands)
    registry.add_set(storage_commands)
    for module in modules:
        registry.add_set(module.commands)
    return registry


def declare_permissions(center: PermissionCenter, registry: Registry) -> None:
    """Each command's permission exists on the kinds that serve it (Archipel created one per action)."""
    for kind in KINDS:
        for command in registry.for_kind(kind):
            if command.permission:
                center.declare(kind, Permission(command.permission, command.permission_description))
    for kind, permission in (*quota_permissions, *vm_target_permissions):  # checked by handlers
        center.declare(kind, permission)


class Agent:
    def __init__(self, config: AgentConfig):
        self.config = config
        self.modules = load_modules(config.parser)
        self.registry = build_registry(self.modules)
        self.permissions: PermissionCenter | None = None
        self.directory = None  # LDAP (archipelagent.directory.Directory) when [LDAP] is set
        self.audit: AuditLog | None = None  # every command, see audit.py
        # handed to every entity: the XMPP layer knows neither the transports nor the permission rules
        self.transports = (AcpTransport, ChatTransport, AdhocTransport)  # IQ, chat, ad-hoc: one dispatch
        self.subscription_policy = decide_subscription  # inbound presence subscriptions (permissions/subscriptions.py)
        self.login_gate = LoginGate(config.xmpp.max_logins_per_second)  # every entity's logins, rate-bounded (xmpp/ratelimit.py)
        self.published = PublishedMemory()  # what the server already holds per entity (xmpp/published.py); a file at start
        self.requests = InFlight()  # each sender's requests in flight, bounded (commands/dispatch.py)
        self.libvirt = LibvirtConnection(
            config.libvirt_uri,
            reconnect_min_delay=config.xmpp.reconnect_min_delay,
            reconnect_max_delay=min(config.xmpp.reconnect_max_delay, 30.0),
        )
        self.domain_states = StateReader(self.libvirt)  # VM states read in shared batches (virt/states.py)
        self.fs = StorageIO()  # every file system call on the shared storage (fsio.py): threads + timeout
        self.disk_guard = DiskGuard.from_config(config, self.fs)  # disk formats recorded, chains confined (storage/images.py)
        self.hypervisor: HypervisorEntity | None = None
        self.vms = VMManager(self)
        self.migrations = Migrations(self)  # live migration, source and destination (hypervisor/migrations.py)
        self.maintenance = Maintenance(self)  # refuses new VMs, evacuates (hypervisor/maintenance.py)
        self.ha = HA(self)  # lease, dead hosts' HA VMs restarted here (hypervisor/ha.py)
        self.quotas = QuotaCenter(self)  # every quota check and the per-owner locks (quotas.py)
        self.storage_settings = StorageSettings.from_config(config)  # ConfigError on a bad [STORAGE] key
        self.storage_health: StorageHealth | None = None  # see storage/health.py
        self._tasks: set[asyncio.Task] = set()
        self.library_paths: tuple = ()  # read-only libraries (ISO, golden images) the storage module declares
        self.disks = None  # the storage module's DiskService, filled by its setup(); None while that module is off
        self.metrics = Metrics(metrics_config(config))  # counts always; serves [METRICS] metrics_address when set
        self.libvirt_reconnects = 0
        self._libvirt_seen = False
        self.module_services: dict[str, object] = {}  # other feature modules' services, by module name (their setup())

    def spawn(self, coro: Coroutine, *, name: str | None = None) -> asyncio.Task:
        """Run background work owned by the agent (kept referenced, errors logged, cancelled at stop)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def start(self) -> None:
        store = await PermissionStore.open(self.config.hypervisor.permissions_database_path)
        if self.config.ldap is not None:
            from .directory import Directory
            self.directory = Directory(self.config.ldap, self.config.domain)
        self.permissions = PermissionCenter(store, self.config.root_admins, directory=self.directory)
        declare_permissions(self.permissions, self.registry)
        hv_cfg = self.config.hypervisor
        self.audit = await AuditLog.open(
            hv_cfg.audit_database_path or self.config.lib_dir / "audit.sqlite3",
            max_rows=hv_cfg.audit_max_rows, max_days=hv_cfg.audit_max_days)
        self.libvirt.add_state_listener(self._on_libvirt_state)
        self.libvirt.add_lifecycle_listener(self.vms.on_lifecycle)
        self.libvirt.add_lifecycle_listener(self.migrations.on_lifecycle)
        await self.vms.open()
        self.published = await PublishedMemory.open(self.config.lib_dir / "published.sqlite3")
        self.storage_health = StorageHealth(self, self.config.vm.base_path, self.storage_settings)
        self.libvirt.add_lifecycle_listener(self.storage_health.on_lifecycle)
        self.storage_health.start()
        for module in self.modules:  # before any entity serves a command
            await module.setup(self)
        await self.libvirt.start()
        hv = self.config.hypervisor
        self.hypervisor = HypervisorEntity(self, hv.jid, hv.password, name=hv.name, resource=hv.name)
        self.hypervisor.start()
        await self.vms.load()
        if self.libvirt.connected:  # a migration half-done while this agent was away
            await self.migrations.reconcile()
        self.ha.start()
        for module in self.modules:  # the entities exist: modules whose work names them start it
            await module.ready(self)
        self.metrics.start(self)

    async def stop(self) -> None:
        """Stop in order; background tasks are cancelled *and awaited*, and the VM
        operations in flight finish their critical steps first (``VMManager.close``)."""
        self.vms.refuse_changes()
        await self._cancel_tasks()
        await self.metrics.stop()
        if self.storage_health:
            await self.storage_health.stop()
        await self.vms.close()
        if self.hypervisor:
            await self.hypervisor.stop()
        await self.published.close()
        for module in reversed(self.modules):
            await module.teardown(self)
        await self.libvirt.stop()
        await self.ha.stop()  # withdraws the lease (hypervisor/ha.py)
        self.fs.close()
        if self.audit:  # after the entities: their last answers are recorded too
            await self.audit.close()
        if self.permissions:
            await self.permissions.store.close()
        if self.directory:
            await self.directory.close()

    async def _cancel_tasks(self, timeout: float = 60) -> None:
        """Cancel the background tasks and wait for them (a cancelled free still
        finishes its critical steps: ``VMManager.close`` waits for those)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("background task %s did not stop within %.0f s", task.get_name(), timeout)

    def _on_libvirt_state(self, connected: bool) -> None:
        if connected:
            log.info("libvirt connected")
            self.libvirt_reconnects += self._libvirt_seen
            self._libvirt_seen = True
        else:
            log.warning("libvirt connection lost")
        if self.hypervisor:
            self.hypervisor.refresh_presence()
        if connected:
            self.spawn(self.vms.reconcile(), name="reconcile")
        else:
            for vm in self.vms.entities.values():
                vm.set_presence("Libvirt connection lost", "dnd")
