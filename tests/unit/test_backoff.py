import itertools

import pytest

from archipelagent.backoff import Backoff


def test_bounds_with_extreme_rng():
    lo = Backoff(1.0, 30.0, rng=lambda: 0.0)
    hi = Backoff(1.0, 30.0, rng=lambda: 1.0)
    assert [lo.next() for _ in range(8)] == [1.0] * 8
    # ceiling doubles from 2*min and is capped at max
    assert [hi.next() for _ in range(8)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_full_jitter_is_uniform_between_min_and_ceiling():
    b = Backoff(0.5, 10.0, rng=lambda: 0.5)
    # ceilings 1, 2, 4, 8, 10 -> midpoints between 0.5 and the ceiling
    assert [b.next() for _ in range(5)] == [0.75, 1.25, 2.25, 4.25, 5.25]


def test_never_below_min_never_above_max_with_real_rng():
    b = Backoff(1.0, 30.0)
    for _ in range(1000):
        d = b.next()
        assert 1.0 <= d <= 30.0


def test_reset_restarts_the_sequence():
    b = Backoff(1.0, 30.0, rng=lambda: 1.0)
    for _ in range(10):
        b.next()
    assert b.ceiling() == 30.0
    b.reset()
    assert b.attempts == 0
    assert b.next() == 2.0


def test_huge_attempt_counts_do_not_overflow():
    b = Backoff(1.0, 30.0, rng=lambda: 1.0)
    b.attempts = 10_000
    assert b.next() == 30.0


def test_rng_out_of_range_is_clamped():
    values = itertools.cycle([-3.0, 7.0])
    b = Backoff(1.0, 4.0, rng=lambda: next(values))
    assert b.next() == 1.0
    assert b.next() == 4.0


def test_min_equals_max_is_constant():
    b = Backoff(2.0, 2.0)
    assert {b.next() for _ in range(20)} == {2.0}


@pytest.mark.parametrize("lo, hi", [(0, 1), (-1, 1), (2, 1)])
def test_invalid_bounds(lo, hi):
    with pytest.raises(ValueError):
        Backoff(lo, hi)
