"""Test/demo rig of the Archipel agent: real ejabberd, slapd and libvirtd/QEMU
on 127.0.0.1, all state under ``.rig/<profile>``.  Stdlib only (it runs
before the virtualenv has anything).  See docs/RIG.md."""
from .stack import PROFILES, Stack
from .util import RigError

__all__ = ["Stack", "PROFILES", "RigError"]
