"""A bound on the agent's login rate: at most R connection attempts per second.

After an ejabberd restart every entity of the agent reconnects.  The jittered
backoff (backoff.py) spreads the attempts over a window, but the window's
width does not depend on how many entities there are: with 1,000 entities the
server still sees a storm.  ``LoginGate`` bounds the rate itself, across all
the agent's entities: attempts wait in a FIFO and are released one every 1/R
seconds (a token bucket of capacity 1), on the event loop, by timers — no
thread, no sleep.  So in any one-second window at most R + 1 attempts start.

``TokenBucket`` is pure (clock injectable) so the pacing is tested without
waiting; ``LoginGate`` takes ``call_later`` for the same reason.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable, Hashable

log = logging.getLogger(__name__)

__all__ = ["LoginGate", "TokenBucket"]

_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    def take(self) -> float:
        """Take a token: 0.0 when one was taken, else the seconds until one is due (none taken)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1 - _EPSILON:  # float sums of refills land a hair below 1
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return (1 - self._tokens) / self.rate


class LoginGate:
    """Connection attempts of many entities, released at most ``rate`` per second (0: at once).

    One pending attempt per key (an entity asking twice keeps its place);
    ``cancel(key)`` withdraws it (the entity stops).
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 call_later: Callable[[float, Callable[[], None]], object] | None = None):
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate!r}")
        self.rate = rate
        self._bucket = TokenBucket(rate, 1.0, clock) if rate else None
        self._call_later = call_later
        self._pending: collections.OrderedDict[Hashable, Callable[[], None]] = collections.OrderedDict()
        self._timer = None

    def __len__(self) -> int:
        return len(self._pending)

    def request(self, key: Hashable, attempt: Callable[[], None]) -> None:
        """Run ``attempt`` now if the rate allows it, else when its turn comes."""
        if self._bucket is None:
            attempt()
            return
        self._pending[key] = attempt  # an existing key keeps its place in the queue
        if self._timer is None:  # else the timer drains the queue when a token is due
            self._drain()

    def cancel(self, key: Hashable) -> None:
        self._pending.pop(key, None)

    def _drain(self) -> None:
        self._timer = None
        while self._pending:
            wait = self._bucket.take()
            if wait > 0:
                self._schedule(wait)
                return
            _key, attempt = self._pending.popitem(last=False)
            try:
                attempt()
            except Exception:  # noqa: BLE001 - one entity's failure must not stall the others
                log.exception("a connection attempt failed to start")

    def _schedule(self, delay: float) -> None:
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer = call_later(delay, self._drain)
