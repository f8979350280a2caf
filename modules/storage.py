"""``archipel:vm:disk``: the disks of a VM, the ISO library and golden images.

Disks are files in the VM's folder on the shared storage
(``<vm_base_path>/<uuid>/``).  Every path a request names is confined: names
are validated, symlinks and ``..`` are resolved with ``realpath`` and the
result must be a direct child of the VM folder (or of the configured ISO /
golden folders).  Formats are never probed: each disk's format is recorded
when the agent creates or imports it and every qemu-img call passes ``-f``
(``-F`` for a backing file); the chain check is the one of
:mod:`archipelagent.storage.images`.  Every file system call on the VM storage
goes through ``agent.fs`` (a bounded pool with a timeout: a hung NFS mount
answers ``-48``, the loop never blocks).

``qemu-img`` runs as an asyncio subprocess, never on the event loop.  Long work
(convert, copying a disk into the golden folder) is accepted at once, runs in
the background and reports through pushes (``disk``: ``progress``, then
``converted``/``goldened`` or ``failed``); other commands keep being served.

Archipel's bug fixed: ``getgolden``/``setgolden`` have their own permissions
(``drives_getgolden``, ``drives_setgolden``) instead of ``drives_create_golden``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import libvirt

from archipelagent.commands import Arg, CommandSet, element
from archipelagent.config import ConfigError
from archipelagent.errors import ArchipelError, Conflict, InvalidArgument, NotFound, Unavailable
from archipelagent.quotas import owner_of
from archipelagent.values import NameRefused, UNITS, human_size, parse_bytes as parse_size, parse_yes as bool_yes, validate_name  # noqa: F401 - re-exported
from archipelagent.storage.health import require_writable as health_require_writable
from archipelagent.storage.images import configured_folders, FORMATS, QEMU_IMG_TIMEOUT, DiskToolError, ImageRefused, realpath, run_tool

log = logging.getLogger(__name__)

NS = "archipel:vm:disk"
PUSH = "disk"
SECTION = "STORAGE"

PREALLOCATIONS = ("off", "metadata", "falloc", "full")
DISK_SUFFIXES = (".qcow2", ".qcow", ".img", ".raw", ".vmdk", ".vdi", ".vhd", ".vhdx")
# a name's suffix must not claim a format the file is not (a .vmdk is read as VMDK by any tool that probes)
SUFFIX_FORMATS = {".qcow2": ("qcow2",), ".qcow": ("qcow2",), ".raw": ("raw",), ".img": FORMATS}
ISO_SUFFIXES = (".iso", ".img")
SUFFIX = {"qcow2": ".qcow2", "raw": ".raw"}
DEFAULT_MAX_DISK = "4T"


class PathRefused(NameRefused):
    """A name or path that would leave the VM folder or the configured libraries."""


# ------------------------------------------------------------ pure helpers






def confined_file(folder: str | os.PathLike, ref: Any, *, argument: str = "name", what: str = "this VM's folder") -> Path:
    """The file ``ref`` names in ``folder``: a plain name, or an absolute path that
    resolves to a direct child of ``folder``.  Symlinks leaving it are refused."""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument(argument, "must not be empty")
    if "\x00" in ref:
        raise PathRefused(argument, "contains a NUL character")
    base = realpath(folder)
    if os.path.isabs(ref):
        real = realpath(ref)
        if real.parent != base:
            raise PathRefused(argument, f"'{ref[:200]}' is outside {what}")
        ref = real.name
    validate_name(ref, argument)
    real = realpath(base / ref)
    if real.parent != base:
        raise PathRefused(argument, f"'{ref}' resolves to '{real}', outside {what}")
    return real


def disk_file_name(name: str, fmt: str) -> str:
    """``name`` as given if it already has a disk suffix, else ``name.<format suffix>``."""
    validate_name(name)
    if Path(name).suffix.lower() in DISK_SUFFIXES:
        return name
    return validate_name(name + SUFFIX[fmt])




# ------------------------------------------------------------------ config
@dataclass(frozen=True)
class StorageConfig:
    vm_base_path: Path
    iso_library_path: Path
    golden_images_path: Path
    qemu_img: str
    max_disk_bytes: int
    long_jobs: int


def read_config(config) -> StorageConfig:
    """The ``[STORAGE]`` keys this module uses, with defaults; ConfigError on a bad value."""
    parser = config.parser
    base = Path(config.vm.base_path)
    path = config.path

    def raw(key: str, default: str) -> str:
        if parser is None or not parser.has_section(SECTION):
            return default
        try:
            value = parser.get(SECTION, key, fallback=None)
        except Exception as exc:  # noqa: BLE001 - interpolation errors
            raise ConfigError(path, SECTION, key, f"cannot read the value: {exc}") from None
        value = (value or "").strip()
        return value or default

    def folder(key: str, p: Path) -> Path:
        value = str(p)
        if not p.is_absolute():
            raise ConfigError(path, SECTION, key, f"expected an absolute path, found {value!r}")
        rp, rb = realpath(p), realpath(base)
        if rp == rb or rp.is_relative_to(rb) or rb.is_relative_to(rp):
            raise ConfigError(path, SECTION, key, f"{value!r} must not overlap vm_base_path ({base}): "
                                                  "VM folders and libraries are confined separately")
        if p.exists() and not p.is_dir():
            raise ConfigError(path, SECTION, key, f"{value!r} exists and is not a directory")
        return p

    _, iso_path, golden_path, qemu_img = configured_folders(config)  # the keys and their defaults (images.py)
    iso = folder("iso_library_path", iso_path)
    golden = folder("golden_images_path", golden_path)
    found = shutil.which(qemu_img)
    if not found:
        raise ConfigError(path, SECTION, "qemu_img_path", f"{qemu_img!r} not found (install qemu-utils)")
    max_text = raw("max_disk_size", DEFAULT_MAX_DISK)
    try:
        max_bytes = parse_size(max_text, None, argument="max_disk_size")
    except InvalidArgument:
        raise ConfigError(path, SECTION, "max_disk_size",
                          f"expected a size such as 500G or 4T, found {max_text!r}") from None
    jobs_text = raw("disk_jobs", "2")
    if not jobs_text.isdigit() or not 1 <= int(jobs_text) <= 64:
        raise ConfigError(path, SECTION, "disk_jobs", f"expected an integer between 1 and 64, found {jobs_text!r}")
    return StorageConfig(base, iso, golden, found, max_bytes, int(jobs_text))


# ------------------------------------------------------------------ service
@dataclass
class DiskService:
    """What the module keeps per agent: its config, per-VM locks, files being worked on."""

    cfg: StorageConfig
    jobs: asyncio.Semaphore
    fs: Any  # agent.fs (archipelagent/fsio.py)
    guard: Any  # agent.disk_guard (archipelagent/storage/images.py): records and the chain check
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    busy: dict[Path, str] = field(default_factory=dict)  # real path → operation in progress

    def lock(self, uuid: str) -> asyncio.Lock:
        return self.locks.setdefault(uuid, asyncio.Lock())

    def folder(self, uuid: str) -> Path:
        return Path(self.cfg.vm_base_path) / uuid

    def _real_folder(self, uuid: str) -> Path:
        folder = self.folder(uuid)
        real = realpath(folder)
        if real.parent != realpath(self.cfg.vm_base_path) or real.name != uuid:
            raise PathRefused("name", f"the VM folder {folder} resolves to {real}, outside vm_base_path")
        return real

    async def io(self, fn: Callable, *args, **kw):
        """A file system call on the VM storage, in the agent's storage pool (-48 after its timeout)."""
        return await self.fs.call(fn, *args, **kw)

    async def real_folder(self, uuid: str) -> Path:
        return await self.io(self._real_folder, uuid, what="resolve the VM folder")

    async def confined(self, folder: Path, ref: Any, **kw) -> Path:
        """:func:`confined_file`, off the loop."""
        return await self.io(lambda: confined_file(folder, ref, **kw), what="resolve a disk path")

    async def allowed_bases(self, uuid: str) -> tuple[Path, Path]:
        return (await self.real_folder(uuid), await self.io(realpath, self.cfg.golden_images_path))

    def require_idle(self, *paths: Path) -> None:
        for p in paths:
            if p in self.busy:
                raise Conflict(f"disk '{p.name}' is busy ({self.busy[p]} in progress)")

    def busy_in(self, folder: Path) -> list[str]:
        return [f"{p.name} ({op})" for p, op in self.busy.items() if p.parent == folder]

    async def qemu_img(self, *args: str, **kw) -> str:
        return await run_tool([self.cfg.qemu_img, *args], **kw)

    async def info(self, path: Path, fmt: str) -> dict:
        """``qemu-img info -f <fmt>`` of the top image only (after :meth:`checked_info`)."""
        return (await self.guard.chain(path, fmt))[0]

    async def checked_info(self, uuid: str, path: Path) -> tuple[str, dict]:
        """(recorded format, top image's info) after the one chain check (storage/images.py):
        no record, a probed backing format or a chain leaving the VM and golden folders is refused."""
        fmt, chain = await self.guard.checked_disk(path, await self.allowed_bases(uuid))
        return fmt, chain[0]


