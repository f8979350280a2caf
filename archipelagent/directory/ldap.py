"""LDAP directory access: a JID's person and the groups they belong to.

ejabberd authenticates people against LDAP; the agent only needs to know, for
a JID ``<uid>@<xmpp_server>``, the LDAP entry and its group cn's (for grants to
groups and for admin groups).  ldap3's calls block, so they run in a single
dedicated worker thread, never on the event loop; the connection is reused and
re-opened after a failure.  Answers (found or not found) are cached for
``ldap_cache_ttl`` seconds; an unreachable server is never cached as "no
groups": it raises :class:`DirectoryUnavailable`, so that a decision that needs
LDAP is refused instead of being silently decided without it.

Every value put in a filter goes through ``escape_filter_chars``: a JID node
such as ``*)(uid=*`` is looked up literally and finds nobody.
"""
from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from ..config import LdapConfig
from ..errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_NODE_LENGTH = 256
# After a failure, fail fast for this long instead of queueing timeouts.
FAIL_FAST_SECONDS = 1.0
# LDAP result codes we interpret.
_SUCCESS, _SIZE_LIMIT, _NO_SUCH_OBJECT = 0, 4, 32


class DirectoryUnavailable(Unavailable):
    """The LDAP server cannot be reached (or refuses the agent's bind)."""

    def __init__(self, detail: str = ""):
        message = "LDAP is unreachable"
        if detail:
            message += f" ({detail})"
        message += ": decisions that depend on LDAP groups are refused until it is back"
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class DirectoryUser:
    uid: str
    dn: str
    name: str
    mail: str
    groups: frozenset[str]  # group cn's, lowercased


def _first(entry_attributes: dict[str, Any], name: str) -> str:
    value = entry_attributes.get(name)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return "" if value is None else str(value)


