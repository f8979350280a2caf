"""Namespace helpers for ElementTree payloads, below every layer that builds stanzas."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Iterable

__all__ = ["element", "local_name", "qualify"]


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def qualify(el: ET.Element, namespace: str) -> ET.Element:
    """Put un-namespaced payload elements into ``namespace`` (iteratively: no recursion to exhaust).

    On the wire Archipel's payload children inherit the query's default
    namespace; stating it explicitly keeps the serialisation identical.
    """
    for node in el.iter():
        if not node.tag.startswith("{"):
            node.tag = f"{{{namespace}}}{node.tag}"
    return el


def element(tag: str, attrs: dict[str, Any] | None = None, text: str | None = None, children: Iterable[ET.Element] = ()) -> ET.Element:
    """Build a payload element; attribute values are stringified (``None`` ones left out)."""
    el = ET.Element(tag, {k: str(v) for k, v in (attrs or {}).items() if v is not None})
    if text is not None:
        el.text = text
    for child in children:
        el.append(child)
    return el
