"""One-time, short-lived console tokens, kept in the agent's memory only.

A token is a bearer secret: whoever presents it gets the console of one VM,
once, before it expires.  So it is bound to the VM (a token is refused at any
other VM's URL) and to the user it was issued to (recorded for the proxy's
log and its permission re-check), spent by its first presentation whatever the
outcome, and forgotten at expiry.  Nothing is written to disk: an agent restart
voids every token, which costs a user one more click.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable

MAX_OUTSTANDING = 4096      # unspent, unexpired tokens across the agent
MAX_PER_USER = 32           # … per user: a loop asking `display` cannot fill the memory


class TokenRefused(Exception):
    """A token that opens nothing; ``reason`` is short enough for a WebSocket close frame."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    user: str       # bare JID the token was issued to
    vm: str         # the VM's uuid
    expires: float  # on the store's clock


class TokenStore:
    """Issue, consume, expire.  ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(self, lifetime: float, *, clock: Callable[[], float] = time.monotonic):
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.lifetime = lifetime
        self._clock = clock
        self._grants: dict[str, Grant] = {}
        # spent tokens and expired grants are remembered one more lifetime, so a
        # refusal says "already used" or "expired" rather than "unknown"
        self._spent: dict[str, float] = {}  # token -> when it is forgotten

    def __len__(self) -> int:
        """Tokens that would still open a console."""
        now = self._clock()
        return sum(1 for g in self._grants.values() if g.expires > now)

    def issue(self, user: str, vm: str) -> tuple[str, Grant]:
        """A new token for ``user`` on ``vm``; ``OverflowError`` past the bounds."""
        now = self._clock()
        self._expire(now)
        live = [g for g in self._grants.values() if g.expires > now]
        if len(live) >= MAX_OUTSTANDING:
            raise OverflowError("too many console tokens outstanding on this hypervisor")
        if sum(1 for g in live if g.user == user) >= MAX_PER_USER:
            raise OverflowError(f"{user} holds {MAX_PER_USER} unused console tokens already")
        token = secrets.token_urlsafe(32)
        grant = Grant(user=user, vm=vm, expires=now + self.lifetime)
        self._grants[token] = grant
        return token, grant

    def consume(self, token: str | None, vm: str) -> Grant:
        """Spend ``token`` at ``vm``'s URL: the grant, or :class:`TokenRefused` saying why.

        A token presented at the wrong VM is spent too: a guessed or leaked
        token gets one try, never a search over the VMs.
        """
        now = self._clock()
        self._expire(now)
        if not token:
            raise TokenRefused("no console token")
        grant = self._grants.pop(token, None)
        if grant is None:
            if token in self._spent:
                raise TokenRefused("console token already used")
            raise TokenRefused("unknown console token (or expired long ago)")
        self._spent[token] = grant.expires + self.lifetime
        if grant.expires <= now:
            raise TokenRefused("console token expired")
        if grant.vm != vm:
            raise TokenRefused("console token is for another VM")
        return grant

    def _expire(self, now: float) -> None:
        for token in [t for t, g in self._grants.items() if g.expires + self.lifetime <= now]:
            del self._grants[token]
        for token in [t for t, until in self._spent.items() if until <= now]:
            del self._spent[token]
