"""Thin async layer over libvirt: one connection per agent, events on the loop."""
from archipelagent.virt.connection import (  # noqa: F401
    DomainSummary, LibvirtConnection, ThreadSafeAsyncIOImpl, register_event_impl,
)
