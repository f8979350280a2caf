"""Feature modules: found through the ``archipelagent.modules`` entry point group.

A feature module (storage, snapshots, networks, …) lives in ``modules/``
(installed as ``archipelagent_modules``) and is declared in ``setup.py``::

    "archipelagent.modules": ["storage = archipelagent_modules.storage"]

The module object exposes ``commands`` (a :class:`~archipelagent.commands.CommandSet`)
and optionally ``async def setup(agent)`` / ``async def ready(agent)`` (entities
loaded) / ``async def teardown(agent)`` for state it owns.  Every installed module is loaded unless the configuration says
``[MODULES] <name> = false`` (Archipel's ``[MODULES] id=True|False``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType

log = logging.getLogger(__name__)

GROUP = "archipelagent.modules"


@dataclass(frozen=True)
class FeatureModule:
    name: str
    module: ModuleType

    @property
    def commands(self):
        return getattr(self.module, "commands", ())

    async def setup(self, agent) -> None:
        hook = getattr(self.module, "setup", None)
        if hook is not None:
            await hook(agent)

    async def ready(self, agent) -> None:
        """Called once the entities are loaded (work that names entities starts here)."""
        hook = getattr(self.module, "ready", None)
        if hook is not None:
            await hook(agent)

    async def teardown(self, agent) -> None:
        hook = getattr(self.module, "teardown", None)
        if hook is not None:
            await hook(agent)


def enabled(parser, name: str) -> bool:
    if parser is None or not parser.has_section("MODULES"):
        return True
    return parser.getboolean("MODULES", name, fallback=True)


def load_modules(parser=None) -> list[FeatureModule]:
    """The enabled feature modules, sorted by name (a stable registration order)."""
    found = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if not enabled(parser, ep.name):
            log.info("feature module %s disabled by [MODULES]", ep.name)
            continue
        found.append(FeatureModule(ep.name, ep.load()))
    return found
