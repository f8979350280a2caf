"""The HA storage kit: DRBD + Pacemaker/Corosync + NFSv4 configuration for the storage pair.

:mod:`.kit` turns a few parameters into file contents (pure, no I/O);
:mod:`.check` runs Pacemaker's, DRBD's and Corosync's own offline validators on
a generated directory.  ``archipel-admin ha generate|check`` is the front end.
"""
from .kit import EXAMPLE, HAKitError, HAParams, Node, generate, parse_node

__all__ = ["EXAMPLE", "HAKitError", "HAParams", "Node", "generate", "parse_node"]
