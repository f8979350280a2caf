"""A tiny Linux test guest built from Debian packages (docs/RIG.md, rig reference §10).

Tests that need a process inside a VM (a writer during a live migration, DHCP
on a class network, text typed on the console) boot Debian's kernel with a
busybox initramfs whose ``/init`` is the test's own shell script.  Nothing is
installed on the host: ``apt-get download`` + ``dpkg-deb -x`` into a shared
cache (``/var/lib/archipel-rig/guest-cache``, built once per machine, under a
lock so parallel test sessions share it), then each test packs its initrd.

Boot it with direct kernel boot and **TCG** (``<domain type='qemu'>``): under
this machine's KVM the Linux kernel does not boot (rig reference §10)::

    kernel, initrd = tiny_linux(vm_folder, "echo GUEST-BOOTED > /dev/ttyS0")
    os_xml = os_element(kernel, initrd)          # <os>…<kernel/><initrd/><cmdline/></os>

The script runs as PID 1 after a prologue that mounts proc/sys/devtmpfs and
loads the virtio modules (disks are ``/dev/vda``…, NICs ``eth0``…); busybox
applets are on ``PATH``.  When the script ends the guest keeps a shell on its
console (``console=tty0`` puts it on the VGA screen a VNC client sees,
``console=ttyS0`` on the serial line).
"""
from __future__ import annotations

import fcntl
import gzip
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

from .ejabberd import SYSTEM_ROOT
from .util import RigError

CACHE = SYSTEM_ROOT / "guest-cache"
# what the prologue loads: the PCI transport, disks, NICs, the virtio serial console
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console")
APPLET_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")

PROLOGUE = """#!/bin/sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
"""
EPILOGUE = """
while true; do setsid cttyhack /bin/sh; done
"""


def kernel_package() -> str:
    """The versioned kernel package ``linux-image-amd64`` depends on now."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-") and line[len("Depends: linux-image-"):][:1].isdigit():
            return line.split(":", 1)[1].strip()
    raise RigError("apt-cache names no kernel for linux-image-amd64 (run apt-get update?)")


def cached_parts(cache: Path = CACHE) -> Path:
    """The extracted kernel, busybox and modules; downloaded once per machine."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        package = kernel_package()
        done = cache / package
        if (done / ".complete").exists():
            return done
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        try:
            _run(["apt-get", "download", "busybox-static", package], cwd=work)
            tree = work / "tree"
            for deb in sorted(work.glob("*.deb")):
                _run(["dpkg-deb", "-x", str(deb), str(tree)])
            _keep_what_the_guest_needs(tree, work / "parts")
            shutil.rmtree(done, ignore_errors=True)
            (work / "parts").rename(done)
            (done / ".complete").write_text(package + "\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return done


def _keep_what_the_guest_needs(tree: Path, parts: Path) -> None:
    parts.mkdir()
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise RigError("the kernel package has no /boot/vmlinuz-*")
    shutil.copy2(vmlinuz[-1], parts / "vmlinuz")
    shutil.copy2(tree / "bin" / "busybox", parts / "busybox")
    moddir = next((tree / "lib" / "modules").iterdir())
    order = module_load_order(_read_module_depends(moddir), MODULES)
    for rel in order:
        dest = parts / "modules" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, dest)
    (parts / "modules.order").write_text("".join(f"{rel}\n" for rel in order))


def _module_name(rel: str) -> str:
    return Path(rel).name.split(".ko")[0].replace("-", "_")


def _read_module_depends(moddir: Path) -> dict[str, list[str]]:
    """Each module file's dependencies, by file, from its ``.modinfo`` ``depends=``.

    The package ships no ``modules.dep`` (``depmod`` writes it at install time,
    and this host may have no kmod), so the ELF's modinfo strings are read.
    """
    files = {str(p.relative_to(moddir)): p for p in moddir.rglob("*.ko")}
    by_name = {_module_name(rel): rel for rel in files}
    deps: dict[str, list[str]] = {}
    for rel, path in files.items():
        found = re.search(rb"\0depends=([^\0]*)\0", path.read_bytes())
        names = found.group(1).decode().split(",") if found and found.group(1) else []
        deps[rel] = [by_name[n.replace("-", "_")] for n in names if n.replace("-", "_") in by_name]
    return deps


