"""A privileged libvirtd isolated from the host's libvirt directories.

``unshare --mount --propagation private`` gives libvirtd (and the QEMU
processes it starts) a private mount namespace where ``<dir>/{run,lib,etc,
log,cache}`` are bind-mounted over ``/run/libvirt``, ``/var/lib/libvirt``,
``/etc/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt``.  The host's
/etc/libvirt is never written.  The host reaches the daemon through
``qemu+unix:///system?socket=<dir>/run/libvirt-sock``.

A process is ours when ``/proc/PID/root/run/libvirt`` is our ``run`` dir
(same device and inode): that identifies our libvirtd and its QEMUs even
after a ``kill -9`` lost the pidfile.  ``cache/`` is kept across runs so
the QEMU capability probe (~7 s) is paid once.
"""
from __future__ import annotations

import os
import shlex
import shutil
import time
import uuid
from pathlib import Path

from .util import (RigError, all_pids, exe_name, is_alive, log, read_cmdline, read_pidfile, run,
                   sock_path_ok, spawn_daemon, tail, terminate, wait_until, write_text)

BINDS = {"run": "/run/libvirt", "lib": "/var/lib/libvirt", "etc": "/etc/libvirt",
         "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


class Libvirtd:
    name = "libvirtd"

    def __init__(self, directory: Path, host_uuid: str | None = None, listen_addr: str | None = None,
                 display_ports: tuple[int, int] = (5900, 6099),
                 extra_binds: tuple[tuple[Path, Path], ...] = (), lockspace: Path | None = None):
        """``listen_addr``: also listen on qemu+tcp://<listen_addr>/system (auth none) and use it
        as migration address -- only for a daemon in a network namespace a test created.
        ``display_ports``: the VNC/SPICE autoport range; each rig profile gets its own so
        guests of several rigs on one machine never fight for 127.0.0.1:59xx.
        ``lockspace``: run a virtlockd next to libvirtd (same namespaces) and make the QEMU
        driver lock every disk through it (``lock_manager = "lockd"``), its lock files in
        this folder (a path in the namespace: the shared storage), so no two QEMUs of two
        hypervisors ever open one disk."""
        self.lockspace = Path(lockspace) if lockspace else None
        self.virtlockd_pidfile = Path(directory) / "virtlockd.pid"
        self.display_ports = display_ports
        self.extra_binds = tuple((Path(a), Path(b)) for a, b in extra_binds)  # (source, target) in the namespace
        self.dir = Path(directory)
        self.listen_addr = listen_addr
        self.pidfile = self.dir / "libvirtd.pid"
        self.socket = self.dir / "run" / "libvirt-sock"
        self.log_file = self.dir / "log" / "libvirtd.log"
        self.out_file = self.dir / "libvirtd.out"
        self.host_uuid = host_uuid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"archipel-rig:{self.dir}"))

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket}"

    # ------------------------------------------------------------- processes
    def _ours(self, pid: int) -> bool:
        """pid lives in one of our mount namespaces (its /run/libvirt is our run dir)."""
        try:
            a = os.stat(f"/proc/{pid}/root{BINDS['run']}")
            b = os.stat(self.dir / "run")
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def pids(self) -> list[int]:
        pids = set()
        pid = read_pidfile(self.pidfile)
        if pid and is_alive(pid) and exe_name(pid) == "libvirtd" and (
                self._ours(pid) or any(str(self.pidfile) in a for a in read_cmdline(pid))):
            pids.add(pid)
        for p in all_pids():
            if exe_name(p) == "libvirtd" and is_alive(p) and any(str(self.pidfile) in a for a in read_cmdline(p)):
                pids.add(p)
        return sorted(pids)

    def qemu_pids(self) -> list[int]:
        """QEMU processes started by one of our libvirtd instances."""
        return sorted(p for p in all_pids()
                      if exe_name(p).startswith("qemu-system") and is_alive(p) and self._ours(p))

    def virtlockd_pids(self) -> list[int]:
        """Our virtlockd (it holds the disk locks of our QEMUs: alive, they stay locked)."""
        return sorted(p for p in all_pids() if exe_name(p) == "virtlockd" and is_alive(p) and self._ours(p))

    def running(self) -> bool:
        return bool(self.pids())

    def virsh(self, *args: str, check: bool = True, timeout: float = 60):
        return run(["virsh", "-q", "-c", self.uri, *args], check=check, timeout=timeout)

    def destroy_all(self) -> None:
        """Destroy every running domain through libvirt (in parallel)."""
        if not (self.running() and self.socket.exists()):
            return
        cp = self.virsh("list", "--name", check=False, timeout=20)
        names = [n.strip() for n in cp.stdout.splitlines() if n.strip()]
        if not names:
            return
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(names))) as ex:
            list(ex.map(lambda n: self.virsh("destroy", n, check=False, timeout=30), names))
        log.info("libvirtd: destroyed %d domain(s): %s", len(names), ", ".join(names))

    def stop(self, destroy_domains: bool = True) -> None:
        """Stop libvirtd.  With ``destroy_domains`` every domain is destroyed
        first and any QEMU left in our namespaces is killed; without it the
        QEMUs keep running (a new libvirtd re-attaches to them)."""
        if destroy_domains:
            try:
                self.destroy_all()
            except RigError as e:
                log.warning("libvirtd: destroying domains failed: %s", e)
        pids = self.pids()
        if pids:
            terminate(pids, "libvirtd", timeout=15)
        if destroy_domains:
            q = self.qemu_pids()
            if q:
                log.warning("libvirtd: killing stray QEMU %s", q)
                terminate(q, "qemu", timeout=5)
            locker = self.virtlockd_pids()
            if locker:
                terminate(locker, "virtlockd", timeout=5)
        self.pidfile.unlink(missing_ok=True)

    # ---------------------------------------------------------------- config
    def write_config(self) -> None:
        for sub in BINDS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        tcp = (f'listen_tcp = 1\nlisten_addr = "{self.listen_addr}"\nauth_tcp = "none"\n'
               if self.listen_addr else "listen_tcp = 0\n")
        migration = (f'migration_address = "{self.listen_addr}"\nmigration_host = "{self.listen_addr}"\n'
                     if self.listen_addr else "")
        write_text(etc / "libvirtd.conf", f"""\
# Generated by the Archipel rig: privileged libvirtd started by hand (no systemd),
# in a private mount namespace.
listen_tls = 0
{tcp}unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_level = 3
log_outputs = "3:file:{BINDS['log']}/libvirtd.log"
host_uuid = "{self.host_uuid}"
""")
        write_text(etc / "qemu.conf", """\
# Generated by the Archipel rig (seen by libvirtd as /etc/libvirt/qemu.conf).
# no libvirt-qemu user without libvirt-daemon-system -> run QEMU as root
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
# no systemd-machined / dbus here: keep libvirt away from cgroups and mount namespaces
cgroup_controllers = [ ]
namespaces = [ ]
# no virtlogd needed
stdio_handler = "file"
# this rig's own display port range (see Libvirtd.__init__)
remote_display_port_min = {self.display_ports[0]}
remote_display_port_max = {self.display_ports[1]}
""".format(self=self) + migration + ('lock_manager = "lockd"\n' if self.lockspace else ""))
        if self.lockspace:
            write_text(etc / "qemu-lockd.conf", f"""\
# Generated by the Archipel rig: every disk locked by virtlockd, lock files on the shared storage.
auto_disk_leases = 1
require_lease_for_disks = 1
file_lockspace_dir = "{self.lockspace}"
""")
            log_dir = BINDS["log"]
            write_text(etc / "virtlockd.conf", f'log_level = 3\nlog_outputs = "3:file:{log_dir}/virtlockd.log"\n')
        for f in ("libvirt.conf", "libvirt-admin.conf"):
            src = Path("/etc/libvirt") / f
            if src.is_file() and not (etc / f).exists():
                shutil.copy(src, etc / f)
        # libvirt's own filters (clean-traffic...: libvirt-daemon-config-nwfilter); the policy
        # puts clean-traffic on every NIC of a non-admin's VM (archipelagent/virt/policy.py).
        (etc / "nwfilter").mkdir(exist_ok=True)
        for src in sorted(Path("/etc/libvirt/nwfilter").glob("*.xml")):
            if not (etc / "nwfilter" / src.name).exists():
                shutil.copy(src, etc / "nwfilter" / src.name)

    def wipe_definitions(self) -> None:
        """Forget persistent domains/networks/pools and runtime state (keeps cache)."""
        for sub in ("etc/qemu", "etc/storage", "etc/nwfilter", "etc/secrets", "lib", "run", "log"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)

    # ----------------------------------------------------------------- start
    def start(self, fresh: bool = False, *, netns: str | None = None) -> float:
        t0 = time.monotonic()
        self.stop(destroy_domains=fresh)
        if fresh:
            self.wipe_definitions()
        sock_path_ok(self.socket, "libvirtd")
        self.write_config()
        for target in BINDS.values():  # mount points on the host (empty dirs)
            os.makedirs(target, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        mounts = "; ".join(f"mount --bind {shlex.quote(str(self.dir / sub))} {target}"
                           for sub, target in BINDS.items())
        for src, target in self.extra_binds:  # e.g. the shared storage of several hypervisors
            mounts += f"; mkdir -p {shlex.quote(str(target))}; mount --bind {shlex.quote(str(src))} {shlex.quote(str(target))}"
        if self.lockspace:  # started first: libvirtd's QEMU driver connects to its socket
            mounts += (f"; mkdir -p {shlex.quote(str(self.lockspace))}; virtlockd -d -f /etc/libvirt/virtlockd.conf "
                       f"-p {shlex.quote(str(self.virtlockd_pidfile))} || true")  # kept across a restart
        listen = "--listen " if self.listen_addr else ""
        script = (f"set -e; {mounts}; exec libvirtd {listen}-d -f /etc/libvirt/libvirtd.conf "
                  f"-p {shlex.quote(str(self.pidfile))}")
        cmd = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        rc = spawn_daemon(cmd, self.out_file)
        if rc != 0:
            raise RigError(f"libvirtd start failed (rc={rc}):\n{tail(self.out_file)}\n{tail(self.log_file)}")

        def died():
            if not self.running():
                return f"libvirtd died at start:\n{tail(self.out_file)}\n{tail(self.log_file)}"
            return None

        wait_until(self.answers, 120, "libvirtd", interval=0.1, alive=died)
        dt = time.monotonic() - t0
        log.info("libvirtd: ready on %s in %.2fs (pid %s)", self.uri, dt, read_pidfile(self.pidfile))
        return dt

    def answers(self) -> bool:
        if not self.socket.exists():
            return False
        return self.virsh("version", check=False, timeout=30).returncode == 0
