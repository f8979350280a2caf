"""The host process of a running QEMU domain, found through libvirt's own pid file.

libvirt has no API that gives a domain's process id, but it writes one file per
running domain, ``<run dir>/qemu/<name>.pid`` (root-only folder).  The run dir is
the one of the *libvirtd that serves us*, which may live in another mount
namespace (the test rig's libvirtds do), so it is read through that daemon's own
root: ``/proc/<daemon pid>/root/run/libvirt/qemu/<name>.pid``, the daemon's pid
being the peer of a connection to the socket of ``libvirt_uri`` (``SO_PEERCRED``).
A pid read there is accepted only if ``/proc/<pid>/cmdline`` says ``-uuid <uuid>``
(a stale file after a crash, or a recycled pid, is never written to).

Every function here blocks (sockets, /proc): callers run them in a worker thread.
Only local ``qemu:///system`` and ``qemu+unix://…/system`` URIs have a process on
this host; anything else raises :class:`NoProcess`.
"""
from __future__ import annotations

import os
import socket
import struct
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

DEFAULT_SOCKETS = ("/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock")
RUN_DIR = "run/libvirt/qemu"  # relative to the daemon's root
SCORE_ADJ_MIN, SCORE_ADJ_MAX = -1000, 1000


class NoProcess(Exception):
    """The domain has no QEMU process on this host that we can trust (not running, remote libvirt…)."""


class NotAllowed(Exception):
    """The kernel refused the write: lowering a process's ``oom_score_adj`` needs CAP_SYS_RESOURCE."""


def daemon_sockets(uri: str) -> tuple[str, ...]:
    """The unix sockets of the libvirt daemon ``uri`` names (local QEMU URIs only)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("qemu", "qemu+unix") or parts.netloc or parts.path != "/system":
        raise NoProcess(f"libvirt URI {uri} does not run QEMU on this host")
    chosen = parse_qs(parts.query).get("socket")
    return (chosen[0],) if chosen else DEFAULT_SOCKETS


def daemon_pid(uri: str) -> int:
    """The pid of the daemon listening on ``uri``'s socket (kernel-reported, not a pid file)."""
    for path in daemon_sockets(uri):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            try:
                sock.connect(path)
            except OSError:
                continue
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, _uid, _gid = struct.unpack("3i", creds)
            return pid
    raise NoProcess(f"no libvirt daemon answers on {', '.join(daemon_sockets(uri))}")


def qemu_pid(uri: str, name: str, uuid: str) -> int:
    """The running QEMU of domain ``name``/``uuid``, checked against its command line."""
    if not name or "/" in name or name.startswith("."):
        raise NoProcess(f"unexpected domain name {name!r}")
    pidfile = Path(f"/proc/{daemon_pid(uri)}/root") / RUN_DIR / f"{name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        raise NoProcess(f"domain {name} has no QEMU pid file (not running?)") from None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        raise NoProcess(f"the QEMU of domain {name} (pid {pid}) is gone") from None
    wanted = uuid.lower().encode()
    if not any(a == b"-uuid" and b.lower() == wanted for a, b in zip(argv, argv[1:])):
        raise NoProcess(f"pid {pid} of {pidfile} is not the QEMU of {uuid}")
    return pid


def read_oom(pid: int) -> tuple[int, int]:
    """(oom_score_adj, oom_score) of a process."""
    try:
        adj = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
        score = int(Path(f"/proc/{pid}/oom_score").read_text())
    except (OSError, ValueError):
        raise NoProcess(f"process {pid} is gone") from None
    return adj, score


def write_oom_score_adj(pid: int, value: int) -> None:
    if not SCORE_ADJ_MIN <= value <= SCORE_ADJ_MAX:
        raise ValueError(f"oom_score_adj out of range: {value}")
    try:
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NoProcess(f"process {pid} is gone") from None
    try:
        os.write(fd, str(value).encode())
    except PermissionError:
        raise NotAllowed(f"the kernel refused oom_score_adj {value} for process {pid}: lowering it needs "
                         "CAP_SYS_RESOURCE, which the agent does not hold (a container?)") from None
    finally:
        os.close(fd)