def module_load_order(deps: dict[str, list[str]], wanted: tuple[str, ...]) -> list[str]:
    """Module files to insmod, dependencies first."""
    by_name = {_module_name(rel): rel for rel in deps}
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel in order:
            return
        for dep in deps.get(rel, []):
            visit(dep)
        order.append(rel)

    for name in wanted:
        if name not in by_name:
            raise RigError(f"module {name} is not in this kernel's modules.dep")
        visit(by_name[name])
    return order


def tiny_linux(dest_dir: Path | str, init_script: str, *, initrd_name: str = "initrd.gz",
               kernel_name: str = "vmlinuz") -> tuple[Path, Path]:
    """Write the kernel and an initrd running ``init_script`` into ``dest_dir``.

    ``dest_dir`` is the VM's folder or a library folder (the definition policy
    only lets QEMU read kernels from there).  Returns (kernel, initrd).
    """
    parts = cached_parts()
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    kernel = dest / kernel_name
    shutil.copyfile(parts / "vmlinuz", kernel)
    initrd = dest / initrd_name
    initrd.write_bytes(pack_initrd(parts, init_script))
    return kernel, initrd


def pack_initrd(parts: Path, init_script: str) -> bytes:
    """A gzipped newc cpio: busybox, the modules, and /init = prologue + script."""
    with tempfile.TemporaryDirectory(prefix="archipel-guest-") as tmp:
        root = Path(tmp)
        for d in (*APPLET_DIRS, "proc", "sys", "dev", "etc", "tmp", "mnt", "lib/modules"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(parts / "busybox", root / "bin" / "busybox")
        (root / "bin" / "sh").symlink_to("busybox")
        shutil.copytree(parts / "modules", root / "lib" / "modules", dirs_exist_ok=True)
        shutil.copy2(parts / "modules.order", root / "etc" / "modules.order")
        init = root / "init"
        init.write_text(PROLOGUE + init_script.rstrip("\n") + "\n" + EPILOGUE)
        init.chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        archive = _run([str(root / "bin" / "busybox"), "cpio", "-o", "-H", "newc"], cwd=root,
                       input="\n".join([".", *names]) + "\n", text=False).stdout
    return gzip.compress(archive, compresslevel=6)


def os_element(kernel: Path | str, initrd: Path | str, cmdline: str = "console=ttyS0") -> str:
    """The ``<os>`` of a direct kernel boot (the domain must be ``type='qemu'``)."""
    return ("<os><type arch='x86_64' machine='pc'>hvm</type>"
            f"<kernel>{escape(str(kernel))}</kernel><initrd>{escape(str(initrd))}</initrd>"
            f"<cmdline>{escape(cmdline)}</cmdline></os>")


def _run(argv: list[str], *, cwd: Path | None = None, input: str | None = None,
         text: bool = True) -> subprocess.CompletedProcess:
    data = input.encode() if (input is not None and not text) else input
    try:
        return subprocess.run(argv, cwd=cwd, input=data, capture_output=True, check=True, text=text,
                              env={**os.environ, "LC_ALL": "C"}, timeout=600)
    except FileNotFoundError as exc:
        raise RigError(f"{argv[0]} is missing: {exc}") from None
    except subprocess.CalledProcessError as exc:
        err = exc.stderr if isinstance(exc.stderr, str) else (exc.stderr or b"").decode(errors="replace")
        raise RigError(f"{' '.join(argv[:3])} failed ({exc.returncode}): {err.strip()[-500:]}") from None
