"""What ejabberd's own log says about logins: when it accepted each account's connection.

The server's view of a login storm (tests/integration/test_login_rate.py and
bench/bench_scale.py): presence arrival times at a client are no measure of login
times, ejabberd delivers presences in bunches, and an entity announces itself only
once its set-up is done.
"""
from __future__ import annotations

import datetime
import re

ACCEPTED = re.compile(r"^(\S+ \S+) \[info\] .*\((<[\d.]+>)\) Accepted connection ")
AUTHENTICATED = re.compile(r"\((?:tls\|)?(<[\d.]+>)\) Accepted c2s \S+ authentication for ([^/@\s]+@[^/\s]+)")


def connections_accepted(log_text: str, jids: set[str], since: datetime.datetime) -> dict[str, float]:
    """When ejabberd accepted the connection (epoch seconds) that each of ``jids`` then
    authenticated on, for connections accepted after ``since``: the first per JID."""
    accepted_at: dict[str, datetime.datetime] = {}
    first: dict[str, float] = {}
    for line in log_text.splitlines():
        if m := ACCEPTED.match(line):
            accepted_at[m.group(2)] = datetime.datetime.fromisoformat(m.group(1))
        elif (m := AUTHENTICATED.search(line)) and m.group(2) in jids and m.group(2) not in first:
            at = accepted_at.get(m.group(1))
            if at is not None and at >= since:
                first[m.group(2)] = at.timestamp()
    return first


def most_in_one_second(times: list[float]) -> int:
    """The most events within any one-second window (sliding, not aligned)."""
    ordered = sorted(times)
    best, end = 0, 0
    for start, at in enumerate(ordered):
        while end < len(ordered) and ordered[end] < at + 1:
            end += 1
        best = max(best, end - start)
    return best
