"""The scheduler's date fields: one-shot dates, cron-like sets, their errors."""
import datetime

import pytest

from archipelagent.errors import InvalidArgument
from archipelagent.scheduler import parse_spec


def ts(*args) -> float:
    return datetime.datetime(*args).timestamp()


def fields(year, month, day, hour, minute, second="0"):
    return dict(year=year, month=month, day=day, hour=hour, minute=minute, second=second)


NOW = ts(2026, 12, 4, 15, 0, 0)


def test_a_one_shot_date():
    spec = parse_spec(fields("2026", "12", "4", "16", "30", "5"), NOW)
    assert not spec.periodic
    assert spec.next_after(NOW) == ts(2026, 12, 4, 16, 30, 5)
    assert spec.next_after(ts(2026, 12, 4, 16, 30, 5)) is None  # once
    assert spec.text() == "2026-12-4 @ 16 : 30 : 5"


def test_every_five_minutes():
    spec = parse_spec(fields("*", "*", "*", "*", "*/5"), NOW)
    assert spec.periodic
    assert spec.next_after(NOW) == ts(2026, 12, 4, 15, 5, 0)
    assert spec.next_after(ts(2026, 12, 4, 15, 58, 0)) == ts(2026, 12, 4, 16, 0, 0)


def test_weekday_mornings_style_ranges_and_lists():
    spec = parse_spec(fields("*", "1-3", "1,15", "8", "0"), NOW)
    assert spec.next_after(NOW) == ts(2027, 1, 1, 8, 0, 0)
    assert spec.next_after(ts(2027, 1, 1, 8, 0, 0)) == ts(2027, 1, 15, 8, 0, 0)
    assert spec.next_after(ts(2027, 3, 15, 8, 0, 0)) == ts(2028, 1, 1, 8, 0, 0)


def test_the_29th_of_february_is_found_years_ahead():
    spec = parse_spec(fields("*", "2", "29", "0", "0"), NOW)
    assert spec.next_after(NOW) == ts(2028, 2, 29, 0, 0, 0)


@pytest.mark.parametrize("bad, name", [
    (fields("2026", "13", "1", "0", "0"), "month"),
    (fields("2026", "12", "4", "24", "0"), "hour"),
    (fields("2026", "12", "4", "16", "x"), "minute"),
    (fields("2026", "12", "4", "16", "0", "*/0"), "second"),
    (fields("2026", "12", "4", "16", "5-1"), "minute"),
    (fields("2026", "12", "", "16", "0"), "day"),
    (fields("2026", "12", "4", "16", "0", "1" * 70), "second"),
    (fields("2026", "2", "30", "10", "0"), "day"),        # no such day
    (fields("2026", "12", "4", "14", "59"), "year"),      # in the past
    (fields("2025", "*", "*", "*", "*"), "year"),         # never comes
    (fields("*", "2", "30", "*", "*"), "year"),           # never comes
    (fields("*", "*", "*", "*", "*", "*/10"), "second"),  # more often than once a minute
    (fields("*", "*", "*", "*", "*/5", "0,30"), "second"),
])
def test_bad_dates_are_refused_naming_the_field(bad, name):
    with pytest.raises(InvalidArgument) as err:
        parse_spec(bad, NOW)
    assert err.value.argument == name and err.value.code == -46
