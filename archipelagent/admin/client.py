"""A small XMPP client for the admin CLI: connect, send ACPs and pings, close.

It follows the agent's own TLS rule: STARTTLS whenever the server offers it,
the certificate checked against ``ca_file`` (or the system CAs), and a
password sent over a plaintext stream only to a loopback server.
"""
from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

from ..config import is_loopback

STANZA_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

# RFC 6120 conditions slixmpp does not know (it would fail to parse the error reply):
# quota refusals use policy-violation.
slixmpp.stanza.Error.conditions = set(slixmpp.stanza.Error.conditions) | {"policy-violation"}

log = logging.getLogger(__name__)


class AdminError(Exception):
    """Base of the client's errors; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConnectionFailed(AdminError):
    """The server could not be reached, TLS failed, or the session never started."""

    exit_code = 3


class AuthFailed(ConnectionFailed):
    """The server refused the JID/password."""


class AgentError(AdminError):
    """An error reply (from the agent, or from the server on its behalf)."""

    exit_code = 1

    def __init__(self, iq=None, *, text: str | None = None, code: int | None = None, condition: str = ""):
        self.code = code
        self.condition = condition
        self.namespaces: list[str] = []
        self.text = text or ""
        if iq is not None:
            err = iq.xml.find("{jabber:client}error")
            if err is not None:
                self.code = int(err.get("code")) if (err.get("code") or "").lstrip("-").isdigit() else None
                self.namespaces = [child.tag[1:].split("}")[0] for child in err if child.tag.startswith("{")]
                node = err.find(f"{{{STANZA_NS}}}text")
                raw = node.text if node is not None and node.text else ""
                # Archipel appends "\n\n<namespace>\n<action>" to the message.
                self.text = raw.split("\n\n", 1)[0].strip()
            self.condition = iq["error"]["condition"] or ""
        if not self.text:
            self.text = self.condition or "error reply without text"
        super().__init__(self.text)

    @property
    def is_permission_error(self) -> bool:
        return "archipel:error:permission" in self.namespaces

    def as_dict(self) -> dict:
        return {"code": self.code, "condition": self.condition, "text": self.text,
                "permission": self.is_permission_error}


class AdminClient:
    def __init__(self, jid: str, password: str, *, host: str, port: int = 5222,
                 ca_file: str | Path | None = None, resource: str = "archipel-admin",
                 timeout: float = 20.0):
        self.jid = jid
        self.host = host
        self.port = port
        self.timeout = timeout
        xmpp = slixmpp.ClientXMPP(f"{jid}/{resource}", password)
        for plugin in ("xep_0030", "xep_0199"):
            xmpp.register_plugin(plugin)
        xmpp.enable_direct_tls = False
        xmpp.enable_starttls = True
        xmpp.enable_plaintext = True
        loopback = is_loopback(host)
        # Without TLS a password may only go to this very machine.
        xmpp.plugin["feature_mechanisms"].unencrypted_plain = loopback
        xmpp.plugin["feature_mechanisms"].unencrypted_scram = loopback
        if ca_file:
            xmpp.ca_certs = Path(ca_file)
        self.xmpp = xmpp
        self._session: asyncio.Future | None = None
        for event, handler in (
            ("session_start", self._on_session),
            ("failed_all_auth", self._on_auth_failed),
            ("connection_failed", self._on_connection_failed),
            ("ssl_invalid_chain", self._on_bad_certificate),
            ("ssl_invalid_cert", self._on_bad_certificate),
            ("disconnected", self._on_disconnected),
        ):
            xmpp.add_event_handler(event, handler)

    # ---------------------------------------------------------------- session
    def _fail(self, error: Exception) -> None:
        if self._session is not None and not self._session.done():
            self._session.set_exception(error)

    def _on_session(self, _event) -> None:
        if self._session is not None and not self._session.done():
            self._session.set_result(True)

    def _on_auth_failed(self, _event) -> None:
        self._fail(AuthFailed(f"{self.jid}: authentication failed (wrong JID or password, "
                              "or no mechanism allowed on this stream)"))

    def _on_connection_failed(self, error) -> None:
        self._fail(ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {error}"))

    def _on_bad_certificate(self, error) -> None:
        self._fail(ConnectionFailed(f"TLS: the certificate of {self.host} is not trusted "
                                    f"(give the right --ca-file): {error}"))

    def _on_disconnected(self, reason) -> None:
        self._fail(ConnectionFailed(f"{self.host}:{self.port} closed the stream before the session "
                                    f"started{': ' + str(reason) if reason else ''}"))

    async def connect(self) -> "AdminClient":
        loop = asyncio.get_running_loop()
        self._session = loop.create_future()
        self.xmpp.connect(self.host, self.port)
        try:
            await asyncio.wait_for(asyncio.shield(self._session), self.timeout)
        except asyncio.TimeoutError:
            self.xmpp.abort()
            raise ConnectionFailed(f"no XMPP session with {self.host}:{self.port} after {self.timeout:g} s") from None
        except ConnectionFailed:
            self.xmpp.cancel_connection_attempt()
            self.xmpp.abort()
            raise
        return self

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=0.5), 5)
        except Exception:  # noqa: BLE001 - best effort
            self.xmpp.abort()

    async def __aenter__(self) -> "AdminClient":
        return await self.connect()

    async def __aexit__(self, *_exc) -> None:
        await self.close()

    # --------------------------------------------------------------- requests
    async def acp(self, to: str, namespace: str, action: str, attrs: dict | None = None,
                  children: Iterable[ET.Element] = (), *, iq_type: str = "get") -> ET.Element:
        """Send ``<query xmlns=NS><archipel action=…/></query>``; return the reply's ``<query>``."""
        iq = self.xmpp.make_iq_get(ito=to) if iq_type == "get" else self.xmpp.make_iq_set(ito=to)
        query = ET.Element(f"{{{namespace}}}query")
        archipel = ET.SubElement(query, f"{{{namespace}}}archipel", {"action": action})
        for key, value in (attrs or {}).items():
            if value is not None:
                archipel.set(key, str(value))
        for child in children:
            archipel.append(child)
        iq.append(query)
        try:
            reply = await iq.send(timeout=self.timeout)
        except IqError as exc:
            raise AgentError(exc.iq) from None
        except IqTimeout:
            raise AgentError(text=f"no answer from {to} after {self.timeout:g} s", condition="timeout") from None
        found = reply.xml.find(f"{{{namespace}}}query")
        return found if found is not None else ET.Element(f"{{{namespace}}}query")

    async def ping(self, to: str) -> float:
        """XEP-0199 round trip to ``to`` in seconds."""
        try:
            return await self.xmpp.plugin["xep_0199"].ping(jid=to, timeout=self.timeout)
        except IqError as exc:
            raise AgentError(exc.iq) from None
        except IqTimeout:
            raise AgentError(text=f"no answer from {to} after {self.timeout:g} s", condition="timeout") from None
