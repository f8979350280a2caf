"""When a job fires: Archipel's six date fields, each a number or a cron-like set.

Archipel's client sends ``year month day hour minute second``.  All numbers is
a one-shot job at that date; any field written ``*``, ``*/n``, ``a-b``,
``a-b/n`` or a comma list of those makes a periodic job firing at every date
matching all six fields (APScheduler's cron fields, which Archipel used).
Dates are in the hypervisor's local time, as in Archipel.  Pure code: no I/O.
"""
from __future__ import annotations

import calendar
import datetime
import re
from dataclasses import dataclass

from ..errors import InvalidArgument

FIELDS = ("year", "month", "day", "hour", "minute", "second")
BOUNDS = {"year": (1970, 9999), "month": (1, 12), "day": (1, 31), "hour": (0, 23), "minute": (0, 59),
          "second": (0, 59)}
YEARS_AHEAD = 9  # a periodic job with year "*" is searched this many years ahead (covers 29 February)
_PART = re.compile(r"^(?:(\*)|(\d{1,4})(?:-(\d{1,4}))?)(?:/(\d{1,4}))?$")
MAX_FIELD = 64  # characters; a field is a short expression
MIN_PERIOD = 60  # seconds between two firings of a periodic job: each one is a command, audited
PERIOD_PROBES = 8  # firings looked at to check MIN_PERIOD


def _parse_field(name: str, raw: str) -> tuple[int, ...] | None:
    """The values a field allows, sorted; None for ``*`` (every value)."""
    lo, hi = BOUNDS[name]
    text = (raw or "").strip()
    if not text or len(text) > MAX_FIELD:
        raise InvalidArgument(name, f"expected a number or a cron expression, got {raw!r}")
    if text == "*":
        return None
    values: set[int] = set()
    for part in text.split(","):
        m = _PART.match(part)
        if not m:
            raise InvalidArgument(name, f"cannot read {part!r} (a number, *, */n, a-b or a-b/n)")
        star, first, last, step = m.groups()
        start, end = (lo, hi) if star else (int(first), int(last if last is not None else first))
        if step is not None and not star and last is None:
            end = hi  # "5/10": from 5 on, every 10 (cron's meaning)
        step_n = int(step) if step is not None else 1
        if not (lo <= start <= hi and lo <= end <= hi) or start > end or step_n < 1:
            raise InvalidArgument(name, f"{part!r} is outside {lo}-{hi}")
        values.update(range(start, end + 1, step_n))
    return tuple(sorted(values))


@dataclass(frozen=True)
class Spec:
    """The six fields as written (for ``jobs``) and what they allow."""

    raw: tuple[str, ...]
    allowed: tuple[tuple[int, ...] | None, ...]

    @property
    def periodic(self) -> bool:
        return any(not r.strip().isdigit() for r in self.raw)

    def text(self) -> str:
        """Archipel's ``date`` attribute of ``<job>``."""
        y, mo, d, h, mi, s = self.raw
        return f"{y}-{mo}-{d} @ {h} : {mi} : {s}"

    def first_date(self) -> datetime.datetime:
        """The one date of a one-shot job; InvalidArgument if there is no such day."""
        values = [int(r) for r in self.raw]
        try:
            return datetime.datetime(*values)
        except ValueError as exc:
            raise InvalidArgument("day", f"{self.text()} is not a date ({exc})") from None

    def next_after(self, after: float) -> float | None:
        """The first firing time (epoch seconds) strictly after ``after``; None if there is none."""
        if not self.periodic:
            ts = self.first_date().timestamp()
            return ts if ts > after else None
        start = datetime.datetime.fromtimestamp(int(after) + 1)
        found = self._search(0, [], (start.year, start.month, start.day, start.hour, start.minute, start.second), True)
        return datetime.datetime(*found).timestamp() if found else None

    def _candidates(self, index: int, prefix: list[int], floor: int) -> range | tuple[int, ...]:
        allowed = self.allowed[index]
        if index == 0:
            lo, hi = floor, floor + YEARS_AHEAD
        elif index == 2:
            lo, hi = 1, calendar.monthrange(prefix[0], prefix[1])[1]
        else:
            lo, hi = BOUNDS[FIELDS[index]]
        if allowed is None:
            return range(lo, hi + 1)
        return tuple(v for v in allowed if lo <= v <= hi)

    def _search(self, index: int, prefix: list[int], start: tuple[int, ...], tight: bool) -> list[int] | None:
        """Depth-first over the fields: the smallest matching date >= ``start``."""
        if index == len(FIELDS):
            return prefix
        for value in self._candidates(index, prefix, start[0]):
            if tight and value < start[index]:
                continue
            found = self._search(index + 1, prefix + [value], start, tight and value == start[index])
            if found:
                return found
        return None


def parse_spec(fields: dict[str, str], now: float) -> Spec:
    """Read the six fields (InvalidArgument names the bad one); a job must fire at least once after ``now``."""
    raw = tuple(str(fields.get(name) if fields.get(name) is not None else "").strip() for name in FIELDS)
    allowed = tuple(_parse_field(name, value) for name, value in zip(FIELDS, raw))
    spec = Spec(raw=raw, allowed=allowed)
    if spec.periodic:
        previous = spec.next_after(now)
        if previous is None:
            raise InvalidArgument("year", f"{spec.text()} never comes")
        for _ in range(PERIOD_PROBES):
            following = spec.next_after(previous)
            if following is None:
                break
            if following - previous < MIN_PERIOD:
                raise InvalidArgument("second", f"{spec.text()} fires more often than once every {MIN_PERIOD} s")
            previous = following
    else:
        when = spec.first_date()
        if when.timestamp() <= now:
            raise InvalidArgument("year", f"{spec.text()} is in the past")
    return spec


def spec_at(ts: float) -> Spec:
    """The one-shot spec of a moment (local time, whole seconds): for jobs the agent plans itself."""
    t = datetime.datetime.fromtimestamp(int(ts))
    raw = tuple(str(v) for v in (t.year, t.month, t.day, t.hour, t.minute, t.second))
    return Spec(raw=raw, allowed=tuple((int(v),) for v in raw))
