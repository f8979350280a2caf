"""Pure readers of the kernel's /proc files: text in, numbers out (unit-tested with fixed samples).

One sample reads /proc/stat, /proc/meminfo, /proc/loadavg, /proc/uptime,
/proc/net/dev and the local mounts' ``statvfs``; CPU use and network rates
are deltas between two samples, so no sample ever sleeps (Archipel's
collector slept one second per sample to measure the CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["CpuTimes", "parse_stat", "cpu_use", "parse_meminfo", "parse_loadavg", "parse_uptime", "parse_netdev",
           "local_mounts", "Sample", "read_sample", "LOCAL_FS"]

# File systems whose statvfs is local and cheap; network ones (nfs, cifs, fuse…) may hang and are the
# storage health monitor's business (storage/health.py), pseudo ones carry no data.
LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "vfat", "overlay"})


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


def parse_stat(text: str) -> dict[str, CpuTimes]:
    """``cpu`` (all) and ``cpuN`` lines → busy and total jiffies (idle = idle + iowait)."""
    out: dict[str, CpuTimes] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *values = line.split()
        numbers = [int(v) for v in values[:8]]
        idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
        total = sum(numbers)
        out[name] = CpuTimes(busy=total - idle, total=total)
    return out


def cpu_use(before: dict[str, CpuTimes], after: dict[str, CpuTimes]) -> dict[str, float]:
    """Percent busy per CPU between two samples (0 when no time passed)."""
    use = {}
    for name, now in after.items():
        prev = before.get(name)
        if prev is None:
            continue
        total = now.total - prev.total
        use[name] = round(100.0 * (now.busy - prev.busy) / total, 1) if total > 0 else 0.0
    return use


def parse_meminfo(text: str) -> dict[str, int]:
    """KiB: total, free (MemAvailable when present), used, swapped."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0])
    total = values.get("MemTotal", 0)
    free = values.get("MemAvailable", values.get("MemFree", 0))
    swapped = values.get("SwapTotal", 0) - values.get("SwapFree", 0)
    return {"total": total, "free": free, "used": total - free, "swapped": max(0, swapped)}


def parse_loadavg(text: str) -> dict[str, float]:
    one, five, fifteen = (float(v) for v in text.split()[:3])
    return {"one": one, "five": five, "fifteen": fifteen}


def parse_uptime(text: str) -> float:
    return float(text.split()[0])


def parse_netdev(text: str) -> dict[str, tuple[int, int]]:
    """Interface → (received bytes, sent bytes); loopback left out."""
    out = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if name and name != "lo" and len(fields) >= 9:
            out[name] = (int(fields[0]), int(fields[8]))
    return out


def local_mounts(mounts_text: str) -> list[tuple[str, str]]:
    """(device, mount point) of the local data file systems in /proc/mounts, each mount point once."""
    seen, out = set(), []
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in LOCAL_FS and parts[1] not in seen:
            seen.add(parts[1])
            out.append((parts[0], parts[1].replace("\\040", " ")))
    return out


@dataclass
class Sample:
    """One reading of the host; ``cpu``/``net`` rates need the previous sample."""

    time: float
    cpu_times: dict[str, CpuTimes]
    memory: dict[str, int]
    load: dict[str, float]
    uptime: float
    net: dict[str, tuple[int, int]]
    partitions: list[dict] = field(default_factory=list)


def read_sample(now: float, root: str = "/proc") -> Sample:
    """Blocking (a worker thread calls it): a few small /proc reads and local ``statvfs`` calls."""
    def read(name: str) -> str:
        with open(os.path.join(root, name)) as f:
            return f.read()

    partitions = []
    for device, mount in local_mounts(read("mounts")):
        try:
            st = os.statvfs(mount)
        except OSError:
            continue
        total, available = st.f_blocks * st.f_frsize // 1024, st.f_bavail * st.f_frsize // 1024
        used = total - st.f_bfree * st.f_frsize // 1024
        capacity = f"{round(100 * used / (used + available)) if used + available else 0}%"
        partitions.append({"partition": device, "mount": mount, "blocks": total, "used": used,
                           "available": available, "capacity": capacity})
    return Sample(time=now, cpu_times=parse_stat(read("stat")), memory=parse_meminfo(read("meminfo")),
                  load=parse_loadavg(read("loadavg")), uptime=parse_uptime(read("uptime")),
                  net=parse_netdev(read("net/dev")), partitions=partitions)