def service(agent) -> DiskService:
    """The module's service, built once by :func:`setup` (never lazily: a command before setup is refused)."""
    if agent.disks is None:
        raise Unavailable("the storage module is not set up")
    return agent.disks


def library_paths(agent) -> tuple[Path, ...]:
    """The read-only libraries (ISO, golden images) for the definition policy's
    ``PolicyContext.library_paths``; empty when the storage module is not set up."""
    svc = agent.disks
    if svc is None:
        return ()
    return (realpath(svc.cfg.iso_library_path), realpath(svc.cfg.golden_images_path))


async def setup(agent) -> None:
    """Validate [STORAGE] (a bad value stops the agent start) and make the library folders."""
    try:  # read_config resolves the configured folders: off the loop, like every storage call
        cfg = await agent.fs.call(read_config, agent.config, what="read the storage configuration")
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        raise
    svc = agent.disks = DiskService(cfg, asyncio.Semaphore(cfg.long_jobs), agent.fs, agent.disk_guard)
    for folder in (svc.cfg.iso_library_path, svc.cfg.golden_images_path):
        try:
            await agent.fs.call(folder.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("storage: cannot create %s (%s); it is created again when needed", folder, exc.strerror or exc)
    log.info("storage: ISO library %s, golden images %s", svc.cfg.iso_library_path, svc.cfg.golden_images_path)
    agent.library_paths = await agent.fs.call(library_paths, agent)  # read by the definition policy (cdroms, backing files)


async def teardown(agent) -> None:
    agent.disks = None


# ------------------------------------------------------------ hooks
async def require_writable(agent, action: str) -> None:
    """Refuse while the storage is degraded (the agent's storage health monitor, storage/health.py)."""
    health_require_writable(agent, action)


def quota_lock(ctx):
    """The VM owner's quota lock (quotas.py), held across a disk's quota check and its creation."""
    return ctx.agent.quotas.reserve(owner_of(ctx.entity, ctx.sender_bare))


async def check_quota(ctx, extra_bytes: int) -> None:
    """The disk space counts against the VM's owner (an admin sender is not limited)."""
    if extra_bytes > 0:
        await ctx.agent.quotas.check_disk(owner_of(ctx.entity, ctx.sender_bare), extra_bytes,
                                          sender=ctx.sender_bare)


# ---------------------------------------------------------- domain helpers
async def _domain(ctx):
    try:
        return await ctx.entity.domain()
    except NotFound:
        return None


def _disk_paths(root: ET.Element) -> dict[Path, ET.Element]:
    """Real path → <disk> of a definition (blocking: realpath; run through ``fs``)."""
    out = {}
    for disk in root.iter("disk"):
        for holder in [disk, *disk.iter("backingStore")]:
            source = holder.find("source")
            if source is not None and source.get("file"):
                out.setdefault(realpath(source.get("file")), disk)
    return out


async def _domain_disk_paths(ctx, dom, *, live: bool) -> dict[Path, ET.Element]:
    """Real path → <disk> element of the domain's disks (live or persistent definition)."""
    flags = 0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE
    root = ET.fromstring(await ctx.agent.libvirt.call(dom.XMLDesc, flags))
    return await ctx.agent.fs.call(_disk_paths, root, what="resolve the defined disks")


async def _in_use_by_running(ctx, dom, path: Path) -> bool:
    if dom is None or not await ctx.agent.libvirt.call(dom.isActive):
        return False
    return path in await _domain_disk_paths(ctx, dom, live=True)


async def _refuse_if_running_uses(ctx, dom, path: Path, verb: str) -> None:
    if await _in_use_by_running(ctx, dom, path):
        raise Conflict(f"cannot {verb} '{path.name}': the running VM uses it; shut the VM down first")


async def _redefine_disks(ctx, dom, change: Callable[[ET.Element], bool]) -> bool:
    """Apply ``change`` (it resolves paths: run through ``fs``) to the persistent definition;
    redefine if it says it changed something."""
    if dom is None:
        return False
    xml = await ctx.agent.libvirt.call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    root = ET.fromstring(xml)
    if not await ctx.agent.fs.call(change, root, what="update the defined disks"):
        return False
    await ctx.agent.libvirt.call("defineXML", ET.tostring(root, encoding="unicode"))
    return True


def _disk_sources(root: ET.Element, path: Path) -> list[tuple[ET.Element, ET.Element]]:
    """(devices, <disk>) pairs whose main source resolves to ``path`` (blocking: realpath)."""
    found = []
    for devices in root.iter("devices"):
        for disk in devices.findall("disk"):
            source = disk.find("source")
            if source is not None and source.get("file") and realpath(source.get("file")) == path:
                found.append((devices, disk))
    return found


async def _backed_by(svc: DiskService, folder: Path, path: Path) -> list[str]:
    """Names of the other disks of the folder whose backing chain contains ``path``."""
    users = []
    records = await svc.guard.records(folder)
    for other in await svc.io(_disk_files, folder, what="list the disks"):
        fmt = records.get(other.name)
        if other == path or fmt is None:
            continue
        try:
            chain = await svc.guard.chain(other, fmt)
        except (DiskToolError, ImageRefused):
            continue
        files = [img.get("filename") for img in chain[1:] if img.get("filename")]
        if path in await svc.io(lambda: [realpath(f) for f in files], what="resolve backing files"):
            users.append(other.name)
    return users


def _disk_files(folder: Path) -> list[Path]:
    """Real paths of the disk files directly in ``folder`` (symlinks leaving it are skipped; blocking)."""
    if not folder.is_dir():
        return []
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in DISK_SUFFIXES:
            continue
        real = realpath(entry.path)
        if real.parent != folder or not real.is_file():
            continue
        out.append(real)
    return out


def _library_files(folder: Path, suffixes: tuple[str, ...] | None) -> list[Path]:
    if not folder.is_dir():
        return []
    base = realpath(folder)
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if suffixes and Path(entry.name).suffix.lower() not in suffixes:
            continue
        real = realpath(entry.path)
        if real.parent == base and real.is_file():
            out.append(real)
    return out


def _is_file(path: Path) -> bool:
    return path.is_file()


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _suffix_fits(name: str, fmt: str) -> bool:
    """A disk suffix must not name another format than the file's (a '.vmdk' raw disk is refused)."""
    suffix = Path(name).suffix.lower()
    if suffix not in DISK_SUFFIXES:
        return True
    return fmt in SUFFIX_FORMATS.get(suffix, ())


def _disk_element(info: dict, path: Path, problem: str | None = None) -> ET.Element:
    attrs = {"name": path.name, "path": str(path), "format": info.get("format", ""),
             "virtualSize": info.get("virtual-size", 0), "diskSize": info.get("actual-size", 0)}
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        attrs["backingFile"] = backing
    if info.get("snapshots"):
        attrs["snapshots"] = len(info["snapshots"])
    if problem:
        attrs["error"] = problem
    return element("disk", attrs)


async def _push(ctx, change: str, **attrs) -> None:
    try:
        await ctx.entity.push(PUSH, change, [element("disk", attrs)])
    except Exception as exc:  # noqa: BLE001 - a push never fails the command
        log.warning("%s: disk push %s failed: %s", ctx.entity.jid, change, exc)


def _progress_pusher(ctx, action: str, name: str) -> Callable[[float], None]:
    """A qemu-img progress callback that pushes every 10 %."""
    last = {"pct": -10}

    def report(pct: float) -> None:
        step = int(pct) // 10 * 10
        if step >= last["pct"] + 10 and step < 100:
            last["pct"] = step
            ctx.agent.spawn(_push(ctx, "progress", name=name, action=action, progress=step), name=f"disk-progress-{name}")

    return report


def _render_disks(payload) -> str:
    if not payload:
        return "No disks."
    return "\n".join(f"{d.get('name')}: {d.get('format')}, {human_size(int(d.get('virtualSize') or 0))} "
                     f"({human_size(int(d.get('diskSize') or 0))} used)"
                     + (f", backed by {d.get('backingFile')}" if d.get("backingFile") else "") for d in payload)


def _render_names(kind: str):
    def render(payload) -> str:
        if not payload:
            return f"No {kind}."
        return "\n".join(f"{el.get('name')}: {el.get('path')}" for el in payload)
    return render


commands = CommandSet()


def _cmd(action: str, **kw):
    return commands.command(namespace=NS, action=action, permission=f"drives_{action}", kinds=("vm",), **kw)


# ------------------------------------------------------------------ commands
@_cmd("get", chat=("disks", "list disks", "drives"), chat_render=_render_disks,
      help="the disk files in this VM's folder (name, path, format, sizes, backing file)")
async def get(ctx):
    svc = service(ctx.agent)
    folder = await svc.real_folder(ctx.entity.uuid)
    files = await svc.io(_disk_files, folder, what="list the disks")
    allowed = await svc.allowed_bases(ctx.entity.uuid)

    async def one(path: Path) -> ET.Element:
        try:
            _fmt, chain = await svc.guard.checked_disk(path, allowed)
        except ImageRefused as exc:
            return element("disk", {"name": path.name, "path": str(path), "error": exc.reason})
        except DiskToolError as exc:
            return element("disk", {"name": path.name, "path": str(path), "error": exc.message})
        return _disk_element(chain[0], path)

    return list(await asyncio.gather(*(one(p) for p in files)))


@_cmd("getiso", chat=("isos", "list isos"), chat_render=_render_names("ISO images"),
      help="the ISO images of the library")
async def getiso(ctx):
    svc = service(ctx.agent)
    files = await svc.io(_library_files, svc.cfg.iso_library_path, ISO_SUFFIXES, what="list the ISO library")
    return [element("iso", {"name": p.name, "path": str(Path(svc.cfg.iso_library_path) / p.name)}) for p in files]


@_cmd("getgolden", chat=("goldens", "golden images", "list goldens"), chat_render=_render_names("golden images"),
      help="the golden images a disk can be created from (create golden=<name>)")
async def getgolden(ctx):
    svc = service(ctx.agent)
    files = await svc.io(_library_files, svc.cfg.golden_images_path, DISK_SUFFIXES, what="list the golden images")
    return [element("golden", {"name": p.name, "path": str(Path(svc.cfg.golden_images_path) / p.name)}) for p in files]


def _golden_file(svc: DiskService, name: str) -> Path:
    """A golden image by file name, or by stem when that is unambiguous (blocking)."""
    base = svc.cfg.golden_images_path
    validate_name(name, "golden")
    path = confined_file(base, name, argument="golden", what="the golden images folder")
    if path.is_file():
        return path
    matches = [p for p in _library_files(base, DISK_SUFFIXES) if p.stem == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidArgument("golden", f"'{name}' is ambiguous: {', '.join(p.name for p in matches)}")
    raise NotFound(f"no golden image '{name}' (see getgolden)")


@_cmd("create", chat=("create disk", "new disk"),
      args=(Arg("name", help="disk name (the format's suffix is added when missing)"),
            Arg("size", required=False, help="size, e.g. 10 (with unit) or 10G"),
            Arg("unit", required=False, default="G", help="K, M, G or T (binary)"),
            Arg("format", required=False, default="qcow2", choices=FORMATS, help="qcow2 or raw"),
            Arg("preallocation", required=False, choices=PREALLOCATIONS, help="off, metadata, falloc or full"),
            Arg("golden", required=False, help="create a qcow2 overlay of this golden image")),
      chat_render=lambda p: f"Created {p[0].get('name')} ({p[0].get('format')}, {human_size(int(p[0].get('virtualSize')))}).",
      help="create a disk in this VM's folder (qcow2 or raw, or a qcow2 overlay of a golden image)")
async def create(ctx, name, size, unit, format, preallocation, golden):
    svc = service(ctx.agent)
    uuid = ctx.entity.uuid
    fmt = format
    file_name = disk_file_name(name, fmt)
    if not _suffix_fits(file_name, fmt):
        raise InvalidArgument("name", f"'{file_name}' has a suffix of another format than {fmt}")
    backing: Path | None = None
    backing_fmt: str | None = None
    backing_info: dict | None = None
    if golden:
        if fmt != "qcow2":
            raise InvalidArgument("format", "an overlay of a golden image is always qcow2")
        if preallocation not in (None, "off"):
            raise InvalidArgument("preallocation", "an overlay of a golden image is not preallocated")
        backing = await svc.io(_golden_file, svc, golden, what="find the golden image")
        gfolder = await svc.io(realpath, svc.cfg.golden_images_path)
        try:
            backing_fmt, chain = await svc.guard.checked_disk(backing, (gfolder,))
        except ImageRefused as exc:
            raise PathRefused("golden", f"golden image '{backing.name}' is refused: {exc.reason}") from None
        backing_info = chain[0]
        preallocation = "off"
    else:
        if preallocation is None:
            preallocation = "metadata" if fmt == "qcow2" else "off"
        if fmt == "raw" and preallocation == "metadata":
            raise InvalidArgument("preallocation", "a raw disk has no metadata: use off, falloc or full")
    if size:
        nbytes = parse_size(size, unit, maximum=svc.cfg.max_disk_bytes)
    elif backing_info is not None:
        nbytes = int(backing_info.get("virtual-size") or 0)
    else:
        raise InvalidArgument("size", "required (e.g. size=10 unit=G), unless golden is given")
    if backing_info is not None and nbytes < int(backing_info.get("virtual-size") or 0):
        raise InvalidArgument("size", f"smaller than the golden image ({human_size(int(backing_info['virtual-size']))})")
    await require_writable(ctx.agent, "create a disk")
    async with svc.lock(uuid), quota_lock(ctx):  # quota check + change as one step
        folder = svc.folder(uuid)
        await svc.io(folder.mkdir, parents=True, exist_ok=True)
        real_folder = await svc.real_folder(uuid)
        path = await svc.confined(real_folder, file_name)
        if await svc.io(_lexists, real_folder / file_name) or await svc.io(_lexists, path):
            raise Conflict(f"a disk named '{file_name}' already exists in this VM's folder")
        await check_quota(ctx, nbytes)
        argv = ["create", "-q", "-f", fmt]
        if backing is not None:
            golden_path = Path(svc.cfg.golden_images_path) / backing.name
            argv += ["-b", str(golden_path), "-F", backing_fmt]
        else:
            argv += ["-o", f"preallocation={preallocation}"]
        argv += [str(path), str(nbytes)]
        svc.busy[path] = "create"
        try:
            await svc.qemu_img(*argv, timeout=None if preallocation in ("full", "falloc") else QEMU_IMG_TIMEOUT)
            await svc.guard.record(path, fmt)
        except BaseException:
            await svc.io(_unlink_quiet, path)
            raise
        finally:
            svc.busy.pop(path, None)
        info = await svc.info(path, fmt)
    result = _disk_element(info, path)
    await _push(ctx, "created", name=path.name, path=str(path), format=fmt)
    return result


def _unlink_quiet(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@_cmd("delete", chat=("delete disk", "remove disk"),
      args=(Arg("name", help="disk file name (or its path in this VM's folder)"),
            Arg("undefine", parse=bool_yes, required=False, default=False, help="yes: also remove it from the definition")),
      help="delete a disk file of this VM (undefine=yes also removes it from the VM definition)")
async def delete(ctx, name, undefine):
    svc = service(ctx.agent)
    uuid = ctx.entity.uuid
    path = await svc.confined(await svc.real_folder(uuid), name)
    await require_writable(ctx.agent, "delete a disk")
    async with svc.lock(uuid):
        if not await svc.io(_is_file, path):
            raise NotFound(f"no disk '{path.name}' in this VM's folder")
        svc.require_idle(path)
        dom = await _domain(ctx)
        await _refuse_if_running_uses(ctx, dom, path, "delete")
        users = await _backed_by(svc, path.parent, path)
        if users:
            raise Conflict(f"cannot delete '{path.name}': it is the backing file of {', '.join(users)}")
        if dom is not None:
            defined = path in await _domain_disk_paths(ctx, dom, live=False)
            if defined and not undefine:
                raise Conflict(f"'{path.name}' is in the VM definition: pass undefine=yes to remove it from the "
                               "definition too")
            if defined:
                def drop(root: ET.Element) -> bool:
                    pairs = _disk_sources(root, path)
                    for devices, disk in pairs:
                        devices.remove(disk)
                    return bool(pairs)
                await _redefine_disks(ctx, dom, drop)
        await svc.io(path.unlink)
        await svc.guard.forget(path)
    await _push(ctx, "deleted", name=path.name, path=str(path))


@_cmd("rename", chat=("rename disk",),
      args=(Arg("name", required=False, help="disk file name (or its path)"),
            Arg("path", required=False, help="Archipel's client: the disk path"),
            Arg("newname", help="new file name")),
      help="rename a disk file of this VM (the definition follows)")
async def rename(ctx, name, path, newname):
    svc = service(ctx.agent)
    uuid = ctx.entity.uuid
    ref = name or path
    if not ref:
        raise InvalidArgument("name", "required (the disk to rename; Archipel's client sends 'path')")
    folder = await svc.real_folder(uuid)
    src = await svc.confined(folder, ref, argument="name" if name else "path")
    validate_name(newname, "newname")
    if Path(newname).suffix.lower() not in DISK_SUFFIXES and src.suffix:
        newname = validate_name(newname + src.suffix, "newname")
    target = await svc.confined(folder, newname, argument="newname")
    await require_writable(ctx.agent, "rename a disk")
    async with svc.lock(uuid):
        if not await svc.io(_is_file, src):
            raise NotFound(f"no disk '{src.name}' in this VM's folder")
        if target == src:
            raise InvalidArgument("newname", "is the current name")
        if await svc.io(_lexists, folder / newname):
            raise Conflict(f"a file named '{newname}' already exists in this VM's folder")
        svc.require_idle(src)
        fmt, info = await svc.checked_info(uuid, src)
        if not _suffix_fits(newname, fmt):
            raise InvalidArgument("newname", f"'{newname}' has the suffix of another format; '{src.name}' is {fmt}")
        if info.get("snapshots"):
            raise Conflict(f"'{src.name}' has internal snapshots, whose definitions name it: delete them first")
        dom = await _domain(ctx)
        await _refuse_if_running_uses(ctx, dom, src, "rename")
        users = await _backed_by(svc, folder, src)
        if users:
            raise Conflict(f"cannot rename '{src.name}': it is the backing file of {', '.join(users)}")
        await svc.io(os.rename, src, target)
        await svc.guard.move(src, target)

        def follow(root: ET.Element) -> bool:
            pairs = _disk_sources(root, src)
            for _devices, disk in pairs:
                disk.find("source").set("file", str(svc.folder(uuid) / target.name))
            return bool(pairs)
        try:
            await _redefine_disks(ctx, dom, follow)
        except ArchipelError:
            await svc.io(os.rename, target, src)
            await svc.guard.move(target, src)
            raise
    await _push(ctx, "renamed", name=target.name, path=str(target), oldname=src.name)
    return element("disk", {"name": target.name, "path": str(target)})


@_cmd("resize", chat=("resize disk", "grow disk"),
      args=(Arg("name", help="disk file name (or its path)"), Arg("size", help="new size, e.g. 20 or 20G"),
            Arg("unit", required=False, help="K, M, G or T")),
      help="grow a disk of this VM (shrinking is refused; a running VM is resized live)")
async def resize(ctx, name, size, unit):
    svc = service(ctx.agent)
    uuid = ctx.entity.uuid
    path = await svc.confined(await svc.real_folder(uuid), name)
    nbytes = parse_size(size, unit, maximum=svc.cfg.max_disk_bytes)
    await require_writable(ctx.agent, "resize a disk")
    async with svc.lock(uuid), quota_lock(ctx):  # quota check + change as one step
        if not await svc.io(_is_file, path):
            raise NotFound(f"no disk '{path.name}' in this VM's folder")
        svc.require_idle(path)
        fmt, info = await svc.checked_info(uuid, path)
        current = int(info.get("virtual-size") or 0)
        if nbytes < current:
            raise InvalidArgument("size", f"{human_size(nbytes)} is smaller than the current {human_size(current)}: "
                                          "shrinking a disk is refused (it would destroy data)")
        if nbytes == current:
            raise InvalidArgument("size", f"the disk is already {human_size(current)}")
        await check_quota(ctx, nbytes - current)
        dom = await _domain(ctx)
        live = False
        if dom is not None and await ctx.agent.libvirt.call(dom.isActive):
            disks = await _domain_disk_paths(ctx, dom, live=True)
            disk = disks.get(path)
            if disk is not None:
                source = disk.find("source")
                if await svc.io(realpath, source.get("file")) != path:
                    raise Conflict(f"'{path.name}' is a backing file of the running VM: it cannot be resized")
                target = disk.find("target")
                device = target.get("dev") if target is not None else str(path)
                await ctx.agent.libvirt.call(dom.blockResize, device, nbytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                live = True
        if not live:
            await svc.qemu_img("resize", "-q", "-f", fmt, str(path), str(nbytes))
        info = await svc.info(path, fmt)
    await _push(ctx, "resized", name=path.name, path=str(path), virtualSize=info.get("virtual-size"))
    return _disk_element(info, path)


@_cmd("convert", chat=("convert disk",),
      args=(Arg("name", required=False, help="disk file name (or its path)"),
            Arg("path", required=False, help="Archipel's client: the disk path"),
            Arg("format", choices=FORMATS, help="qcow2 or raw"),
            Arg("keep", parse=bool_yes, required=False, default=False, help="yes: keep the original file")),
      help="convert a disk to another format in the background (push 'converted' when done)")
async def convert(ctx, name, path, format, keep):
    svc = service(ctx.agent)
    uuid = ctx.entity.uuid
    ref = name or path
    if not ref:
        raise InvalidArgument("name", "required (the disk to convert)")
    folder = await svc.real_folder(uuid)
    src = await svc.confined(folder, ref, argument="name" if name else "path")
    target_name = validate_name(src.stem + SUFFIX[format], "name")
    target = await svc.confined(folder, target_name)
    await require_writable(ctx.agent, "convert a disk")
    async with svc.lock(uuid), quota_lock(ctx):  # quota check + change as one step
        if not await svc.io(_is_file, src):
            raise NotFound(f"no disk '{src.name}' in this VM's folder")
        svc.require_idle(src, target)
        src_fmt, info = await svc.checked_info(uuid, src)
        if src_fmt == format:
            raise InvalidArgument("format", f"'{src.name}' is already {format}")
        if await svc.io(_lexists, folder / target_name):
            raise Conflict(f"a file named '{target_name}' already exists in this VM's folder")
        if info.get("snapshots"):
            raise Conflict(f"'{src.name}' has internal snapshots that a conversion would lose: delete them first")
        dom = await _domain(ctx)
        await _refuse_if_running_uses(ctx, dom, src, "convert")
        if not keep:
            users = await _backed_by(svc, folder, src)
            if users:
                raise Conflict(f"cannot replace '{src.name}': it is the backing file of {', '.join(users)} (keep=yes)")
        await check_quota(ctx, int(info.get("virtual-size") or 0))
        svc.busy[src] = "convert"
        svc.busy[target] = "convert"
    ctx.agent.spawn(_convert_job(ctx, svc, src, target, format, keep, src_fmt),
                    name=f"disk-convert-{uuid}-{src.name}")
    return element("disk", {"name": target.name, "path": str(target), "format": format, "status": "converting",
                            "source": src.name})


@contextlib.asynccontextmanager
async def _background_job(ctx, svc: "DiskService", *, action: str, src: Path, target: Path, part: Path):
    """What every background disk job does around its work: on failure or
    cancellation remove the partial file, log and push ``failed``; always release
    the busy marks of its source and target."""
    try:
        yield
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await svc.io(_unlink_quiet, part)
        raise
    except Exception as exc:  # noqa: BLE001 - reported by push and log
        with contextlib.suppress(Exception):
            await svc.io(_unlink_quiet, part)
        message = exc.message if isinstance(exc, ArchipelError) else str(exc)
        log.warning("%s: %s of %s failed: %s", ctx.entity.jid, action, src.name, message)
        await _push(ctx, "failed", name=src.name, action=action, error=message)
    finally:
        svc.busy.pop(src, None)
        svc.busy.pop(target, None)


async def _convert_job(ctx, svc: DiskService, src: Path, target: Path, fmt: str, keep: bool, src_fmt: str) -> None:
    uuid = ctx.entity.uuid
    part = target.with_name(f".{target.name}.part")
    async with _background_job(ctx, svc, action="convert", src=src, target=target, part=part):
        async with svc.jobs:
            await svc.qemu_img("convert", "-p", "-f", src_fmt, "-O", fmt, str(src), str(part), timeout=None,
                               progress=_progress_pusher(ctx, "convert", src.name))
        async with svc.lock(uuid):
            await svc.io(os.rename, part, target)
            await svc.guard.record(target, fmt)
            dom = await _domain(ctx)

            def follow(root: ET.Element) -> bool:
                pairs = _disk_sources(root, src)
                for _devices, disk in pairs:
                    disk.find("source").set("file", str(svc.folder(uuid) / target.name))
                    driver = disk.find("driver")
                    if driver is None:
                        driver = ET.SubElement(disk, "driver", {"name": "qemu"})
                    driver.set("type", fmt)
                return bool(pairs)
            await _redefine_disks(ctx, dom, follow)
            if not keep:
                await svc.io(_unlink_quiet, src)
                await svc.guard.forget(src)
        await _push(ctx, "converted", name=target.name, path=str(target), format=fmt, source=src.name)


@_cmd("setgolden", chat=("set golden", "make golden"),
      args=(Arg("name", required=False, help="disk of this VM (file name or path)"),
            Arg("path", required=False, help="Archipel's client: the disk path"),
            Arg("golden", required=False, help="golden image name (Archipel's client sends it as 'name' with 'path')")),
      help="copy a disk of this (shut off) VM into the golden images folder, read-only (push 'goldened')")
async def setgolden(ctx, name, path, golden):
    svc = service(ctx.agent)
    uuid = ctx.entity.uuid
    if path and name and not golden:  # Archipel: setgolden(path, name)
        ref, golden = path, name
    else:
        ref = name or path
    if not ref:
        raise InvalidArgument("name", "required (the disk to copy)")
    if not golden:
        raise InvalidArgument("golden", "required (the golden image name)")
    src = await svc.confined(await svc.real_folder(uuid), ref, argument="path" if ref == path else "name")
    validate_name(golden, "golden")
    if Path(golden).suffix.lower() not in DISK_SUFFIXES:
        golden = validate_name(golden + (src.suffix if src.suffix.lower() in DISK_SUFFIXES else ".qcow2"), "golden")
    gfolder = Path(svc.cfg.golden_images_path)
    await require_writable(ctx.agent, "create a golden image")
    await svc.io(gfolder.mkdir, parents=True, exist_ok=True)
    target = await svc.confined(gfolder, golden, argument="golden", what="the golden images folder")
    async with svc.lock(uuid):
        if not await svc.io(_is_file, src):
            raise NotFound(f"no disk '{src.name}' in this VM's folder")
        if await svc.io(_lexists, gfolder / golden) or target in svc.busy:
            raise Conflict(f"a golden image named '{golden}' already exists")
        svc.require_idle(src)
        src_fmt, _info = await svc.checked_info(uuid, src)
        if not _suffix_fits(golden, src_fmt):
            raise InvalidArgument("golden", f"'{golden}' has the suffix of another format; '{src.name}' is {src_fmt}")
        dom = await _domain(ctx)
        if dom is not None and await ctx.agent.libvirt.call(dom.isActive) and src in await _domain_disk_paths(ctx, dom, live=True):
            raise Conflict(f"cannot copy '{src.name}' while the running VM writes to it: shut the VM down first")
        svc.busy[src] = "golden copy"
        svc.busy[target] = "golden copy"
    ctx.agent.spawn(_golden_job(ctx, svc, src, target, src_fmt), name=f"disk-golden-{uuid}-{golden}")
    return element("golden", {"name": target.name, "path": str(gfolder / target.name), "status": "copying",
                              "source": src.name})


async def _golden_job(ctx, svc: DiskService, src: Path, target: Path, src_fmt: str) -> None:
    part = target.with_name(f".{target.name}.part")
    out_fmt = "qcow2" if src_fmt == "qcow2" else "raw"
    async with _background_job(ctx, svc, action="setgolden", src=src, target=target, part=part):
        async with svc.jobs:
            # convert, not cp: an overlay is flattened, so a golden image never has a backing file
            await svc.qemu_img("convert", "-p", "-f", src_fmt, "-O", out_fmt, str(src), str(part), timeout=None,
                               progress=_progress_pusher(ctx, "setgolden", src.name))
        await svc.io(os.chmod, part, 0o444)
        if await svc.io(_lexists, target):
            raise Conflict(f"a golden image named '{target.name}' appeared meanwhile")
        await svc.io(os.rename, part, target)
        await svc.guard.record(target, out_fmt)
        await _push(ctx, "goldened", name=target.name, path=str(Path(svc.cfg.golden_images_path) / target.name),
                    source=src.name)
