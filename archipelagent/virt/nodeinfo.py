"""Pure helpers turning raw libvirt node answers into plain dicts.

Units: memory is always KiB (``memory_kib``).  ``virConnect.getInfo()``
reports memory in **MiB** (the binding shifts libvirt's KiB value right by 10
bits), so when the exact KiB total from ``getMemoryStats`` is not available
``memory_kib`` is ``MiB * 1024`` (MiB-granular).
"""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["node_info_from_getinfo", "decode_version", "NODE_INFO_KEYS"]

NODE_INFO_KEYS = ("model", "memory_kib", "nrCPU", "mHzCPU", "nrNumaNodes",
                  "nrSockets", "nrCoreperSocket", "nrThreadperCore")


def node_info_from_getinfo(info: Sequence[Any],
                           total_kib: int | None = None) -> dict[str, Any]:
    """Map ``virConnect.getInfo()`` (8-item list) to named keys.

    ``info`` = [model, memory MiB, cpus, MHz, NUMA nodes, sockets per node,
    cores per socket, threads per core].  ``total_kib``, if known (from
    ``getMemoryStats(ALL_CELLS)['total']``), replaces the MiB-rounded figure.
    Note libvirt's ``sockets`` is per NUMA node; ``nrSockets`` here is the
    value libvirt gives (as Archipel did).
    """
    if len(info) < 8:
        raise ValueError(f"getInfo() returned {len(info)} items, expected 8")
    model, mem_mib, cpus, mhz, nodes, sockets, cores, threads = info[:8]
    return {
        "model": str(model),
        "memory_kib": int(total_kib) if total_kib else int(mem_mib) * 1024,
        "nrCPU": int(cpus),
        "mHzCPU": int(mhz),
        "nrNumaNodes": int(nodes),
        "nrSockets": int(sockets),
        "nrCoreperSocket": int(cores),
        "nrThreadperCore": int(threads),
    }


def decode_version(value: int) -> str:
    """libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release."""
    value = int(value)
    if value < 0:
        raise ValueError(f"negative version {value}")
    major, rest = divmod(value, 1_000_000)
    minor, release = divmod(rest, 1_000)
    return f"{major}.{minor}.{release}"
