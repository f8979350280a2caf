"""JID helpers shared by every layer: the one bare form we compare, and the one
parser for JID arguments of commands."""
from __future__ import annotations

from typing import Any


def bare_jid(jid: Any) -> str:
    """Lowercased bare JID of a JID or JID string (resource stripped)."""
    return str(jid).strip().split("/", 1)[0].lower()


def bare_jid_arg(value: str) -> str:
    """A command argument naming a user or entity: any resource is dropped, the
    rest must be a valid ``user@domain`` (same rules as the configuration)."""
    from .config import parse_bare_jid  # config imports nothing of ours at module level

    try:
        return parse_bare_jid(bare_jid(value))
    except ValueError as exc:
        raise ValueError(f"not a bare JID: {value!r} ({exc})") from None
