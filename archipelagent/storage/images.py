"""The one check of disk images: formats pinned, chains confined, nothing probed.

A disk file's bytes are the guest's: a raw disk can hold a qcow2 header (or a
VMDK descriptor) naming any host file as its backing file or extent.  Whoever
reads such a file must therefore be told its format instead of guessing it.
The agent records each disk's format when it creates or imports the disk, in
``<folder>/.archipel-disks.json`` (0600, written atomically; in the VM folder on
the shared storage so it follows the disks to every hypervisor, and out of any
guest's reach: guests write only inside their images).  :class:`DiskGuard`:

* keeps those records (:meth:`DiskGuard.recorded`, :meth:`record`, :meth:`forget`, :meth:`move`);
* reads an image's chain with ``qemu-img info -f <recorded format> --backing-chain``
  (never without ``-f``) and refuses it unless every image, backing file and qcow2
  data file is a plain path inside the allowed folders and every backing file has
  an explicit format (:meth:`DiskGuard.checked_chain`);
* checks every file disk of a domain definition with both rules, at definition
  time (define, alloc, clone, manage) and before a start (:meth:`check_definition`).

Every file system call goes through the agent's storage pool (``fs.call``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import ArchipelError

log = logging.getLogger(__name__)

FORMATS = ("raw", "qcow2")
RECORD_FILE = ".archipel-disks.json"
QEMU_IMG_TIMEOUT = 60.0
DISK_DEVICES = ("disk", "cdrom", "floppy", "lun")
SECTION = "STORAGE"


class DiskToolError(ArchipelError):
    """qemu-img (or the filesystem) failed on a disk; the message says why."""

    code = -1050
    condition = "internal-server-error"


class ImageRefused(ArchipelError):
    """A disk image is not acceptable (format not pinned, chain leaving its folders)."""

    code = -46
    condition = "not-acceptable"

    def __init__(self, disk: str, reason: str):
        super().__init__(f"disk '{disk}' is refused: {reason}")
        self.disk = disk
        self.reason = reason


# ------------------------------------------------------------------ qemu-img
async def run_tool(argv: list[str], *, timeout: float | None = QEMU_IMG_TIMEOUT,
                   progress: Callable[[float], None] | None = None) -> str:
    """Run a tool as a subprocess; return stdout; DiskToolError with its stderr on failure.

    ``progress`` receives the percentages ``qemu-img -p`` prints.  Cancelled or
    timed out, the process is killed.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "LC_ALL": "C"})
    except OSError as exc:
        raise DiskToolError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None

    async def read_out() -> bytes:
        chunks = []
        pending = b""
        while True:
            data = await proc.stdout.read(4096)
            if not data:
                break
            chunks.append(data)
            if progress is not None:
                pending = (pending + data)[-256:]
                found = re.findall(rb"\((\d+(?:\.\d+)?)/100%\)", pending)
                if found:
                    progress(float(found[-1]))
                    pending = b""
        return b"".join(chunks)

    try:
        out, err, _ = await asyncio.wait_for(asyncio.gather(read_out(), proc.stderr.read(), proc.wait()), timeout)
    except BaseException as exc:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await asyncio.shield(proc.wait())
        if isinstance(exc, asyncio.TimeoutError):
            raise DiskToolError(f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''} took more than "
                                f"{timeout:.0f} s and was stopped") from None
        raise
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip().splitlines()
        message = text[-1] if text else f"exit status {proc.returncode}"
        message = re.sub(r"^qemu-img: ", "", message)
        raise DiskToolError(f"{Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''}: {message}".strip())
    return out.decode(errors="replace")


