"""The same commands as XEP-0050 ad-hoc commands with data forms.

A command without arguments runs at once; one with arguments first returns a
form whose fields are its arguments.  The permission is checked before the
form is shown and again (by :func:`run_command`) when it is submitted.

Sessions live in :class:`AdhocSessions`, not in slixmpp's plugin dict (which
keeps every session forever): a session is freed when it completes, is
refused or fails, is cancelled, or stays untouched :data:`SESSION_TTL`
seconds; each sender may hold :data:`MAX_SESSIONS_PER_SENDER` open sessions
and an entity :data:`MAX_SESSIONS`.  A session continues only for the full
JID that opened it.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

from slixmpp.exceptions import XMPPError

from .. import xmlsafe
from ..errors import ArchipelError, InvalidArgument, PermissionDenied
from .dispatch import TooManyRequests, admitted, bare_jid, record_refusal, run_command
from .payload import as_elements, render_text
from .registry import Command

if TYPE_CHECKING:  # pragma: no cover
    from ..xmpp.entity import Entity

log = logging.getLogger(__name__)

COMMANDS_NS = "http://jabber.org/protocol/commands"
SESSION_TTL = 300.0  # seconds an unfinished multi-step session may stay untouched
MAX_SESSIONS_PER_SENDER = 8
MAX_SESSIONS = 256  # per entity


class AdhocSessions:
    """The open ad-hoc sessions of one entity: bounded, expiring, freed when finished.

    Installed as xep_0050's session backend (it only uses ``get``, ``[]=`` and
    ``del``).  A session whose ``next`` step is None is finished: storing it
    frees it instead.
    """

    def __init__(self, ttl: float = SESSION_TTL, per_sender: int = MAX_SESSIONS_PER_SENDER,
                 limit: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic):
        self.ttl, self.per_sender, self.limit, self._clock = ttl, per_sender, limit, clock
        self._sessions: OrderedDict[str, tuple[float, dict]] = OrderedDict()  # oldest touch first

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl
        while self._sessions:
            sessionid, (touched, _session) = next(iter(self._sessions.items()))
            if touched > deadline:
                return
            del self._sessions[sessionid]
            log.debug("ad-hoc session %s expired", sessionid)

    def get(self, sessionid: str, default: Any = None) -> Any:
        self._expire()
        entry = self._sessions.get(sessionid)
        return entry[1] if entry else default

    def __setitem__(self, sessionid: str, session: dict) -> None:
        if session.get("next") is None:  # completed, refused or failed: nothing to keep
            self._sessions.pop(sessionid, None)
            return
        self._sessions[sessionid] = (self._clock(), session)
        self._sessions.move_to_end(sessionid)

    def __delitem__(self, sessionid: str) -> None:
        self._sessions.pop(sessionid, None)

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)

    def open_for(self, sender_bare: str) -> int:
        self._expire()
        return sum(1 for _t, s in self._sessions.values() if bare_jid(str(s.get("from", ""))) == sender_bare)

    def check_room(self, sender_bare: str) -> None:
        """Raise :class:`TooManyRequests` when one more session would pass a bound."""
        if self.open_for(sender_bare) >= self.per_sender:
            raise TooManyRequests(f"too many open ad-hoc sessions: at most {self.per_sender} per sender; "
                                  "complete or cancel one, or wait for it to expire")
        if len(self) >= self.limit:
            raise TooManyRequests("too many open ad-hoc sessions on this entity; retry later")


class AdhocTransport:
    def __init__(self, entity: "Entity"):
        self.entity = entity
        self.sessions = AdhocSessions()

    def install(self) -> None:
        xmpp = self.entity.xmpp
        plugin = xmpp.plugin["xep_0050"]
        plugin.set_backend(self.sessions)
        # Continuations are checked (session known, same requester) before slixmpp
        # routes them: slixmpp starts a new session for an unknown sessionid.
        xmpp.del_event_handler("command", plugin._handle_command_all)
        xmpp.add_event_handler("command", self._on_command)
        # The command list is read from the registry when asked, never copied into
        # slixmpp's per-client disco storage: ``add_command`` keeps ~6 KiB of stanza
        # objects per command and entity (0.5 MiB for a VM entity's ~80 commands).
        plugin.api.register(self._get_command, "get_command")
        disco = xmpp.plugin["xep_0030"]
        disco.api.register(self._disco_items, "get_items")
        disco.api.register(self._disco_info, "get_info")

    def _command(self, node: str | None) -> Command | None:
        namespace, _, action = (node or "").rpartition("#")
        command = self.entity.agent.registry.lookup(self.entity.kind, namespace, action) if namespace else None
        return command if command is not None and command.adhoc else None

    @staticmethod
    def _label(command: Command) -> str:
        return f"{command.help} ({command.action})"

    def _get_command(self, jid, node, ifrom, args):
        """xep_0050's lookup of the command a request starts: (name, handler, timeout handler, timeout)."""
        command = self._command(node)
        return (self._label(command), self._starter(command), None, 0) if command else None

    def _disco_items(self, jid, node, ifrom, data):
        disco = self.entity.xmpp.plugin["xep_0030"]
        if node != COMMANDS_NS:
            return disco.static.get_items(jid, node, ifrom, data)
        items = disco.stanza.DiscoItems()
        items["node"] = COMMANDS_NS
        for command in self.entity.agent.registry.for_kind(self.entity.kind):
            if command.adhoc:
                items.add_item(jid=str(jid), node=command.node, name=self._label(command))
        return items

    def _disco_info(self, jid, node, ifrom, data):
        disco = self.entity.xmpp.plugin["xep_0030"]
        command = self._command(node)
        if node != COMMANDS_NS and command is None:
            return disco.static.get_info(jid, node, ifrom, data)
        info = disco.stanza.DiscoInfo()
        info["node"] = node
        if command is None:
            info.add_identity("automation", "command-list", name="Ad-Hoc commands")
        else:
            info.add_identity("automation", "command-node", name=self._label(command))
            info.add_feature(COMMANDS_NS)
            info.add_feature("jabber:x:data")
        return info

    async def _on_command(self, iq) -> None:
        sessionid = iq["command"]["sessionid"]
        if sessionid:
            session = self.sessions.get(sessionid)
            if session is None or str(session.get("from")) != str(iq["from"]):
                raise XMPPError("bad-request", "unknown, finished or expired ad-hoc session",
                                extension="bad-sessionid", extension_ns=COMMANDS_NS)
        await self.entity.xmpp.plugin["xep_0050"]._handle_command_all(iq)

    def _starter(self, command: Command):
        async def start(iq, session):
            try:
                with admitted(self.entity, iq["from"], "adhoc", command.namespace, command.action):
                    return await self.start(command, iq, session)
            except TooManyRequests as exc:
                raise XMPPError("resource-constraint", exc.message, etype="wait") from None
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
        try:
            self.sessions.check_room(bare_jid(iq["from"]))
        except TooManyRequests as exc:
            record_refusal(entity, iq["from"], "adhoc", command.namespace, command.action, exc, command=command)
            raise
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
                with admitted(self.entity, session["sender"], "adhoc", command.namespace, command.action):
                    try:
                        raw = self.form_values(command, form)
                    except ArchipelError as exc:
                        record_refusal(self.entity, session["sender"], "adhoc", command.namespace,
                                       command.action, exc, command=command)
                        return self._finish(session, error=exc.message)
                    return await self._execute(command, session, raw)
            except TooManyRequests as exc:  # the session stays open: the sender may submit again
                raise XMPPError("resource-constraint", exc.message, etype="wait") from None

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
            if arg.source != "attr":  # user XML: the one safe parser (no DTD, entities, PIs; bounded)
                try:
                    value = xmlsafe.parse_etree(value)
                except xmlsafe.UnsafeXML as exc:
                    raise InvalidArgument(arg.name, str(exc)) from None
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
