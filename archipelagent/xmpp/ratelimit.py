"""A bound on the agent's login rate: at most R connection attempts in any one second.

After an ejabberd restart every entity of the agent reconnects.  The jittered
backoff (backoff.py) spreads the attempts over a window, but the window's
width does not depend on how many entities there are: with 1,000 entities the
server still sees a storm.  ``LoginGate`` bounds the rate itself, across all
the agent's entities: attempts wait in a FIFO and are released on the event
loop, by timers — no thread, no sleep — under two rules:

* a token bucket paces them one every 1/R seconds, and saves up to R/10 tokens
  (``catch_up`` = 0.1 s of them): when the loop comes back late to the gate,
  busy with the streams already up, the attempts that were due go together
  instead of being lost.  With a bucket of one token each late return of the
  loop released one attempt and lost the tokens due meanwhile (measured: 1,000
  entities made their attempts at ~135/s against a gate of 200/s);
* a sliding window of the last ceil(R) release times: an attempt starts only if
  fewer than ceil(R) started within the last second.  So the catching up never
  makes more than R in any one-second window, aligned or not.

``TokenBucket`` is pure (clock injectable) so the pacing is tested without
waiting; ``LoginGate`` takes ``clock`` and ``call_later`` for the same reason.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from typing import Callable, Hashable

log = logging.getLogger(__name__)

__all__ = ["LoginGate", "TokenBucket"]

_EPSILON = 1e-9
# Seconds of tokens the gate saves up for a loop that comes back late (module docstring).
CATCH_UP = 0.1


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

    def __init__(self, rate: float, *, catch_up: float = CATCH_UP, clock: Callable[[], float] = time.monotonic,
                 call_later: Callable[[float, Callable[[], None]], object] | None = None):
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate!r}")
        self.rate = rate
        self._clock = clock
        self._bucket = TokenBucket(rate, max(1.0, rate * catch_up), clock) if rate else None
        # When the last ceil(rate) attempts started: the one-second window's bound.
        self._window: collections.deque[float] = collections.deque(maxlen=max(1, math.ceil(rate)))
        self._call_later = call_later
        self._pending: collections.OrderedDict[Hashable, Callable[[], None]] = collections.OrderedDict()
        self._timer = None
        # What an operator sees (metrics.py): attempts started, and the most within one second.
        self.started = 0
        self.peak = 0
        self._last_second: collections.deque[float] = collections.deque()

    def __len__(self) -> int:
        return len(self._pending)

    def request(self, key: Hashable, attempt: Callable[[], None]) -> None:
        """Run ``attempt`` now if the rate allows it, else when its turn comes."""
        if self._bucket is None:
            self._count()
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
            wait = self._window_wait()
            if wait <= 0:
                wait = self._bucket.take()
            if wait > 0:
                self._schedule(wait)
                return
            self._window.append(self._count())
            _key, attempt = self._pending.popitem(last=False)
            try:
                attempt()
            except Exception:  # noqa: BLE001 - one entity's failure must not stall the others
                log.exception("a connection attempt failed to start")

    def _count(self) -> float:
        """Count an attempt starting now (``started``, ``peak``); returns now."""
        now = self._clock()
        self.started += 1
        self._last_second.append(now)
        while self._last_second[0] <= now - 1.0:
            self._last_second.popleft()
        self.peak = max(self.peak, len(self._last_second))
        return now

    def _window_wait(self) -> float:
        """Seconds until the oldest of the last ceil(rate) attempts is a second old (0: go)."""
        if len(self._window) < self._window.maxlen:
            return 0.0
        wait = self._window[0] + 1.0 - self._clock()
        return wait if wait > _EPSILON else 0.0

    def _schedule(self, delay: float) -> None:
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer = call_later(delay, self._drain)
