"""Running a command: the one place that checks permissions and parses arguments.

Every transport calls :func:`run_command`, so a command can never be reached
without its permission check, whatever path the request took.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ..audit import record_request
from ..errors import ArchipelError, Migrating, MissingArgument
from ..metrics import observe_command
from ..jids import bare_jid  # noqa: F401 - re-exported for the transports
from .registry import Command

if TYPE_CHECKING:  # pragma: no cover
    from ..xmpp.entity import Entity

log = logging.getLogger(__name__)

# Requests one sender may have in flight (received, not yet answered), on one entity and on the agent.
MAX_IN_FLIGHT_PER_ENTITY = 16
MAX_IN_FLIGHT_PER_AGENT = 512


class TooManyRequests(ArchipelError):
    """The sender already has as many requests in flight as allowed; retry once they are answered."""

    code = -52
    condition = "resource-constraint"


class InFlight:
    """Counts each sender's requests in flight, per entity and agent-wide, for every transport.

    A sender flooding an entity (slow commands, or many refusals that each cost an
    LDAP or database look-up) cannot make the agent hold unbounded work: past the
    limit a request is refused at once with :class:`TooManyRequests`.
    """

    def __init__(self, per_entity: int = MAX_IN_FLIGHT_PER_ENTITY, per_agent: int = MAX_IN_FLIGHT_PER_AGENT):
        self.per_entity = per_entity
        self.per_agent = per_agent
        self._counts: Counter = Counter()

    def acquire(self, entity_jid: str, sender_bare: str) -> None:
        """Take a place for one request, or raise :class:`TooManyRequests`."""
        if self._counts[(entity_jid, sender_bare)] >= self.per_entity:
            raise TooManyRequests(f"too many requests in flight: at most {self.per_entity} per sender on this "
                                  "entity; retry when earlier ones are answered")
        if self._counts[("", sender_bare)] >= self.per_agent:
            raise TooManyRequests(f"too many requests in flight: at most {self.per_agent} per sender on this "
                                  "hypervisor; retry when earlier ones are answered")
        self._counts[(entity_jid, sender_bare)] += 1
        self._counts[("", sender_bare)] += 1

    def total(self) -> int:
        """Requests in flight on the whole agent."""
        return sum(n for (entity, _), n in self._counts.items() if entity == "")

    def release(self, entity_jid: str, sender_bare: str) -> None:
        for key in ((entity_jid, sender_bare), ("", sender_bare)):
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]


@contextmanager
def admitted(entity: "Entity", sender: Any, transport: str, namespace: str | None = None,
             action: str | None = None) -> Iterator[None]:
    """Hold one of the sender's in-flight places while a transport serves a request.

    Every transport wraps its whole request in this, so the limit holds for IQ,
    chat and ad-hoc alike; a refusal is audited here and raised for the
    transport to answer in its own shape.
    """
    requests: InFlight = entity.agent.requests
    sender_bare = bare_jid(str(sender))
    try:
        requests.acquire(entity.jid, sender_bare)
    except TooManyRequests as exc:
        log.debug("%s: %s request of %s refused: %s", entity.jid, transport, sender_bare, exc.message)
        record_refusal(entity, sender, transport, namespace, action, exc)
        raise
    try:
        yield
    finally:
        requests.release(entity.jid, sender_bare)


@dataclass(frozen=True)
class Context:
    """What a handler knows about the request it serves."""

    entity: "Entity"
    command: Command
    sender: str
    transport: str  # "iq", "chat" or "adhoc"

    @property
    def sender_bare(self) -> str:
        return bare_jid(self.sender)

    @property
    def agent(self):
        return self.entity.agent


def parse_arguments(command: Command, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Turn raw transport values into handler keyword arguments."""
    parsed: dict[str, Any] = {}
    for arg in command.args:
        value = raw.get("__children__") if arg.source == "children" else raw.get(arg.name)
        if value is None or (value in ("", []) and arg.required):
            if arg.required:
                raise MissingArgument(arg.name)
            parsed[arg.name] = arg.default
            continue
        parsed[arg.name] = arg.convert(value)
    return parsed


# What a migrating VM still answers (Archipel's list); everything else gets -43.
WHILE_MIGRATING = frozenset({"info", "xmldesc", "networkinfo", "capabilities", "cancel"})


async def run_command(entity: "Entity", command: Command, sender: Any, raw: Mapping[str, Any], transport: str) -> Any:
    """Check the sender's permission, parse the arguments, run the handler.

    Whatever happens, the request is recorded in the audit log.
    """
    sender_text = str(sender)
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        if entity.migrating and command.action not in WHILE_MIGRATING:
            raise Migrating(f"{entity.jid} is migrating")
        if command.permission is not None:
            await entity.agent.permissions.require(
                entity.jid, entity.kind, bare_jid(sender_text), command.permission, action=command.action
            )
        kwargs = parse_arguments(command, raw)
        ctx = Context(entity=entity, command=command, sender=sender_text, transport=transport)
        log.debug("%s: %s %s by %s via %s", entity.jid, command.namespace, command.action, bare_jid(sender_text), transport)
        return await command.handler(ctx, **kwargs)
    except BaseException as exc:
        error = exc
        raise
    finally:
        record_refusal(entity, sender_text, transport, command.namespace, command.action, error,
                       raw=raw, command=command, started=started)


def record_refusal(entity: "Entity", sender: Any, transport: str, namespace: str | None, action: str | None,
                   error: BaseException | None, *, raw: Mapping[str, Any] | None = None,
                   command: Command | None = None, started: float | None = None) -> None:
    """Account for one answered request, in the audit log and the metrics: every request
    :func:`run_command` ran, and those a transport answered without it — refusals
    (malformed, unknown, gated, bad arguments) and chat's own ``help``."""
    record_request(entity, sender=sender, transport=transport, namespace=namespace, action=action,
                   raw=raw, command=command, error=error, started=started)
    observe_command(entity, namespace, action, transport, error, started)
