"""The same commands as chat messages, for any Jabber client.

The ``message`` permission gates the conversation (as in Archipel); each
command then needs its own permission, checked by :func:`run_command`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import ArchipelError, InvalidArgument, PermissionDenied
from .dispatch import bare_jid, run_command
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
        answer = await self.answer(msg["from"], body)
        msg.reply(answer).send()

    async def answer(self, sender, body: str) -> str:
        entity = self.entity
        perms = entity.agent.permissions
        sender_bare = bare_jid(sender)
        if not await perms.check(entity.jid, entity.kind, sender_bare, "message"):
            return NOT_ALLOWED
        if body.lower() in ("help", "?", "commands"):
            return await self.help_text(sender_bare)
        match = entity.agent.registry.match_chat(entity.kind, body)
        if match is None:
            first = body.split()[0]
            return f"I don't know '{first}'. Type 'help' to see what you can ask me."
        command, words = match
        try:
            raw = positional_arguments(command, words)
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
