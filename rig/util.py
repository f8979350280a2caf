"""Process, port and file helpers of the rig (stdlib only).

Every process the rig signals is first checked to be ours: its
``/proc/PID/cmdline`` must name the expected binary *and* contain a path of
our state directory (or, for QEMU, its mount namespace must be one of our
libvirtd namespaces).  PID 1 on the reference machine does not reap orphans,
so a zombie counts as exited.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

log = logging.getLogger("rig")


class RigError(RuntimeError):
    """A rig component could not be started / stopped; the message says why."""


# ----------------------------------------------------------------- processes
def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def exe_name(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        args = read_cmdline(pid)
        return os.path.basename(args[0]) if args else ""


def is_alive(pid: int) -> bool:
    """True when PID exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # state is the field right after "(comm)"; comm may contain spaces/parens
    state = stat[stat.rfind(")") + 2:][:1]
    return state not in ("Z", "X", "")


def describe_pid(pid: int) -> str:
    args = read_cmdline(pid)
    cmd = " ".join(args)
    if len(cmd) > 160:
        cmd = cmd[:157] + "..."
    return f"PID {pid} ({exe_name(pid) or '?'}: {cmd or '?'})"


def read_pidfile(path: Path) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def all_pids() -> Iterable[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def pids_matching(exe_names: Sequence[str], marker: str) -> list[int]:
    """Live processes whose executable is one of ``exe_names`` and whose command
    line contains ``marker`` (a path inside our state dir)."""
    found = []
    me = os.getpid()
    for pid in all_pids():
        if pid == me or not is_alive(pid):
            continue
        if exe_name(pid) not in exe_names:
            continue
        if any(marker in a for a in read_cmdline(pid)):
            found.append(pid)
    return found


def wait_exit(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every PID is gone (or a zombie); return those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            try:  # reap our own children, harmless for the others
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            except OSError:
                pass
        left = [p for p in pids if is_alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def terminate(pids: Iterable[int], what: str, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL what is left."""
    pids = [p for p in pids if is_alive(p)]
    if not pids:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    left = wait_exit(pids, timeout)
    if left:
        log.warning("%s: %s did not exit after SIGTERM in %.0fs, sending SIGKILL",
                    what, ", ".join(map(str, left)), timeout)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        left = wait_exit(left, 5.0)
        if left:
            raise RigError(f"{what}: {', '.join(describe_pid(p) for p in left)} survived SIGKILL")


# --------------------------------------------------------------------- ports
def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "0A":  # 0A = LISTEN
                continue
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def port_owners(port: int) -> list[int]:
    """PIDs holding a listening TCP socket on ``port`` (any address)."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    owners = []
    if not inodes:
        return owners
    for pid in all_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    owners.append(pid)
                    break
            except OSError:
                continue
    return owners


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    finally:
        s.close()


def ensure_ports_free(ports: dict[str, int], owner_check: Callable[[int], bool] | None = None,
                      host: str = "127.0.0.1") -> None:
    """Raise RigError naming port and holder when one of ``ports`` is taken."""
    problems = []
    for label, port in ports.items():
        if port_is_free(port, host):
            continue
        owners = port_owners(port)
        who = ", ".join(describe_pid(p) for p in owners) or "an unknown process (not visible in /proc)"
        problems.append(f"port {port} ({label}) on {host} is already in use by {who}")
    if problems:
        raise RigError("; ".join(problems) + " -- stop it or use another rig profile")


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_addresses(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket held by ``pids``."""
    by_inode: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "0A":
                continue
            hexaddr, hexport = f[1].rsplit(":", 1)
            by_inode[f[9]] = (_decode_addr(hexaddr), int(hexport, 16))
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                ino = link[8:-1]
                if ino in by_inode:
                    out.append((pid, *by_inode[ino]))
    return out


def _decode_addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc/net/tcp6: four little-endian 32-bit words
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


# ------------------------------------------------------------------ commands
def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 60.0,
        env: dict[str, str] | None = None, input: str | None = None,
        cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run a short command, capturing output (text)."""
    try:
        cp = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                            env=env, input=input, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise RigError(f"command timed out after {timeout}s: {' '.join(map(str, cmd))}") from e
    if check and cp.returncode != 0:
        raise RigError(f"command failed (rc={cp.returncode}): {' '.join(map(str, cmd))}\n"
                       f"{(cp.stdout or '').strip()}\n{(cp.stderr or '').strip()}".rstrip())
    return cp


def spawn_daemon(cmd: Sequence[str], log_path: Path, *, timeout: float = 60.0,
                 env: dict[str, str] | None = None, cwd: Path | str | None = None) -> int:
    """Run a command that daemonizes itself (returns when the parent exits).

    Output goes to ``log_path`` (never a pipe: a daemon inheriting the pipe
    would keep ``communicate()`` waiting forever).  Returns the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        p = subprocess.Popen(list(map(str, cmd)), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, env=env, cwd=cwd,
                             start_new_session=True)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            p.kill()
            p.wait()
            raise RigError(f"command did not return in {timeout}s: {' '.join(map(str, cmd))}") from e


def wait_until(pred: Callable[[], bool], timeout: float, what: str, *,
               interval: float = 0.05, alive: Callable[[], str | None] | None = None) -> float:
    """Poll ``pred`` until true; ``alive`` may return an error string to abort
    early (e.g. the daemon died).  Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if alive is not None:
            err = alive()
            if err:
                raise RigError(f"{what}: {err}")
        if time.monotonic() - t0 > timeout:
            raise RigError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(interval)


def tail(path: Path, lines: int = 25) -> str:
    try:
        data = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return "\n".join(data[-lines:])


def write_text(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        os.chmod(path, mode)
    return path


def fill_template(text: str, values: dict[str, object], source: str = "template") -> str:
    """Replace ``@NAME@`` placeholders; fail on unknown leftovers."""
    for k, v in values.items():
        text = text.replace(f"@{k}@", str(v))
    import re
    left = sorted(set(re.findall(r"@([A-Z][A-Z0-9_]+)@", text)))
    if left:
        raise RigError(f"{source}: unfilled placeholders {', '.join(left)}")
    return text


def check_traversable(path: Path, user: str) -> None:
    """Fail clearly when a system user cannot reach ``path`` (every ancestor
    needs o+x): ejabberd runs as user ``ejabberd`` under our state dir."""
    p = Path(path).resolve()
    for parent in [*reversed(p.parents)]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            continue
        if not mode & 0o001:
            raise RigError(f"{parent} is not traversable by others (mode {oct(mode & 0o777)}); "
                           f"user {user!r} must reach {p}: choose a state dir under a world-x path")


def sock_path_ok(path: Path, what: str) -> None:
    if len(str(path).encode()) > 107:
        raise RigError(f"{what}: unix socket path too long ({len(str(path))} > 107 bytes): {path}; "
                       "use a shorter state dir")