class Directory:
    """Resolves JIDs of ``domain`` to LDAP users, with a TTL cache (positive and negative)."""

    def __init__(self, config: LdapConfig, domain: str, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.domain = domain.lower()
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldap")
        self._connection: ldap3.Connection | None = None  # only touched in the worker thread
        self._cache: dict[str, tuple[float, DirectoryUser | None]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._down_until = 0.0
        self._down_detail = ""
        self._closed = False

    def __repr__(self) -> str:  # the config's repr hides the password already
        return f"<Directory {self.config.uri} base={self.config.base_dn!r}>"

    # ----------------------------------------------------------------- API
    def uid_of(self, jid: str) -> str | None:
        """The uid a JID stands for, or None when it is not a person of our domain or of
        a federated one (``ldap_federated_domains``: the same people on a campus server)."""
        text = str(jid).strip().split("/", 1)[0].lower()
        node, at, domain = text.rpartition("@")
        if not at or not node or len(node) > MAX_NODE_LENGTH:
            return None
        if domain != self.domain and domain not in self.config.federated_domains:
            return None
        return node

    async def resolve(self, jid: str) -> DirectoryUser | None:
        """The LDAP user behind ``jid`` (None: not ours, or no such person)."""
        uid = self.uid_of(jid)
        if uid is None:
            return None
        now = self._clock()
        cached = self._cache.get(uid)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._inflight.get(uid)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._inflight[uid] = future
        try:
            user = await self._run(self._lookup, uid)
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
                    future.exception()  # retrieved: no "never retrieved" warning for lone callers
            raise
        else:
            if self.config.cache_ttl > 0:
                self._cache[uid] = (self._clock() + self.config.cache_ttl, user)
            future.set_result(user)
            return user
        finally:
            self._inflight.pop(uid, None)

    async def groups(self, jid: str) -> frozenset[str]:
        user = await self.resolve(jid)
        return user.groups if user else frozenset()

    async def ping(self) -> bool:
        """True when the server answers a base search with the agent's bind."""
        try:
            await self._run(self._ping)
            return True
        except DirectoryUnavailable:
            return False

    def invalidate(self, jid: str | None = None) -> None:
        """Forget cached answers (one JID's, or all)."""
        if jid is None:
            self._cache.clear()
        else:
            uid = self.uid_of(jid)
            if uid is not None:
                self._cache.pop(uid, None)

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._executor, self._drop), 2)
        except (asyncio.TimeoutError, RuntimeError):
            pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------- loop <-> worker
    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise DirectoryUnavailable("the directory is closed")
        if self._clock() < self._down_until:
            raise DirectoryUnavailable(self._down_detail)
        loop = asyncio.get_running_loop()
        # Connect + bind + two searches, each bounded by the timeout, plus slack.
        bound = self.config.timeout * 4 + 1
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor, function, *args), bound)
        except asyncio.TimeoutError:
            self._mark_down(f"{self.config.uri}: no answer within {bound:g} s")
            raise DirectoryUnavailable(self._down_detail) from None
        except DirectoryUnavailable as exc:
            self._mark_down(exc.detail)
            raise

    def _mark_down(self, detail: str) -> None:
        if self._clock() >= self._down_until:
            log.warning("LDAP is unreachable: %s", detail)
        self._down_detail = detail
        self._down_until = self._clock() + min(FAIL_FAST_SECONDS, self.config.timeout)

    # ------------------------------------------------ worker thread only
    def _server(self) -> ldap3.Server:
        tls = None
        if self.config.uri.lower().startswith("ldaps://"):
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED,
                            ca_certs_file=str(self.config.ca_file) if self.config.ca_file else None)
        return ldap3.Server(self.config.uri, get_info=ldap3.NONE, tls=tls,
                            connect_timeout=self.config.timeout)

    def _connect(self) -> ldap3.Connection:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        self._drop()
        cfg = self.config
        connection = ldap3.Connection(
            self._server(), user=cfg.bind_dn or None, password=cfg.bind_password or None,
            auto_bind=ldap3.AUTO_BIND_NONE, read_only=True, raise_exceptions=False,
            # ldap3 packs this into SO_RCVTIMEO: whole seconds only.
            receive_timeout=max(1, math.ceil(cfg.timeout)), check_names=False,
        )
        connection.open()
        if not connection.bind():
            description = connection.result.get("description", "refused") if connection.result else "refused"
            try:
                connection.unbind()
            except LDAPException:
                pass
            raise DirectoryUnavailable(f"{cfg.uri}: the agent's bind was refused ({description})")
        self._connection = connection
        return connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.unbind()
            except Exception:  # noqa: BLE001 - the socket may be long gone
                pass

    def _with_connection(self, operation: Callable[[ldap3.Connection], T]) -> T:
        """Run ``operation``; on a broken connection reconnect once, then give up."""
        last: Exception | None = None
        for _attempt in range(2):
            try:
                return operation(self._connect())
            except DirectoryUnavailable:
                self._drop()
                raise
            except (LDAPException, OSError) as exc:
                last = exc
                self._drop()
            except Exception as exc:  # noqa: BLE001 - an ldap3 bug must not pass for a verdict
                log.exception("LDAP client error")
                self._drop()
                raise DirectoryUnavailable(f"{self.config.uri}: LDAP client error: {exc}") from None
        reason = str(last) or type(last).__name__
        raise DirectoryUnavailable(f"{self.config.uri}: {reason}")

    def _search(self, connection: ldap3.Connection, base: str, search_filter: str,
                attributes: list[str], size_limit: int = 0) -> list:
        ok = connection.search(base, search_filter, search_scope=ldap3.SUBTREE,
                               attributes=attributes, size_limit=size_limit,
                               time_limit=max(1, int(self.config.timeout)))
        result = connection.result or {}
        code = result.get("result", _SUCCESS if ok else -1)
        if connection.closed:
            raise LDAPException("connection closed by the server")
        if code in (_SUCCESS, _SIZE_LIMIT):
            return [entry for entry in connection.response or [] if entry.get("type") == "searchResEntry"]
        if code == _NO_SUCH_OBJECT:
            return []
        raise DirectoryUnavailable(
            f"{self.config.uri}: search refused ({result.get('description', code)})")

    def _lookup(self, uid: str) -> DirectoryUser | None:
        cfg = self.config

        def operation(connection: ldap3.Connection) -> DirectoryUser | None:
            user_filter = f"(&{cfg.user_filter}({cfg.uid_attribute}={escape_filter_chars(uid)}))"
            entries = self._search(connection, cfg.user_base, user_filter,
                                   [cfg.uid_attribute, "cn", "displayName", "mail"], size_limit=2)
            if not entries:
                return None
            if len(entries) > 1:
                log.warning("LDAP: %d entries for %s=%r under %s: ignoring an ambiguous user",
                            len(entries), cfg.uid_attribute, uid, cfg.user_base)
                return None
            entry = entries[0]
            attributes = entry.get("attributes", {})
            dn = entry["dn"]
            group_filter = (f"(&{cfg.group_filter}"
                            f"({cfg.group_member_attribute}={escape_filter_chars(dn)}))")
            groups: set[str] = set()
            for group in self._search(connection, cfg.group_base, group_filter, ["cn"]):
                names = group.get("attributes", {}).get("cn") or []
                if isinstance(names, str):
                    names = [names]
                groups.update(str(name).lower() for name in names)
            return DirectoryUser(
                uid=_first(attributes, cfg.uid_attribute) or uid,
                dn=dn,
                name=_first(attributes, "displayName") or _first(attributes, "cn"),
                mail=_first(attributes, "mail"),
                groups=frozenset(groups),
            )

        return self._with_connection(operation)

    def _ping(self) -> None:
        def operation(connection: ldap3.Connection) -> None:
            ok = connection.search(self.config.base_dn, "(objectClass=*)",
                                   search_scope=ldap3.BASE, attributes=[],
                                   time_limit=max(1, int(self.config.timeout)))
            if connection.closed:
                raise LDAPException("connection closed by the server")
            if not ok and (connection.result or {}).get("result") not in (_SUCCESS, _NO_SUCH_OBJECT):
                raise DirectoryUnavailable(f"{self.config.uri}: base search refused")

        self._with_connection(operation)
