"""The one parser for XML that comes from a user (definitions, ad-hoc form fields, snapshots…).

Everything a user writes as XML is parsed here and nowhere else, so the rules
hold for every path: no DTD (so no entity expansion, external entity or
billion laughs), no network, no XInclude processing, no processing
instructions, at most :data:`MAX_XML_BYTES` and :data:`MAX_DEPTH` levels.
Callers turn :class:`UnsafeXML` into the error their command reports.
"""
from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET

from lxml import etree

__all__ = ["UnsafeXML", "parse", "parse_etree", "depth", "MAX_XML_BYTES", "MAX_DEPTH"]

MAX_XML_BYTES = 1 << 20
MAX_DEPTH = 64  # a libvirt domain is < 10 deep; deeper is an attack on recursive code

_DOCTYPE_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class UnsafeXML(ValueError):
    """The text is refused; ``where`` names the offending part, ``reason`` says why."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False,
        dtd_validation=False, attribute_defaults=False, huge_tree=False,
        remove_comments=True, remove_pis=False, collect_ids=False)


def depth(root) -> int:
    """Depth of an element tree (lxml or ElementTree), iteratively: no recursion to exhaust."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in node)
    return deepest


def parse(xml: str | bytes, *, max_bytes: int = MAX_XML_BYTES, max_depth: int = MAX_DEPTH) -> etree._Element:
    """Parse text from a user (lxml) without letting the parser do anything else."""
    data = xml.encode("utf-8") if isinstance(xml, str) else bytes(xml)
    if len(data) > max_bytes:
        raise UnsafeXML("(document)", f"larger than {max_bytes} bytes")
    if _DOCTYPE_RE.search(data):
        raise UnsafeXML("!DOCTYPE", "document type declarations and entities are not accepted")
    try:
        root = etree.fromstring(data, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise UnsafeXML("(document)", f"not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise UnsafeXML("!DOCTYPE", "document type declarations and entities are not accepted")
    outside = itertools.chain(root.itersiblings(preceding=True), root.itersiblings())
    for node in itertools.chain(outside, root.iter(etree.PI, etree.Entity)):
        if isinstance(node, etree._ProcessingInstruction):
            raise UnsafeXML(f"?{node.target}", "processing instructions are not accepted")
        if isinstance(node, etree._Entity):
            raise UnsafeXML(f"&{node.name};", "entity references are not accepted")
    if depth(root) > max_depth:
        raise UnsafeXML("(document)", f"nested deeper than {max_depth} levels")
    return root


def parse_etree(xml: str | bytes, **limits) -> ET.Element:
    """:func:`parse`, returned as a standard-library element (what command handlers receive)."""
    return ET.fromstring(etree.tostring(parse(xml, **limits)))
