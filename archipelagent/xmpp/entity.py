"""The base of every Jabber entity the agent runs (hypervisor, and later VMs).

One slixmpp client per entity, all on the agent's single event loop.  The
entity owns its connection life: TLS policy, account provisioning, reconnect
with jittered exponential backoff, and — after every (re)connection — the
state that must be re-announced: presence, vCard, pubsub events node.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

from ..backoff import Backoff
from ..config import is_loopback
from ..jids import bare_jid
from .limits import GuardedClientXMPP
from .provisioning import HttpApiProvisioner, ProvisioningError
from .tls import client_ssl_context
from .published import digest
from .pubsub import EventsNode

if TYPE_CHECKING:  # pragma: no cover
    from ..agent import Agent

log = logging.getLogger(__name__)

# How long a subscription request waits for the session's set-up before being answered.
SUBSCRIBE_ANSWER_WAIT = 30
# Bumped when _publish_vcard lays the fields out differently: the next start publishes again.
VCARD_LAYOUT = 1
PLUGINS = ("xep_0004", "xep_0030", "xep_0050", "xep_0054", "xep_0060", "xep_0077", "xep_0092", "xep_0199")


class Entity:
    """An XMPP identity of the agent; subclasses say what it is and serves."""

    kind = "entity"
    migrating = False  # a VM entity sets it while it moves (commands answer -43, commands/dispatch.py)
    role = "entity"  # vCard ROLE
    # Fetch the roster at each session (the hypervisor reads its peers group there); a VM
    # entity never reads it, and 1,000 of them logging in save 1,000 requests.
    needs_roster = True
    # Each login's log line: a hypervisor's matter; 1,000 VMs log one summary line (hypervisor/vms.py).
    login_log_level = logging.INFO

    def __init__(self, agent: "Agent", jid: str, password: str, *, name: str, resource: str):
        self.agent = agent
        self.jid = bare_jid(jid)
        self.name = name
        self.resource = resource
        self._password = password
        self.presence_show = ""
        self.presence_status = "Initializing..."
        self.online = asyncio.Event()  # set-up done, presence sent: serving
        self.logged_in = asyncio.Event()  # authenticated and bound (set-up may still run)
        self.sessions = 0  # sessions started: more than one means reconnections (metrics.py)
        self._stopping = False
        self._reconnect_handle: asyncio.TimerHandle | None = None
        self._auth_rejected = False
        self._provision_attempted = False
        self._reconnect_now = False
        self._stream_closed = asyncio.Event()
        cfg = agent.config.xmpp
        self._backoff = Backoff(cfg.reconnect_min_delay, cfg.reconnect_max_delay)
        self.xmpp = self._make_client()
        self._install_transports()
        self.events = EventsNode(self.xmpp, agent.config.pubsub_server, self.jid, agent.published)

    # ------------------------------------------------------------------ setup
    def _make_client(self) -> slixmpp.ClientXMPP:
        cfg = self.agent.config.xmpp
        # Guarded: stanzas bounded in depth/size, every IQ answered (limits.py).
        xmpp = GuardedClientXMPP(f"{self.jid}/{self.resource}", self._password,
                                ssl_context=client_ssl_context(cfg.verify_certificate, cfg.ca_file and str(cfg.ca_file)))
        for plugin in PLUGINS:
            xmpp.register_plugin(plugin)
        xmpp.plugin["xep_0199"].enable_keepalive(interval=30, timeout=15)
        xmpp.plugin["xep_0092"].software_name = "archipel-agent"
        xmpp.enable_direct_tls = False
        plaintext_ok = cfg.tls != "required" and is_loopback(cfg.host)
        xmpp.enable_starttls = cfg.tls != "never"
        xmpp.enable_plaintext = True
        # Without TLS, only a loopback server may see a password.
        xmpp.plugin["feature_mechanisms"].unencrypted_plain = plaintext_ok
        xmpp.plugin["feature_mechanisms"].unencrypted_scram = plaintext_ok
        xmpp.auto_authorize = None  # subscriptions are decided by permission
        xmpp.auto_subscribe = False
        xmpp.plugin["xep_0030"].add_identity(category="client", itype="bot", name=self.name)
        for namespace in self.agent.registry.namespaces(self.kind):
            xmpp.plugin["xep_0030"].add_feature(namespace)
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("disconnected", self._on_disconnected)
        xmpp.add_event_handler("connection_failed", self._on_connection_failed)
        xmpp.add_event_handler("failed_auth", self._on_failed_auth)
        xmpp.add_event_handler("failed_all_auth", self._on_failed_all_auth)
        xmpp.add_event_handler("presence_subscribe", self._on_subscribe)
        xmpp.add_event_handler("ssl_invalid_cert", self._on_invalid_cert)
        return xmpp

    def _install_transports(self) -> None:
        """The command transports the agent's wiring chose (IQ, chat, ad-hoc): the XMPP layer
        does not know the command layer above it."""
        for transport in self.agent.transports:
            transport(self).install()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._stopping = False
        self._schedule_connect(0)

    async def stop(self, status: str = "Agent stopping") -> None:
        """Say goodbye (``status``) and close the stream; no reconnection afterwards."""
        self._stopping = True
        self.agent.login_gate.cancel(self)
        if self._reconnect_handle:
            self._reconnect_handle.cancel()
        self.xmpp.cancel_connection_attempt()
        if self.online.is_set():
            self.xmpp.send_presence(ptype="unavailable", pstatus=status)
            try:
                await asyncio.wait_for(self.xmpp.disconnect(wait=1.0), 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - best effort on the way out
                self.xmpp.abort()
        else:
            self.xmpp.abort()
        self.online.clear()
        self.logged_in.clear()

    def _schedule_connect(self, delay: float) -> None:
        if self._stopping:
            return
        if self._reconnect_handle:
            self._reconnect_handle.cancel()
        loop = asyncio.get_running_loop()
        self._reconnect_handle = loop.call_later(delay, self._connect)
        if delay:
            log.info("%s: reconnecting in %.1f s", self.jid, delay)

    def _connect(self) -> None:
        """The backoff's delay is over: queue for the agent's login rate (xmpp/ratelimit.py)."""
        self._reconnect_handle = None
        if not self._stopping:
            self.agent.login_gate.request(self, self._attempt)

    def _attempt(self) -> None:
        if self._stopping:
            return
        if self._stream_busy():
            return  # a stale timer; the live stream or attempt wins
        cfg = self.agent.config.xmpp
        self._auth_rejected = False
        self.xmpp.connect(cfg.host, cfg.port)

    def _stream_busy(self) -> bool:
        """True while a stream is up or being set up (late events of an old stream must not start a second one)."""
        attempt = getattr(self.xmpp, "_current_connection_attempt", None)
        return self.xmpp.transport is not None or (attempt is not None and not attempt.done())

    def _on_connection_failed(self, error) -> None:
        # slixmpp would retry on its own schedule; ours is jittered and bounded.
        log.warning("%s: connection to %s:%s failed: %s", self.jid, self.agent.config.xmpp.host, self.agent.config.xmpp.port, error)
        self.xmpp.cancel_connection_attempt()
        self._schedule_connect(self._backoff.next())

    def _on_disconnected(self, reason) -> None:
        was_online = self.online.is_set()
        self.online.clear()
        self.logged_in.clear()
        self.events.ready = False
        self._stream_closed.set()
        if self._stopping:
            return
        if was_online:
            log.warning("%s: disconnected (%s)", self.jid, reason)
        if self._reconnect_now:
            self._reconnect_now = False
            self._schedule_connect(0)
        else:
            self._schedule_connect(self._backoff.next())

    def _on_invalid_cert(self, error) -> None:
        log.error("%s: server certificate rejected: %s", self.jid, error)

    # ------------------------------------------------------------ accounts
    def _on_failed_auth(self, _stanza) -> None:
        self._auth_rejected = True

    async def _on_failed_all_auth(self, _event) -> None:
        cfg = self.agent.config.xmpp
        if not self._auth_rejected:
            log.error("%s: no usable authentication method (is TLS required but not offered?)", self.jid)
        elif cfg.account_provisioning == "none" or self._provision_attempted:
            log.error("%s: authentication refused (wrong password or missing account)", self.jid)
        else:
            self._provision_attempted = True
            log.info("%s: password refused; creating the account (%s)", self.jid, cfg.account_provisioning)
            try:
                await self._provision()
            except ProvisioningError as exc:
                log.error("%s: cannot create the account: %s", self.jid, exc)
            else:
                self.agent.published.forget(self.jid)  # a new account holds no vCard, no node of ours
                self._reconnect_now = True
                self.xmpp.abort()
                self._schedule_connect(0)
                return
        self.xmpp.abort()

    async def _provision(self) -> None:
        cfg = self.agent.config.xmpp
        user, host = self.jid.split("@", 1)
        if cfg.account_provisioning == "http_api":
            await HttpApiProvisioner(cfg.http_api_url).register(user, host, self._password)
            return
        # IBR: register on the next stream, before SASL.
        self.xmpp.plugin["xep_0077"].force_registration = True
        self.xmpp.add_event_handler("register", self._on_register)

    async def _on_register(self, _form) -> None:
        self.xmpp.del_event_handler("register", self._on_register)
        self.xmpp.plugin["xep_0077"].force_registration = False
        iq = self.xmpp.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.xmpp.boundjid.user
        iq["register"]["password"] = self._password
        try:
            await iq.send(timeout=10)
            log.info("%s: account created by in-band registration", self.jid)
        except IqError as exc:
            log.error("%s: in-band registration refused: %s %s", self.jid, exc.condition, exc.text)
        except IqTimeout:
            log.error("%s: in-band registration timed out", self.jid)

    async def remove_account(self, timeout: float = 10, status: str = "Removed") -> None:
        """Delete this entity's account (XEP-0077 <remove/> or the HTTP API); no reconnection after.

        An ``unavailable`` presence (with ``status``) goes first: ejabberd's
        removal tells no subscriber, whose roster would keep the entity online.
        ejabberd closes the stream of a removed account, often before the IQ
        result arrives: the stream closing counts as success.
        """
        self._stopping = True
        self.agent.login_gate.cancel(self)
        if self._reconnect_handle:
            self._reconnect_handle.cancel()
        if self.online.is_set():
            self.xmpp.send_presence(ptype="unavailable", pstatus=status)
        self.agent.published.forget(self.jid)
        cfg = self.agent.config.xmpp
        user, host = self.jid.split("@", 1)
        if cfg.account_provisioning == "http_api":
            await HttpApiProvisioner(cfg.http_api_url).unregister(user, host)
            return
        if not self.online.is_set():
            raise ProvisioningError(f"{self.jid} is offline: its account cannot be removed in-band")
        self._stream_closed.clear()
        reply = asyncio.ensure_future(self.xmpp.plugin["xep_0077"].cancel_registration(timeout=timeout))
        closed = asyncio.ensure_future(self._stream_closed.wait())
        done, pending = await asyncio.wait({reply, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            future.cancel()
        if not done:
            raise ProvisioningError(f"{self.jid}: no answer to the account removal")
        if reply in done and reply.exception() is not None:
            raise ProvisioningError(f"{self.jid}: account removal refused: {reply.exception()}")

    # ------------------------------------------------------------- session
    async def _on_session_start(self, _event) -> None:
        self.sessions += 1
        if self._reconnect_handle:
            self._reconnect_handle.cancel()
            self._reconnect_handle = None
        self._backoff.reset()
        self._provision_attempted = False
        log.log(self.login_log_level, "%s: online as %s", self.jid, self.xmpp.boundjid.full)
        self.logged_in.set()
        # The events node exists before anyone is told the entity is here: a client
        # subscribes to it as soon as it sees the presence (or the ``subscribed``
        # answer, which _on_subscribe holds back until then).  The set-up requests
        # are independent: in flight together, one wait instead of four.  The first
        # presence already carries the current status (one presence, not two).  What
        # the server still holds from an earlier session is not sent again (published.py).
        await asyncio.gather(self._fetch_roster(), self._publish_vcard(only_if_changed=True),
                             self.events.ensure(), self._prepare_presence())
        self.send_presence()
        self.online.set()
        await self.on_online()

    async def _prepare_presence(self) -> None:
        try:
            await self.before_presence()
        except Exception:  # noqa: BLE001 - a status that cannot be read is no reason to stay offline
            log.exception("%s: reading the status before the first presence failed", self.jid)

    async def before_presence(self) -> None:
        """Hook for subclasses: bring the status up to date before the session's first presence."""

    async def _fetch_roster(self) -> None:
        if not self.needs_roster:
            return
        try:
            await self.xmpp.get_roster(timeout=10)
        except (IqError, IqTimeout) as exc:
            log.warning("%s: roster fetch failed: %s", self.jid, exc)

    async def on_online(self) -> None:
        """Hook for subclasses: runs after every (re)connection."""

    def vcard_fields(self) -> dict[str, str]:
        fields = {"FN": self.name, "ROLE": self.role}
        fields.update({k: v for k, v in self.agent.config.vcard.items() if v})
        return fields

    async def _publish_vcard(self, only_if_changed: bool = False) -> None:
        fields = self.vcard_fields()
        fingerprint = digest([VCARD_LAYOUT, fields])
        if only_if_changed and self.agent.published.matches(self.jid, "vcard", fingerprint):
            return
        plugin = self.xmpp.plugin["xep_0054"]
        vcard = plugin.make_vcard()
        for key, value in fields.items():
            upper = key.upper()
            if upper in ("ORGNAME", "ORGUNIT"):
                vcard["ORG"][upper] = value
            elif upper in ("FN", "ROLE", "TITLE", "USERID", "URL"):
                vcard[upper] = value
            elif upper == "LOCALITY":
                vcard["ADR"]["LOCALITY"] = value
            elif upper == "CATEGORIES":
                vcard["CATEGORIES"]["CATEGORIES"] = [c.strip() for c in value.split(",") if c.strip()]
        try:
            await plugin.publish_vcard(vcard, timeout=10)
        except (IqError, IqTimeout) as exc:
            log.warning("%s: vCard publish failed: %s", self.jid, exc)
        else:
            self.agent.published.remember(self.jid, "vcard", fingerprint)

    # ------------------------------------------------------------ presence
    def set_presence(self, status: str, show: str = "") -> None:
        """Show ``status``; an unchanged presence is not sent again (the server still holds it, and
        a reconciliation of 1,000 VMs would send 1,000 presences to every subscriber for nothing)."""
        changed = (status, show) != (self.presence_status, self.presence_show)
        self.presence_status, self.presence_show = status, show
        if changed and self.online.is_set():
            self.send_presence()

    def send_presence(self) -> None:
        presence = self.xmpp.make_presence(pshow=self.presence_show or None, pstatus=self.presence_status, ppriority=10)
        presence.xml.append(slixmpp.xmlstream.ET.Element("{vcard-temp:x:update}x"))
        presence.send()

    async def _on_subscribe(self, presence) -> None:
        """Accept a subscription only from someone holding ``presence``."""
        sender = bare_jid(presence["from"])
        try:  # answered once the session is set up, events node included (_on_session_start)
            await asyncio.wait_for(self.online.wait(), SUBSCRIBE_ANSWER_WAIT)
        except asyncio.TimeoutError:
            return  # still setting up or gone: the server delivers the request again at next login
        # the wiring's policy (permissions/subscriptions.py): checks ``presence`` and audits the decision
        allowed = await self.agent.subscription_policy(self, sender)
        if allowed is None:
            return  # left pending (LDAP unreachable): decided when it is sent again
        if allowed:
            self.xmpp.send_presence(pto=sender, ptype="subscribed")
            self.xmpp.send_presence(pto=sender, ptype="subscribe")
        else:
            log.info("%s: refused subscription from %s", self.jid, sender)
            self.xmpp.send_presence(pto=sender, ptype="unsubscribed")

    async def push(self, namespace: str, change: str, children=()) -> bool:
        return await self.events.publish(namespace, change, children)
