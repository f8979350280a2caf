"""Quotas per user and per LDAP group: number of VMs, vCPUs, memory (KiB), disk (bytes).

* **Limits** are stored globally in the permissions database, table
  ``quotas(target_type, target, vms, vcpus, memory, disk)`` (see
  :mod:`archipelagent.permissions.store`); an unset limit is unlimited.
* **Applicable quotas** of a user: their own quota and the quota of each LDAP
  group they belong to.  All apply: per resource the smallest limit wins (the
  most restrictive), a user quota winning ties so the error names it.  LDAP is
  asked only when some group has a quota; if it is unreachable then, the
  request is refused (``-48`` "LDAP is unreachable"), never let through.
* **Usage** of a user is the VMs they own (``owner`` in the VM database,
  :mod:`archipelagent.hypervisor.records`): one VM each, the vCPUs and memory of the
  persistent libvirt definition, and the sizes of the files in the VM folders —
  plus, while they run, the VMs of others this user **started** (IsardVDI's rule:
  a student's start of a class VM, which the teacher owns, counts against the
  student): one VM each with its vCPUs and memory, no disk (the owner pays the disk).
  Who started a VM is kept in the running domain's live libvirt metadata
  (:data:`STARTER_URI`, written right after the start): libvirt drops it when the
  domain stops, whatever stops it, and it outlives an agent restart.
  Memory and vCPUs count what the VM is given (``currentMemory``, the
  ``current`` vCPU count).  A new or replaced definition (alloc, define) is
  counted at its **maximum** memory (:func:`~archipelagent.virt.policy.memory_kib`)
  because a balloon target binds only a cooperative guest; vCPUs beyond
  ``current`` can only be plugged by the host, i.e. by ``setvcpus``, which is
  checked.  ``memory`` and ``setvcpus`` count their new value for that VM.
* **Checks** run on alloc, clone, define, memory, setvcpus, a start by someone
  other than the owner (:meth:`QuotaCenter.starting`) and (through
  :meth:`QuotaCenter.check_disk`) disk creation.  A change is refused only when
  it makes a resource grow beyond a limit: shrinking is always allowed, even
  over a quota an admin lowered afterwards.  The usage counted is the owner's
  (the person who pays), whoever sends the request.  Admins (root admins and
  ``ldap_admin_groups``) are never limited, neither as owners nor as senders.
* **One change per owner at a time.**  A check reads the owner's usage, the
  change then makes it grow: two requests of one owner that each fit alone
  must not both pass.  :meth:`QuotaCenter.reserve` is an async lock per owner
  that the callers hold across the check *and* the change it guards (alloc,
  clone, define, memory, setvcpus, disk create/resize/convert).
* The agent builds its one :class:`QuotaCenter` in its wiring
  (``Agent.quotas``): every check runs from the first request on.

``archipel:quota`` (:mod:`.commands`) on the hypervisor: ``set`` / ``get`` (permissions
``quota_set`` / ``quota_get``) and ``usage`` (``quota_usage``, except that
anyone may read their own usage).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..errors import ArchipelError, NotFound
from ..permissions.store import GROUP, QUOTA_RESOURCES, USER, bare

if TYPE_CHECKING:  # pragma: no cover
    from ..agent import Agent

log = logging.getLogger(__name__)

NS = "archipel:quota"
STARTER_URI = "urn:archipel:quota:starter"  # live domain metadata: <starter user="bare JID"/>
RESOURCES = QUOTA_RESOURCES  # ("vms", "vcpus", "memory", "disk")
UNITS = {"vms": "", "vcpus": "", "memory": " KiB", "disk": " bytes"}
TARGET_TYPES = (USER, GROUP)


class QuotaExceeded(ArchipelError):
    """A request would take a user beyond one of their quotas."""

    code = -51
    condition = "policy-violation"

    def __init__(self, resource: str, requested: int, limit: int, source: str, used: int):
        unit = UNITS[resource]
        super().__init__(f"quota exceeded: {resource} {requested}{unit} requested, limit {limit}{unit} "
                         f"for {source} (already used {used}{unit})")
        self.resource, self.requested, self.limit, self.source, self.used = resource, requested, limit, source, used


# ----------------------------------------------------------------- arithmetic
@dataclass(frozen=True)
class Usage:
    vms: int = 0
    vcpus: int = 0
    memory: int = 0  # KiB
    disk: int = 0    # bytes

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __sub__(self, other: "Usage") -> "Usage":
        return Usage(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))

    def get(self, resource: str) -> int:
        return getattr(self, resource)

    def as_dict(self) -> dict[str, int]:
        return {name: self.get(name) for name in RESOURCES}


ZERO = Usage()


@dataclass(frozen=True)
class Quota:
    """The limits of one user (``target_type`` user, a bare JID) or LDAP group (a cn)."""

    target_type: str
    target: str
    limits: dict

    @property
    def source(self) -> str:
        return f"{self.target_type} {self.target}"


@dataclass(frozen=True)
class Limit:
    value: int
    quota: Quota


def effective_limits(quotas: Iterable[Quota]) -> dict[str, Limit]:
    """Per resource, the most restrictive limit among ``quotas`` (unlimited resources are absent).

    Ties go to the first quota given (the user's own comes first).
    """
    best: dict[str, Limit] = {}
    for quota in quotas:
        for resource in RESOURCES:
            value = quota.limits.get(resource)
            if value is None:
                continue
            if resource not in best or value < best[resource].value:
                best[resource] = Limit(value, quota)
    return best


def check_limits(before: Usage, after: Usage, limits: dict[str, Limit]) -> None:
    """Raise :class:`QuotaExceeded` for the first resource that grows beyond its limit."""
    for resource in RESOURCES:
        limit = limits.get(resource)
        wanted, used = after.get(resource), before.get(resource)
        if limit is not None and wanted > limit.value and wanted > used:
            raise QuotaExceeded(resource, wanted, limit.value, limit.quota.source, used)


# ------------------------------------------------------------ definitions
def _kib(value: str | None, unit: str | None) -> int:
    from ..virt.policy import _unit_bytes

    per_unit = _unit_bytes(unit) if unit else 1024
    text = (value or "").strip()
    if per_unit is None or not text.isdigit():
        return 0
    return -(-int(text) * per_unit // 1024)


def definition_maximum(root) -> Usage:
    """What a new or replaced definition (lxml ``<domain>``) may use: maximum memory, current vCPUs."""
    from ..virt.policy import memory_kib

    return Usage(vms=1, vcpus=current_vcpus(root), memory=memory_kib(root))


def current_vcpus(root) -> int:
    from ..virt.policy import vcpus

    maximum = vcpus(root)
    vcpu = root.find("vcpu")
    current = (vcpu.get("current") or "").strip() if vcpu is not None else ""
    return min(int(current), maximum) if current.isdigit() else maximum


def current_memory_kib(root) -> int:
    """``currentMemory`` (libvirt clamps it to the maximum), else the maximum."""
    from ..virt.policy import memory_kib

    maximum = memory_kib(root)
    current = root.find("currentMemory")
    if current is None:
        return maximum
    return min(_kib(current.text, current.get("unit")), maximum)


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (blocking; 0 when it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def parse_xml(xml: str):
    from lxml import etree

    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml,
                            etree.XMLParser(resolve_entities=False, no_network=True))


def owner_of(entity, sender: str | None = None) -> str | None:
    """Who pays for ``entity`` (a VM entity): its owner, else the sender."""
    record = getattr(entity, "record", None)
    return (record.owner if record is not None else None) or sender


# ------------------------------------------------------------------ center
class QuotaCenter:
    """Usage of users and the quota checks (limits are read from the store each time),
    and the per-owner locks that make a check and its change one step."""

    def __init__(self, agent: "Agent"):
        self.agent = agent
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def reserve(self, owner: str | None):
        """Hold ``owner``'s quota lock: checks and changes of one owner run one after another.

        ``None`` (no owner to charge) holds nothing.  Not reentrant: a caller
        holding it must not call code that takes it again.
        """
        if not owner:
            yield
            return
        key = bare(owner)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._holders[key] = self._holders.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._holders[key] -= 1
            if not self._holders[key]:  # nobody holds or waits: forget the lock
                del self._holders[key]
                self._locks.pop(key, None)

    @property
    def store(self):
        return self.agent.permissions.store

    # -- usage -----------------------------------------------------------------
    async def vm_usage(self, entity, *, disk: bool = True) -> Usage:
        """One VM: 1, its current vCPUs and memory (libvirt, persistent definition), its folder's files."""
        import libvirt

        vcpus = memory = 0
        try:
            dom = await self.agent.libvirt.lookup(entity.uuid)
            root = parse_xml(await self.agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE))
            vcpus, memory = current_vcpus(root), current_memory_kib(root)
        except NotFound:
            pass  # not defined: counts as a VM, with nothing else
        except ArchipelError as exc:
            if exc.code != -47:
                raise
        size = await self.agent.fs.call(folder_bytes, self.agent.vms.folder(entity.uuid), what="VM folder size") if disk else 0
        return Usage(1, vcpus, memory, size)

    def owned(self, user: str) -> list:
        user = bare(user)
        return [e for e in self.agent.vms.entities.values() if bare(e.record.owner or "-") == user]

    async def starters(self) -> dict[str, str]:
        """uuid -> bare JID of who started it, for this agent's running VMs started by a non-owner."""
        import libvirt

        def blocking(conn) -> dict[str, str]:
            found = {}
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                try:
                    xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, STARTER_URI, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                except libvirt.libvirtError:
                    continue  # none (started by its owner, or outside the agent), or gone meanwhile
                user = parse_xml(xml).get("user")
                if user:
                    found[dom.UUIDString().lower()] = bare(user)
            return found

        found = await self.agent.libvirt.call(blocking, self.agent.libvirt.raw)
        return {uuid: user for uuid, user in found.items() if uuid in self.agent.vms.entities}

    async def started(self, user: str) -> list:
        """The running VMs of others that ``user`` started (counted as theirs while they run)."""
        user = bare(user)
        return [self.agent.vms.entities[uuid] for uuid, starter in (await self.starters()).items()
                if starter == user and uuid in self.agent.vms.entities
                and bare(self.agent.vms.entities[uuid].record.owner or "-") != user]

    async def usage(self, user: str) -> Usage:
        total = ZERO
        for entity in self.owned(user):
            total = total + await self.vm_usage(entity)
        for entity in await self.started(user):
            total = total + await self.vm_usage(entity, disk=False)
        return total

    # -- limits ----------------------------------------------------------------
    async def quotas_for(self, user: str) -> list[Quota]:
        """The user's own quota first, then those of their LDAP groups (LDAP only if groups have quotas)."""
        user = bare(user)
        rows = await self.store.quotas()
        found = [Quota(USER, target, limits) for kind, target, limits in rows if kind == USER and target == user]
        group_rows = {target: limits for kind, target, limits in rows if kind == GROUP}
        if group_rows:
            groups = await self.agent.permissions.user_groups(user)  # may raise DirectoryUnavailable
            found += [Quota(GROUP, group, group_rows[group]) for group in sorted(groups) if group in group_rows]
        return found

    async def limits_for(self, user: str) -> dict[str, Limit]:
        return effective_limits(await self.quotas_for(user))

    async def exempt(self, *users: str | None) -> bool:
        """Admins are not limited."""
        for user in users:
            if user and await self.agent.permissions.is_admin(bare(user)):
                return True
        return False

    # -- checks ----------------------------------------------------------------
    async def check(self, owner: str, add: Usage, remove: Usage = ZERO, *, sender: str | None = None) -> None:
        """Refuse (QuotaExceeded) when ``owner``'s usage + ``add`` - ``remove`` grows beyond a limit."""
        if await self.exempt(sender, owner):
            return
        limits = await self.limits_for(owner)
        if not limits:
            return
        before = await self.usage(owner)
        check_limits(before, before + add - remove, limits)

    async def check_new(self, owner: str, root, *, sender: str | None = None, disk: int = 0) -> None:
        """A new VM (alloc) with the definition ``root`` (lxml)."""
        await self.check(owner, replace(definition_maximum(root), disk=disk), sender=sender)

    async def check_clone(self, owner: str, source, *, sender: str | None = None) -> None:
        """A copy of the VM entity ``source``: same vCPUs and memory, its folder's size on disk."""
        await self.check(owner, await self.vm_usage(source), sender=sender)

    async def check_define(self, entity, root, *, sender: str | None = None) -> None:
        """``entity``'s definition replaced by ``root``: counted at its maximum memory."""
        owner = entity.record.owner or sender
        if not owner:
            return
        current = await self.vm_usage(entity)
        new = definition_maximum(root)
        await self.check(owner, Usage(vcpus=new.vcpus, memory=new.memory),
                         Usage(vcpus=current.vcpus, memory=current.memory), sender=sender)

    async def check_memory(self, entity, value_kib: int, *, sender: str | None = None) -> None:
        owner = entity.record.owner or sender
        if owner:
            current = await self.vm_usage(entity)
            await self.check(owner, Usage(memory=value_kib), Usage(memory=current.memory), sender=sender)

    async def check_vcpus(self, entity, count: int, *, sender: str | None = None) -> None:
        owner = entity.record.owner or sender
        if owner:
            current = await self.vm_usage(entity)
            await self.check(owner, Usage(vcpus=count), Usage(vcpus=current.vcpus), sender=sender)

    @contextlib.asynccontextmanager
    async def starting(self, entity, sender: str | None):
        """Wrap the start of ``entity`` by ``sender`` (``archipel:vm:control create``, whatever transport).

        The owner's start changes nothing (their VMs count already).  Anyone
        else's start is checked against *their* quota, under their quota lock,
        as one more running VM with its vCPUs and memory; once the body (the
        start) returned, the starter is written in the running domain's live
        metadata, which libvirt forgets when the domain stops.
        """
        owner = getattr(getattr(entity, "record", None), "owner", None)
        if not sender or bare(sender) == bare(owner or "-"):
            yield
            return
        starter = bare(sender)
        async with self.reserve(starter):
            await self.check(starter, await self.vm_usage(entity, disk=False), sender=starter)
            yield
            await self.record_start(entity, starter)

    async def record_start(self, entity, starter: str) -> None:
        """Note in the running domain's live metadata that ``starter`` started it."""
        import libvirt
        from xml.sax.saxutils import quoteattr

        try:
            dom = await self.agent.libvirt.lookup(entity.uuid)
            await self.agent.libvirt.call(dom.setMetadata, libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                          f"<starter user={quoteattr(starter)}/>", "archipel", STARTER_URI,
                                          libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except ArchipelError as exc:  # the VM runs; it is only not counted for its starter
            log.warning("%s: could not record that %s started it: %s", entity.jid, starter, exc.message)

    async def check_disk(self, user: str, extra_bytes: int, *, sender: str | None = None) -> None:
        """For disk creation: may ``user`` (the VM's owner) use ``extra_bytes`` more on disk?"""
        await self.check(user, Usage(disk=max(0, int(extra_bytes))), sender=sender)
