"""The same commands as XEP-0050 ad-hoc commands with data forms.

A command without arguments runs at once; one with arguments first returns a
form whose fields are its arguments.  The permission is checked before the
form is shown and again (by :func:`run_command`) when it is submitted.
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from ..errors import ArchipelError, InvalidArgument, PermissionDenied
from .dispatch import bare_jid, record_refusal, run_command
from .payload import as_elements, render_text
from .registry import Command

if TYPE_CHECKING:  # pragma: no cover
    from ..xmpp.entity import Entity

log = logging.getLogger(__name__)


class AdhocTransport:
    def __init__(self, entity: "Entity"):
        self.entity = entity

    def install(self) -> None:
        # slixmpp's xep_0050 empties the command list on every bind, so the
        # commands are (re)added at each session start.
        self.entity.xmpp.add_event_handler("session_start", self._add_commands)

    def _add_commands(self, _event=None) -> None:
        plugin = self.entity.xmpp.plugin["xep_0050"]
        for command in self.entity.agent.registry.for_kind(self.entity.kind):
            if command.adhoc:
                plugin.add_command(node=command.node, name=f"{command.help} ({command.action})", handler=self._starter(command))

    def _starter(self, command: Command):
        async def start(iq, session):
            try:
                return await self.start(command, iq, session)
            except ArchipelError as exc:  # e.g. LDAP unreachable during the early check
                return self._finish(session, error=exc.message)

        return start

    async def start(self, command: Command, iq, session):
        entity = self.entity
        session["sender"] = str(iq["from"])
        if command.permission is not None and not await entity.agent.permissions.check(
            entity.jid, entity.kind, bare_jid(iq["from"]), command.permission
        ):
            record_refusal(entity, iq["from"], "adhoc", command.namespace, command.action,
                           PermissionDenied(command.action), command=command)
            return self._finish(session, error=f"Cannot use '{command.action}': permission denied")
        if not command.args:
            return await self._execute(command, session, {})
        form = entity.xmpp.plugin["xep_0004"].make_form(ftype="form", title=command.help or command.action)
        form["instructions"] = f"{command.namespace} {command.action}"
        for arg in command.args:
            ftype = "list-single" if arg.choices else ("text-multi" if arg.source != "attr" else "text-single")
            field = form.add_field(var=arg.name, ftype=ftype, label=arg.help or arg.name, required=arg.required)
            for choice in arg.choices:
                field.add_option(label=choice, value=choice)
            if arg.default is not None and arg.source == "attr":
                field["value"] = str(arg.default)
        session["payload"] = form
        session["next"] = self._submitter(command)
        session["has_next"] = False
        return session

    def _submitter(self, command: Command):
        async def submit(form, session):
            try:
                raw = self.form_values(command, form)
            except ArchipelError as exc:
                record_refusal(self.entity, session["sender"], "adhoc", command.namespace, command.action,
                               exc, command=command)
                return self._finish(session, error=exc.message)
            return await self._execute(command, session, raw)

        return submit

    @staticmethod
    def form_values(command: Command, form) -> dict[str, object]:
        values = form.get_values() if form is not None and not isinstance(form, list) else {}
        raw: dict[str, object] = {}
        for arg in command.args:
            value = values.get(arg.name)
            if isinstance(value, list):
                value = "\n".join(value)
            if value in (None, ""):
                continue
            if arg.source != "attr":
                try:
                    value = ET.fromstring(value)
                except ET.ParseError as exc:
                    raise InvalidArgument(arg.name, f"not well-formed XML: {exc}") from None
            raw[arg.name] = value
        return raw

    async def _execute(self, command: Command, session, raw):
        try:
            result = await run_command(self.entity, command, session["sender"], raw, "adhoc")
            render = command.chat_render or render_text
            text = render(as_elements(result))
        except ArchipelError as exc:
            return self._finish(session, error=exc.message)
        except Exception:
            log.exception("%s: ad-hoc %s failed", self.entity.jid, command.node)
            return self._finish(session, error="internal error, see the agent log")
        form = self.entity.xmpp.plugin["xep_0004"].make_form(ftype="result", title=command.help or command.action)
        form.add_field(var="result", ftype="text-multi", label="Result", value=text)
        return self._finish(session, payload=form)

    @staticmethod
    def _finish(session, *, error: str | None = None, payload=None):
        session["payload"] = payload
        session["next"] = None
        session["has_next"] = False
        session["notes"] = [("error", error)] if error else [("info", "Done.")]
        return session
