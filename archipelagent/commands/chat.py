"""The same commands as chat messages, for any Jabber client.

The ``message`` permission gates the conversation (as in Archipel); each
command then needs its own permission, checked by :func:`run_command`.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..errors import ArchipelError, InvalidArgument, PermissionDenied, UnknownAction
from .dispatch import admitted, bare_jid, record_refusal, run_command
from .payload import as_elements, render_text
from .registry import Command

if TYPE_CHECKING:  # pragma: no cover
    from ..xmpp.entity import Entity

log = logging.getLogger(__name__)

NOT_ALLOWED = "Sorry, you are not allowed to talk to me (you need the 'message' permission on this entity)."


def positional_arguments(command: Command, words: list[str]) -> dict[str, str]:
    """Map the words after the command phrase onto its attribute arguments."""
    attr_args = [a for a in command.args if a.source == "attr"]
    raw: dict[str, str] = {}
    for index, arg in enumerate(attr_args):
        if index >= len(words):
            break
        if arg.rest:
            raw[arg.name] = " ".join(words[index:])
            return raw
        raw[arg.name] = words[index]
    if len(words) > len(attr_args):
        raise InvalidArgument(attr_args[-1].name if attr_args else "arguments", f"too many words; usage: {command.usage}")
    return raw


class ChatTransport:
    def __init__(self, entity: "Entity"):
        self.entity = entity

    def install(self) -> None:
        self.entity.xmpp.add_event_handler("message", self.on_message)

    async def on_message(self, msg) -> None:
        if msg["type"] not in ("chat", "normal"):
            return
        body = (msg["body"] or "").strip()
        if not body or msg.xml.find("{archipel:push}push") is not None:
            return
        if bare_jid(msg["from"]) == self.entity.jid:
            return
        try:
            with admitted(self.entity, msg["from"], "chat", "", body.split()[0].lower()[:64]):
                answer = await self.answer(msg["from"], body)
        except ArchipelError as exc:  # too many requests in flight, or LDAP unreachable while checking 'message'
            answer = f"Sorry, I cannot answer now: {exc.message}."
        msg.reply(answer).send()

    async def answer(self, sender, body: str) -> str:
        entity = self.entity
        perms = entity.agent.permissions
        sender_bare = bare_jid(sender)
        started = time.perf_counter()
        try:
            may_talk = await perms.check(entity.jid, entity.kind, sender_bare, "message")
        except ArchipelError as exc:  # LDAP unreachable: refused, and audited as such (error:-48)
            self._audit_refusal(sender, body, exc, started)
            raise
        if not may_talk:
            self._audit_refusal(sender, body, PermissionDenied("message"), started)
            return NOT_ALLOWED
        if body.lower() in ("help", "?", "commands"):
            text = await self.help_text(sender_bare)
            record_refusal(entity, sender, "chat", "", "help", None, started=started)
            return text
        match = entity.agent.registry.match_chat(entity.kind, body)
        if match is None:
            first = body.split()[0]
            self._audit_refusal(sender, body, UnknownAction(f"unknown chat command {first!r}"), started)
            return f"I don't know '{first}'. Type 'help' to see what you can ask me."
        command, words = match
        try:
            try:
                raw = positional_arguments(command, words)
            except ArchipelError as exc:
                record_refusal(entity, sender, "chat", command.namespace, command.action, exc,
                               command=command, started=started)
                raise
            result = await run_command(entity, command, sender, raw, "chat")
            render = command.chat_render or render_text
            return render(as_elements(result))
        except PermissionDenied as exc:
            return f"Sorry: {exc.message}."
        except ArchipelError as exc:
            return f"Error: {exc.message}. Usage: {command.usage}"
        except Exception:
            log.exception("%s: chat command %r failed", entity.jid, body)
            return "Error: internal error, see the agent log."

    def _audit_refusal(self, sender, body: str, error: ArchipelError, started: float) -> None:
        """Audit a message refused before dispatch: the command it names if any, never the raw text."""
        match = self.entity.agent.registry.match_chat(self.entity.kind, body)
        if match is None:
            record_refusal(self.entity, sender, "chat", "", body.split()[0].lower()[:64], error, started=started)
            return
        command, words = match
        try:
            raw = positional_arguments(command, words)
        except ArchipelError:
            raw = {}
        record_refusal(self.entity, sender, "chat", command.namespace, command.action, error,
                       raw=raw, command=command, started=started)

    async def help_text(self, sender_bare: str) -> str:
        entity = self.entity
        lines = []
        for command in entity.agent.registry.for_kind(entity.kind):
            if not command.chat:
                continue
            if command.permission is not None and not await entity.agent.permissions.check(
                entity.jid, entity.kind, sender_bare, command.permission
            ):
                continue
            words = " | ".join(command.chat)
            lines.append(f"• {words}: {command.help}" + (f" (usage: {command.usage})" if any(a.source == 'attr' for a in command.args) else ""))
        if not lines:
            return "You may talk to me, but you have no permission to use any command here."
        return "Commands you can use:\n" + "\n".join(lines)
