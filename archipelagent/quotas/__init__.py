"""Quotas per user and LDAP group: the center (checks, usage, per-owner locks) and its commands.

:mod:`.center` is a service below the command layer (the VM manager and the
storage module call it); :mod:`.commands` serves ``archipel:quota`` and is
imported by the agent's wiring only.
"""
from .center import *  # noqa: F401,F403
from .center import QuotaCenter, QuotaExceeded, owner_of, parse_xml  # noqa: F401
