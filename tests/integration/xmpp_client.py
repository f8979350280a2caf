"""A real XMPP client for the tests: what any Jabber user or Archipel's client would send."""
from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

import slixmpp
from slixmpp.exceptions import IqError

STANZA_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"

# RFC 6120 conditions slixmpp does not know (it would fail to parse the error reply):
# quota refusals use policy-violation.
slixmpp.stanza.Error.conditions = set(slixmpp.stanza.Error.conditions) | {"policy-violation"}


class AcpError(Exception):
    """An error reply, with the pieces tests assert on."""

    def __init__(self, iq):
        self.iq = iq
        err = iq.xml.find("{jabber:client}error")
        self.code = int(err.get("code")) if err is not None and err.get("code") else None
        self.namespaces = [child.tag[1:].split("}")[0] for child in err] if err is not None else []
        text = err.find(f"{{{STANZA_NS}}}text") if err is not None else None
        self.text = text.text if text is not None else ""
        self.condition = iq["error"]["condition"]
        super().__init__(f"code={self.code} ns={self.namespaces} text={self.text!r}")

    @property
    def is_permission_error(self) -> bool:
        return "archipel:error:permission" in self.namespaces


class Client:
    def __init__(self, jid: str, password: str, *, ca_file: Path, host: str, port: int, resource: str = "tests"):
        self.xmpp = slixmpp.ClientXMPP(f"{jid}/{resource}", password)
        for plugin in ("xep_0004", "xep_0030", "xep_0050", "xep_0054", "xep_0060", "xep_0199"):
            self.xmpp.register_plugin(plugin)
        self.xmpp.enable_direct_tls = False
        self.xmpp.enable_starttls = True
        self.xmpp.ca_certs = Path(ca_file)
        self.host, self.port = host, port
        self.jid = jid
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: list = []
        self.pubsub_events: asyncio.Queue = asyncio.Queue()
        self._session: asyncio.Future | None = None
        self._closing = False
        self._reconnecting: asyncio.Task | None = None
        self.ready = asyncio.Event()  # a session is up (tests survive server restarts)
        self.xmpp.add_event_handler("disconnected", self._on_disconnected)
        self.xmpp.add_event_handler("message", self._on_message)
        self.xmpp.add_event_handler("presence", self._on_presence)
        self.xmpp.add_event_handler("session_start", self._on_session)
        self.xmpp.add_event_handler("failed_all_auth", self._on_auth_failed)
        self.xmpp.add_event_handler("pubsub_publish", self.pubsub_events.put_nowait)

    def _on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.messages.put_nowait(msg)

    def _on_disconnected(self, _reason):
        self.ready.clear()
        if not self._closing and (self._reconnecting is None or self._reconnecting.done()):
            self._reconnecting = asyncio.ensure_future(self._reconnect_loop())

    async def _reconnect_loop(self):
        """The rig restarts ejabberd under some tests: log in again by ourselves."""
        while not self._closing and not self.ready.is_set():
            await asyncio.sleep(0.5)
            if self._closing or self.ready.is_set():
                return
            try:
                await self.connect(timeout=10)
            except Exception:  # noqa: BLE001 - server not back yet
                continue

    async def _ensure_ready(self, timeout: float = 60):
        await asyncio.wait_for(self.ready.wait(), timeout)

    def _on_session(self, _event):
        self.ready.set()
        if self._session and not self._session.done():
            self._session.set_result(True)

    def _on_auth_failed(self, _event):
        if self._session and not self._session.done():
            self._session.set_exception(RuntimeError(f"{self.jid}: authentication failed"))

    def _on_presence(self, presence):
        self.presences.append(presence)
        for waiter in list(self._presence_waiters):
            predicate, future = waiter
            if not future.done() and predicate(presence):
                future.set_result(presence)

    _presence_waiters: list = []

    async def wait_presence(self, predicate, timeout: float = 30):
        """The first presence (already seen or future) for which predicate is true."""
        for presence in reversed(self.presences):
            if predicate(presence):
                return presence
        future = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._presence_waiters = [*self._presence_waiters, waiter]
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._presence_waiters = [w for w in self._presence_waiters if w is not waiter]

    async def see(self, entity_jid: str, timeout: float = 15) -> None:
        """Subscribe to an entity's presence (answered ``subscribed`` to holders of ``presence``)."""
        def answer(p):
            return p["from"].bare == entity_jid and p["type"] in ("subscribed", "unsubscribed")

        await self.xmpp.get_roster(timeout=10)
        if entity_jid in self.xmpp.client_roster \
                and self.xmpp.client_roster[entity_jid]["subscription"] in ("to", "both"):
            return  # already subscribed: ejabberd answers a repeated request with nothing
        self.presences = [p for p in self.presences if not answer(p)]
        self.xmpp.send_presence(pto=entity_jid, ptype="subscribe")
        if (await self.wait_presence(answer, timeout))["type"] != "subscribed":
            raise AssertionError(f"{entity_jid} refused the presence subscription of {self.xmpp.boundjid.bare}")

    async def subscribe_events(self, service: str, entity_jid: str, timeout: float = 15) -> None:
        """Subscribe to an entity's events node as Archipel's client does: its presence first
        (the node's access model is ``presence``: only those who see the entity read it)."""
        await self.see(entity_jid, timeout)
        await self.xmpp.plugin["xep_0060"].subscribe(service, f"/archipel/{entity_jid}/events", timeout=10)

    async def connect(self, timeout: float = 20) -> "Client":
        self._session = asyncio.get_running_loop().create_future()
        self.xmpp.connect(self.host, self.port)
        try:
            await asyncio.wait_for(asyncio.shield(self._session), timeout)
        except asyncio.TimeoutError:
            self.xmpp.abort()
            raise RuntimeError(f"{self.jid}: no session after {timeout} s") from None
        self.xmpp.send_presence()
        return self

    async def reconnect(self, timeout: float = 60) -> "Client":
        """After a server restart: wait until the client logged in again by itself."""
        await self._ensure_ready(timeout)
        return self

    async def close(self) -> None:
        self._closing = True
        try:
            await asyncio.wait_for(self.xmpp.disconnect(wait=0.5), 5)
        except Exception:  # noqa: BLE001
            self.xmpp.abort()

    async def acp(self, to: str, namespace: str, action: str | None, attrs: dict | None = None,
                  children: Iterable[ET.Element] = (), *, with_archipel: bool = True, timeout: float = 30) -> ET.Element:
        """Send an ACP; return the reply's <query>, raise AcpError on an error reply."""
        await self._ensure_ready()
        iq = self.xmpp.make_iq_get(ito=to)
        query = ET.Element(f"{{{namespace}}}query")
        if with_archipel:
            archipel = ET.SubElement(query, f"{{{namespace}}}archipel")
            if action is not None:
                archipel.set("action", action)
            for k, v in (attrs or {}).items():
                archipel.set(k, str(v))
            for child in children:
                archipel.append(child)
        iq.append(query)
        try:
            reply = await iq.send(timeout=timeout)
        except IqError as exc:
            raise AcpError(exc.iq) from None
        found = reply.xml.find(f"{{{namespace}}}query")
        assert found is not None, f"result without query: {reply}"
        return found

    async def chat(self, to: str, body: str, timeout: float = 15) -> str:
        await self._ensure_ready()
        while not self.messages.empty():
            self.messages.get_nowait()
        self.xmpp.send_message(mto=to, mbody=body, mtype="chat")
        while True:
            msg = await asyncio.wait_for(self.messages.get(), timeout)
            if msg["from"].bare == slixmpp.JID(to).bare:
                return msg["body"]

    async def pushes(self, node: str, changes, *, namespace: str | None = None, timeout: float = 20,
                     fail_on: str | None = None) -> dict:
        """The first push of each wanted ``change`` on ``node`` (others are consumed).

        ``namespace``: the push's full namespace (``archipel:push:...``);
        ``fail_on``: a change word that means the awaited job failed.
        """
        wanted = set(changes)
        found: dict = {}
        deadline = asyncio.get_running_loop().time() + timeout
        while set(found) != wanted:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                msg = await asyncio.wait_for(self.pubsub_events.get(), max(0.01, remaining))
            except asyncio.TimeoutError:
                raise AssertionError(f"pushes seen on {node}: {sorted(found)}, wanted {sorted(wanted)}") from None
            items = msg["pubsub_event"]["items"]
            payload = items["item"]["payload"]
            if items["node"] != node or payload is None:
                continue
            if namespace and payload.tag != f"{{{namespace}}}push":
                continue
            change = payload.get("change")
            if fail_on and change == fail_on and fail_on not in wanted:
                raise AssertionError(f"job failed: {ET.tostring(payload, encoding='unicode')}")
            if change in wanted:
                found.setdefault(change, payload)
        return found

    async def next_push(self, node: str, change: str, **options) -> ET.Element:
        return (await self.pushes(node, {change}, **options))[change]

    async def ping(self, to: str, timeout: float = 10) -> float:
        await self._ensure_ready()
        return await self.xmpp.plugin["xep_0199"].ping(jid=to, timeout=timeout)
