"""The VM storage (``vm_base_path``): its health monitor (see :mod:`.health`)."""
from .health import (
    DEGRADED, OK, ProbeResult, StorageDegraded, StorageHealth, StorageSettings,
    probe, require_writable, should_resume,
)

__all__ = ["DEGRADED", "OK", "ProbeResult", "StorageDegraded", "StorageHealth", "StorageSettings",
           "probe", "require_writable", "should_resume"]
