"""Payload helpers shared by the transports: normalising and rendering results."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from ..xmlns import local_name, qualify  # noqa: F401 - re-exported for the transports


def as_elements(result: Any) -> list[ET.Element]:
    """A handler may return None, one element or a list of elements."""
    if result is None:
        return []
    if isinstance(result, ET.Element):
        return [result]
    return [el for el in result if isinstance(el, ET.Element)]


def render_text(result: Any, limit: int = 3000) -> str:
    """A short human rendering of a payload, for chat and ad-hoc notes."""
    elements = as_elements(result)
    if not elements:
        return "Done."
    lines: list[str] = []
    for el in elements:
        attrs = " ".join(f"{k}={v}" for k, v in el.attrib.items())
        text = (el.text or "").strip()
        if len(el):
            body = ET.tostring(el, encoding="unicode")
            lines.append(body)
        else:
            lines.append(" ".join(p for p in (local_name(el.tag), attrs, text) if p))
    out = "\n".join(lines)
    if len(out) > limit:
        out = out[:limit] + f"\n… ({len(out) - limit} more characters; use the IQ interface for the full payload)"
    return out
