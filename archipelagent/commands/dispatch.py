"""Running a command: the one place that checks permissions and parses arguments.

Every transport calls :func:`run_command`, so a command can never be reached
without its permission check, whatever path the request took.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ..audit import record_request
from ..errors import MissingArgument
from ..jids import bare_jid  # noqa: F401 - re-exported for the transports
from .registry import Command

if TYPE_CHECKING:  # pragma: no cover
    from ..xmpp.entity import Entity

log = logging.getLogger(__name__)


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


async def run_command(entity: "Entity", command: Command, sender: Any, raw: Mapping[str, Any], transport: str) -> Any:
    """Check the sender's permission, parse the arguments, run the handler.

    Whatever happens, the request is recorded in the audit log.
    """
    sender_text = str(sender)
    started = time.perf_counter()
    error: BaseException | None = None
    try:
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
        record_request(entity, sender=sender_text, transport=transport, namespace=command.namespace,
                       action=command.action, raw=raw, command=command, error=error, started=started)


def record_refusal(entity: "Entity", sender: Any, transport: str, namespace: str | None, action: str | None,
                   error: BaseException | None, *, raw: Mapping[str, Any] | None = None,
                   command: Command | None = None, started: float | None = None) -> None:
    """Audit a request the transport answered without :func:`run_command`: refusals (malformed,
    unknown, gated, bad arguments) and chat's own ``help``."""
    record_request(entity, sender=sender, transport=transport, namespace=namespace, action=action,
                   raw=raw, command=command, error=error, started=started)
