"""Extra hypervisors on one machine: each a libvirtd in its own network and
mount namespace, for multi-hypervisor tests (live migration) -- the recipe of
test-rig.md §5, generalised to N.

Network: one "switch" namespace ``arch-<profile>-sw`` holds a bridge; each
hypervisor namespace ``arch-<profile>-hv<i>`` is joined to it by a veth pair
(``mig0`` inside, ``h<i>`` on the bridge) and gets ``10.213.<p>.<i>/24`` on
``mig0``.  Every address is inside a namespace the rig created; the host's
network is not touched.  Each libvirtd listens on ``qemu+tcp://<addr>/system``
(auth none: only other rig namespaces can reach it) and uses that address
for migration, so p2p migration runs over the veths.

Mounts: each libvirtd runs in a private mount namespace (``rig.libvirtd``)
where, besides libvirt's own directories, ``<hv>/shared-backing`` is
bind-mounted at ``<hv>/shared``: the "shared storage", at the same path in
every hypervisor.  The host sees an empty ``shared`` folder there; an agent
for hypervisor i runs in the host's network namespace (ejabberd and slapd on
127.0.0.1) but inside hypervisor i's mount namespace
(:meth:`Hypervisor.nsenter`), where it sees the shared storage and reaches
its libvirtd by the unix socket.

Locks: each hypervisor runs a virtlockd next to its libvirtd (``lock_manager = "lockd"``) with
its lock files in ``<shared>/.lockspace``: a disk opened by one hypervisor's QEMU cannot be
opened by another's (the network-partition case of HA restart, hypervisor/ha.py).

Stop is by PID (libvirtd, then its QEMUs, then virtlockd), then the namespaces are deleted.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .libvirtd import Libvirtd
from .util import RigError, log, read_pidfile, run

SUBNET = "10.213"


class Hypervisor:
    """One namespaced libvirtd (``index`` from 1)."""

    def __init__(self, group: "Hypervisors", index: int):
        self.group = group
        self.index = index
        self.name = f"hv-{index}"  # also its agent's JID node (ejabberd's archipel_entities ACL)
        self.netns = f"{group.prefix}-hv{index}"
        self.address = f"{SUBNET}.{group.subnet}.{index}"
        self.dir = group.dir / self.name
        self.libvirtd = Libvirtd(self.dir / "libvirt", listen_addr=self.address,
                                 extra_binds=((group.shared_backing, group.shared_path),),
                                 lockspace=group.shared_path / ".lockspace")

    @property
    def libvirt_uri(self) -> str:
        """For the host and the agent: the unix socket (a host path, seen in the namespace too)."""
        return self.libvirtd.uri

    @property
    def migration_uri(self) -> str:
        """For another hypervisor's libvirtd (p2p): over the namespaced network."""
        return f"qemu+tcp://{self.address}/system"

    def pid(self) -> int | None:
        pids = self.libvirtd.pids()
        return pids[0] if pids else read_pidfile(self.libvirtd.pidfile)

    def nsenter(self) -> list[str]:
        """Command prefix running a program in this hypervisor's mount namespace
        (host network: ejabberd on 127.0.0.1 stays reachable)."""
        pid = self.pid()
        if not pid:
            raise RigError(f"{self.name}: libvirtd is not running")
        return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--"]

    def _link(self) -> None:
        sw, ns = self.group.switch_ns, self.netns
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", sw, "link", "add", f"h{self.index}", "type", "veth", "peer", "name", "mig0",
             "netns", ns])
        run(["ip", "-n", sw, "link", "set", f"h{self.index}", "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{self.address}/24", "dev", "mig0"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "link", "set", "mig0", "up"])

    def start(self) -> float:
        self._link()
        return self.libvirtd.start(fresh=True, netns=self.netns)

    def stop(self) -> None:
        self.libvirtd.stop(destroy_domains=True)
        if self.netns in _netns_list():
            run(["ip", "netns", "del", self.netns], check=False)


def _netns_list() -> set[str]:
    cp = run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in cp.stdout.splitlines() if line.strip()}


class Hypervisors:
    """The extra hypervisors of one rig profile (state in ``<state>/hypervisors``)."""

    def __init__(self, state_dir: Path, profile: str, subnet: int):
        self.dir = Path(state_dir) / "hypervisors"
        self.prefix = f"arch-{profile}"
        self.switch_ns = f"{self.prefix}-sw"
        self.subnet = subnet
        self.shared_backing = self.dir / "shared-backing"
        self.shared_path = self.dir / "shared"  # the agents' vm_base_path, inside each namespace
        self.members: list[Hypervisor] = []

    def start(self, count: int) -> list[Hypervisor]:
        """Start ``count`` hypervisors from a clean state (stopping leftovers first)."""
        if count < 1:
            raise RigError("--hypervisors needs at least 1")
        self.stop()
        shutil.rmtree(self.shared_backing, ignore_errors=True)
        self.shared_backing.mkdir(parents=True)
        self.shared_path.mkdir(parents=True, exist_ok=True)
        run(["ip", "netns", "add", self.switch_ns])
        run(["ip", "-n", self.switch_ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.switch_ns, "link", "set", "br0", "up"])
        self.members = [Hypervisor(self, i) for i in range(1, count + 1)]
        try:
            for hv in self.members:
                t = hv.start()
                log.info("hypervisors: %s up in %.2fs (%s, %s)", hv.name, t, hv.netns, hv.address)
        except BaseException:
            self.stop()
            raise
        return self.members

    def stop(self) -> None:
        """Stop every hypervisor found on disk (even of a crashed run), then the namespaces."""
        found = {hv.index: hv for hv in self.members}
        if self.dir.is_dir():
            for d in self.dir.glob("hv-*"):
                if d.name[3:].isdigit():
                    found.setdefault(int(d.name[3:]), Hypervisor(self, int(d.name[3:])))
        for hv in found.values():
            hv.stop()
        names = _netns_list()
        for ns in sorted(names):
            if ns.startswith(f"{self.prefix}-hv"):
                run(["ip", "netns", "del", ns], check=False)
        if self.switch_ns in names:
            run(["ip", "netns", "del", self.switch_ns], check=False)
        self.members = []
