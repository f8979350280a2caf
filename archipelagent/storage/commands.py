"""``archipel:hypervisor:health`` ``storage``: the storage health monitor's state, on request."""
from __future__ import annotations

from ..commands import CommandSet, element  # noqa: F401
from ..errors import Unavailable

HEALTH_NS = "archipel:hypervisor:health"

commands = CommandSet()


def _render(payload) -> str:
    el = payload[0]
    a = el.attrib
    text = f"Storage {a['path']}: {a['state']}"
    reasons = [r.text for r in el]
    if reasons:
        text += f" ({', '.join(reasons)})"
    if a.get("free_bytes") and a.get("total_bytes"):
        free, total = int(a["free_bytes"]), int(a["total_bytes"])
        text += f"; {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
    if a.get("fsync_ms"):
        text += f"; fsync {a['fsync_ms']} ms"
    if a.get("checked_at"):
        text += f"; checked {a['checked_at']}"
    return text


@commands.command(
    HEALTH_NS, "storage", kinds=("hypervisor",), permission="health_info",
    permission_description="See the health of the hypervisor and its storage",
    chat=("storage", "storage health"), help="health of the VM storage (mounted, writable, fsync, free space)",
    chat_render=_render,
)
async def storage(ctx):
    health = ctx.agent.storage_health
    if health is None:
        raise Unavailable("the storage monitor is not running")
    return health.element()
