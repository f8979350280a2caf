"""Permissions: an aiosqlite store of explicit grants and the center that checks them."""
from archipelagent.permissions.center import (
    ALL,
    CORE_PERMISSIONS,
    Permission,
    PermissionCenter,
)
from archipelagent.permissions.store import PermissionStore, bare

__all__ = [
    "ALL",
    "CORE_PERMISSIONS",
    "Permission",
    "PermissionCenter",
    "PermissionStore",
    "bare",
]
