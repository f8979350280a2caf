"""The site's catalogue of agent-defined networks, on the shared storage.

Every hypervisor mounts the VM storage at the same path, so one folder
``<vm_base_path>/.archipel-networks/`` tells each agent which networks exist,
who owns them, who may use them, and — for class networks — which VXLAN VNI
joins their bridges and which hypervisor serves DHCP.  One JSON file per
network, written whole (temporary file, fsync, rename): a reader never sees
half a record.  The functions here block: call them through ``agent.fs``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FOLDER = ".archipel-networks"
LOCAL, CLASS = "local", "class"


@dataclass
class NetworkRecord:
    name: str
    owner: str
    scope: str                       # "local": one hypervisor; "class": every hypervisor, over VXLAN
    hypervisor: str                  # where it was defined; for a class network, the DHCP server
    xml: str = ""                    # the definition libvirt got there
    vni: int | None = None           # class networks: VXLAN id, also the bridge's number
    subnets: list[str] = field(default_factory=list)
    grants: list[list] = field(default_factory=list)  # [target_type, target, permission, value]

    @property
    def bridge(self) -> str | None:
        return f"acn{self.vni}" if self.vni is not None else None


def folder(base: Path) -> Path:
    return Path(base) / FOLDER


def read_all(base: Path) -> dict[str, NetworkRecord]:
    """Every record (a file that does not parse is skipped: another agent may be writing)."""
    found = {}
    root = folder(base)
    if not root.is_dir():
        return found
    for path in sorted(root.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            record = NetworkRecord(**data)
        except (OSError, ValueError, TypeError):
            continue
        if record.name == path.stem:
            found[record.name] = record
    return found


def write(base: Path, record: NetworkRecord) -> None:
    root = folder(base)
    root.mkdir(mode=0o700, exist_ok=True)
    tmp = root / f".{record.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(record), out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, root / f"{record.name}.json")


def create(base: Path, record: NetworkRecord) -> bool:
    """Write a new record; False when a network of that name is already recorded."""
    root = folder(base)
    root.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(root / f"{record.name}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    write(base, record)
    return True


def remove(base: Path, name: str) -> None:
    try:
        (folder(base) / f"{name}.json").unlink()
    except FileNotFoundError:
        pass