# -------------------------------------------------------------- pure checks
def realpath(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def within(path: str | os.PathLike, bases: Iterable[str | os.PathLike]) -> bool:
    """True when ``path`` resolves (symlinks, ``..``) strictly inside one of ``bases`` (blocking)."""
    real = realpath(path)
    for base in bases:
        b = realpath(base)
        if real != b and real.is_relative_to(b):
            return True
    return False


def _plain(name: str) -> bool:
    return os.path.isabs(name) and ":" not in name.split("/", 1)[0]


def chain_problems(chain: list[dict], allowed: Iterable[Path]) -> list[str]:
    """Why a ``qemu-img info --backing-chain`` result is unacceptable (empty: fine; blocking: realpath).

    Every image of the chain, every backing file and every qcow2 external data
    file must be a plain file path inside one of ``allowed`` (pseudo-protocols
    such as ``json:`` or ``nbd:`` are refused); every image must be raw or qcow2
    and every backing file must have its format written in the image (else
    QEMU would probe it).
    """
    allowed = tuple(allowed)
    problems = []
    for i, image in enumerate(chain):
        fmt = image.get("format")
        if fmt not in FORMATS:
            problems.append(f"'{str(image.get('filename'))[:200]}' is {fmt or 'of unknown format'} (only raw and qcow2)")
        names = [image.get("filename")]
        data_file = (((image.get("format-specific") or {}).get("data") or {}).get("data-file"))
        if data_file:
            names.append(data_file)
        backing = image.get("full-backing-filename") or image.get("backing-filename")
        if backing:
            names.append(backing)
            if image.get("backing-filename-format") not in FORMATS:
                problems.append(f"backing file '{backing[:200]}' has no explicit format (raw or qcow2) in "
                                f"'{str(image.get('filename'))[:200]}': it would be probed")
        for name in names:
            if not name:
                continue
            if not _plain(name):
                problems.append(f"'{name[:200]}' is not a plain file path")
            elif not within(name, allowed):
                problems.append(f"'{name[:200]}' is outside the VM folder and the golden images folder")
    return list(dict.fromkeys(problems))


# ------------------------------------------------------------ the records
def _read_records(folder: Path) -> dict[str, str]:
    try:
        with open(folder / RECORD_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DiskToolError(f"cannot read the disk formats recorded in {folder}: {exc}") from None
    disks = data.get("disks") if isinstance(data, dict) else None
    if not isinstance(disks, dict):
        raise DiskToolError(f"the disk formats recorded in {folder} are unreadable")
    return {k: v for k, v in disks.items() if isinstance(k, str) and v in FORMATS}


def _write_records(folder: Path, records: dict[str, str]) -> None:
    """Atomically: a 0600 temporary file, fsync, rename over the old one."""
    tmp = folder / f"{RECORD_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps({"version": 1, "disks": dict(sorted(records.items()))}, indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, folder / RECORD_FILE)


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def configured_folders(config) -> tuple[Path, Path, Path, str]:
    """(vm_base_path, ISO library, golden folder, qemu-img) as configured, with their defaults: the one
    reading of these [STORAGE] keys (the storage module validates what it returns)."""
    base = Path(config.vm.base_path)
    parser = getattr(config, "parser", None)

    def raw(key: str, default: str) -> str:
        value = None
        if parser is not None and parser.has_section(SECTION):
            try:
                value = parser.get(SECTION, key, fallback=None)
            except Exception:  # noqa: BLE001 - reported by the storage module's own reading
                value = None
        return (value or "").strip() or default

    iso = Path(os.path.normpath(raw("iso_library_path", str(base / ".." / "iso"))))
    golden = Path(os.path.normpath(raw("golden_images_path", str(base / ".." / "golden"))))
    return base, iso, golden, raw("qemu_img_path", "qemu-img")


# ------------------------------------------------------------------ the guard
class DiskGuard:
    """Records disk formats and checks images and definitions against them (see the module doc)."""

    def __init__(self, fs, *, vm_base_path: Path, iso_path: Path, golden_path: Path, qemu_img: str = "qemu-img"):
        self.fs = fs
        self.vm_base_path = Path(vm_base_path)
        self.iso_path = Path(iso_path)
        self.golden_path = Path(golden_path)
        self.qemu_img = qemu_img
        self._locks: dict[Path, asyncio.Lock] = {}

    @classmethod
    def from_config(cls, config, fs) -> "DiskGuard":
        base, iso, golden, qemu_img = configured_folders(config)
        return cls(fs, vm_base_path=base, iso_path=iso, golden_path=golden, qemu_img=qemu_img)

    # ---------------------------------------------------------- records
    def _lock(self, folder: Path) -> asyncio.Lock:
        return self._locks.setdefault(folder, asyncio.Lock())

    async def records(self, folder: Path) -> dict[str, str]:
        return await self.fs.call(_read_records, Path(folder), what="read the disk formats")

    async def recorded(self, path: Path) -> str | None:
        """The format recorded for the file ``path`` (a real path), or None."""
        return (await self.records(path.parent)).get(path.name)

    async def _change(self, folder: Path, change: Callable[[dict[str, str]], None]) -> None:
        folder = Path(folder)
        async with self._lock(folder):
            records = await self.records(folder)
            change(records)
            await self.fs.call(_write_records, folder, records, what="write the disk formats")

    async def record(self, path: Path, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ImageRefused(path.name, f"format '{fmt}' is not accepted (only raw and qcow2)")
        await self._change(path.parent, lambda r: r.__setitem__(path.name, fmt))

    async def forget(self, path: Path) -> None:
        await self._change(path.parent, lambda r: r.pop(path.name, None))

    async def move(self, old: Path, new: Path) -> None:
        def change(r: dict[str, str]) -> None:
            fmt = r.pop(old.name, None)
            if fmt:
                r[new.name] = fmt
        await self._change(old.parent, change)

    # ------------------------------------------------------------ chains
    async def chain(self, path: Path, fmt: str) -> list[dict]:
        """``qemu-img info --output=json -U --backing-chain -f <fmt>``: a list, top image first."""
        if fmt not in FORMATS:
            raise ImageRefused(path.name, f"format '{fmt}' is not accepted (only raw and qcow2)")
        out = await run_tool([self.qemu_img, "info", "--output=json", "-U", "--backing-chain", "-f", fmt, str(path)])
        try:
            data = json.loads(out)
        except ValueError:
            raise DiskToolError(f"qemu-img info gave unreadable output for '{path.name}'") from None
        return data if isinstance(data, list) else [data]

    async def checked_chain(self, path: Path, fmt: str, allowed: Iterable[Path]) -> list[dict]:
        """The chain of ``path`` read as ``fmt``; ImageRefused when it leaves ``allowed`` or probes a format;
        DiskToolError (fail closed) when qemu-img cannot read it."""
        try:
            chain = await self.chain(path, fmt)
        except DiskToolError as exc:
            raise DiskToolError(f"cannot read disk '{path.name}' and its backing chain: {exc.message}") from None
        problems = await self.fs.call(chain_problems, chain, tuple(allowed), what="check a backing chain")
        if problems:
            raise ImageRefused(path.name, f"its backing chain leaves the allowed folders or is probed "
                                          f"({'; '.join(problems)})")
        return chain

    async def checked_disk(self, path: Path, allowed: Iterable[Path]) -> tuple[str, list[dict]]:
        """(recorded format, chain) of an agent-managed disk; ImageRefused when it has no record."""
        fmt = await self.recorded(path)
        if fmt is None:
            raise ImageRefused(path.name, "it has no format recorded by the agent (only disks the agent created "
                                          "or imported are used; their format is never guessed)")
        return fmt, await self.checked_chain(path, fmt, allowed)

    # -------------------------------------------------------- definitions
    async def check_definition(self, uuid: str, root, *, at_start: bool = False, adopt: bool = False) -> None:
        """Every file disk of ``root`` (lxml or ElementTree) has an explicit raw/qcow2 type equal to the
        recorded one and a confined chain.  ``adopt`` (manage): record the definition's type for VM-folder
        disks without a record, after the same chain check.  ``at_start``: a disk file must exist.
        Raises :class:`~archipelagent.virt.policy.PolicyViolation` (-50) naming the disk."""
        from ..virt.policy import PolicyViolation

        folder = await self.fs.call(realpath, self.vm_base_path / uuid, what="resolve the VM folder")
        golden, iso = await self.fs.call(lambda: (realpath(self.golden_path), realpath(self.iso_path)),
                                         what="resolve the library folders")
        to_record: list[tuple[Path, str]] = []
        for devices in root.iter("devices"):
            for disk in devices.iter("disk"):
                where = _disk_label(disk)
                try:
                    found = await self._check_disk(disk, folder, golden, iso, at_start=at_start, adopt=adopt)
                except ImageRefused as exc:
                    raise PolicyViolation(where, exc.message) from None
                except DiskToolError as exc:
                    raise PolicyViolation(where, exc.message) from None
                if found:
                    to_record.append(found)
        for path, fmt in to_record:
            await self.record(path, fmt)

    async def _check_disk(self, disk, folder: Path, golden: Path, iso: Path, *, at_start: bool,
                          adopt: bool) -> tuple[Path, str] | None:
        if disk.get("type", "file") != "file" or disk.get("device", "disk") not in DISK_DEVICES:
            return None  # block/network/volume: the definition policy decides
        source = disk.find("source")
        name = source.get("file") if source is not None else None
        if not name:
            return None  # an empty cdrom
        for store in [*disk.iter("backingStore"), *disk.iter("dataStore")]:
            if len(store) or store.attrib:
                raise ImageRefused(name, f"<{store.tag}> is not accepted: the agent reads the chain from the "
                                         "image itself and checks it")
        driver = disk.find("driver")
        fmt = driver.get("type") if driver is not None else None
        if fmt not in FORMATS:
            raise ImageRefused(name, "its format must be given explicitly as <driver type='raw'/> or "
                                     f"<driver type='qcow2'/> (found {fmt or 'none'}): a format is never probed")
        device = disk.get("device", "disk")
        readonly = device == "cdrom" or disk.find("readonly") is not None
        if device == "cdrom" and fmt != "raw":
            raise ImageRefused(name, "a cdrom is attached as raw, read-only (a qcow2 is not an ISO)")
        real = await self.fs.call(realpath, name, what="resolve a disk path")
        if real.parent == iso:
            if fmt != "raw" or not readonly:
                raise ImageRefused(name, "an image of the ISO library is attached as raw and read-only")
            await self.checked_chain(real, "raw", (iso,))
            return None
        if real.parent == golden:
            allowed: tuple[Path, ...] = (golden,)
        elif real.parent == folder:
            allowed = (folder, golden)
        else:
            raise ImageRefused(name, "it is outside this VM's folder and the libraries")
        recorded = await self.recorded(real)
        if recorded is None:
            exists = await self.fs.call(_lexists, real, what="look for a disk")
            if not exists and not at_start:
                return None  # not created yet: checked again at start
            if not exists:
                raise ImageRefused(name, "the file does not exist")
            if not adopt or real.parent != folder:
                raise ImageRefused(name, "it has no format recorded by the agent (create or import disks with "
                                         "archipel:vm:disk; a format is never guessed)")
            await self.checked_chain(real, fmt, allowed)
            return (real, fmt)
        if recorded != fmt:
            raise ImageRefused(name, f"the definition says {fmt} but the agent recorded {recorded} for this file")
        await self.checked_chain(real, recorded, allowed)
        return None


def _disk_label(disk: Any) -> str:
    target = disk.find("target")
    dev = target.get("dev") if target is not None else None
    return f"/domain/devices/disk[@target='{dev}']" if dev else "/domain/devices/disk"
