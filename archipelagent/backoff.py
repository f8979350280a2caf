"""Jittered exponential backoff for reconnect loops (libvirt, XMPP).

Strategy: **full jitter with a floor**.  For the n-th consecutive failure
(n = 0, 1, 2, ...) the ceiling is ``min(max_delay, min_delay * 2 ** (n + 1))``
and the delay is drawn uniformly from ``[min_delay, ceiling]``::

    delay = min_delay + rng() * (ceiling - min_delay)

So a delay is never below ``min_delay`` (a restarting daemon is not hammered)
and never above ``max_delay``, and many clients that lost the same server at
the same moment spread their retries over the whole window instead of
retrying in lock-step.  ``reset()`` after a success starts over at n = 0.

Pure: no clock, no sleeping; ``rng`` is injectable for tests.
"""
from __future__ import annotations

import random
from typing import Callable

__all__ = ["Backoff"]

# 2 ** 62 seconds is longer than anyone waits; capping the exponent keeps the
# arithmetic exact and cheap however long a server stays down.
_MAX_EXPONENT = 62


class Backoff:
    def __init__(self, min_delay: float, max_delay: float,
                 rng: Callable[[], float] = random.random):
        if not min_delay > 0:
            raise ValueError(f"min_delay must be > 0, got {min_delay!r}")
        if max_delay < min_delay:
            raise ValueError(
                f"max_delay ({max_delay!r}) must be >= min_delay ({min_delay!r})")
        self.min_delay = float(min_delay)
        self.max_delay = float(max_delay)
        self._rng = rng
        self.attempts = 0

    def ceiling(self) -> float:
        """Upper bound of the delay the next call to ``next()`` may return."""
        exponent = min(self.attempts + 1, _MAX_EXPONENT)
        return min(self.max_delay, self.min_delay * (2 ** exponent))

    def next(self) -> float:
        """Return the delay (seconds) to wait before the next attempt."""
        ceiling = self.ceiling()
        self.attempts += 1
        r = self._rng()
        # clamp a misbehaving rng into [0, 1]
        r = 0.0 if r < 0 else 1.0 if r > 1 else r
        return self.min_delay + r * (ceiling - self.min_delay)

    def reset(self) -> None:
        """Forget past failures (call after a successful connection)."""
        self.attempts = 0

    def __repr__(self) -> str:
        return (f"Backoff(min_delay={self.min_delay}, max_delay={self.max_delay}, "
                f"attempts={self.attempts})")
