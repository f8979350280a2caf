"""The agent's login rate bound (archipelagent/xmpp/ratelimit.py), on a fake clock."""
import collections

import pytest

from archipelagent.config import DEFAULT_MAX_LOGINS_PER_SECOND, load_config
from archipelagent.xmpp.ratelimit import LoginGate, TokenBucket
from rig.ejabberd_log import most_in_one_second
from test_config import SAMPLE, expect_error, with_value


class FakeLoop:
    """A clock and call_later that only move when the test says so; ``late``: every timer fires
    that much after its time (a loop busy with other streams)."""

    def __init__(self, late: float = 0.0):
        self.now = 0.0
        self.late = late
        self.timers: list[tuple[float, object]] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay, callback):
        assert delay > 0
        self.timers.append((self.now + delay + self.late, callback))
        return callback

    def run_until(self, end: float) -> None:
        while True:
            due = sorted((t for t in self.timers if t[0] <= end), key=lambda t: t[0])
            if not due:
                break
            self.timers.remove(due[0])
            self.now = due[0][0]
            due[0][1]()
        self.now = end


def test_bucket_gives_one_token_then_the_wait_until_the_next():
    loop = FakeLoop()
    bucket = TokenBucket(5, clock=loop.clock)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.2)
    loop.now = 0.1
    assert bucket.take() == pytest.approx(0.1)
    loop.now = 0.2
    assert bucket.take() == 0.0


def test_bucket_saves_at_most_its_capacity():
    loop = FakeLoop()
    bucket = TokenBucket(10, capacity=3, clock=loop.clock)
    loop.now = 100.0  # a long idle time
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() > 0


@pytest.mark.parametrize("rate, capacity", [(0, 1), (-1, 1), (5, 0.5)])
def test_bucket_refuses_bad_parameters(rate, capacity):
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity)


def test_gate_refuses_a_negative_rate():
    with pytest.raises(ValueError):
        LoginGate(-1)


def test_gate_unlimited_runs_every_attempt_at_once():
    ran = []
    gate = LoginGate(0, call_later=lambda *_: pytest.fail("no timer when unlimited"))
    for i in range(100):
        gate.request(i, lambda i=i: ran.append(i))
    assert ran == list(range(100))


def test_gate_storm_of_200_at_5_per_second_never_exceeds_the_rate_in_any_second():
    loop = FakeLoop()
    gate = LoginGate(5, clock=loop.clock, call_later=loop.call_later)
    started: list[float] = []
    for i in range(200):
        gate.request(i, lambda: started.append(loop.now))
    assert len(started) == 1  # the first goes at once, the others wait their turn
    loop.run_until(100)
    assert len(started) == 200 and len(gate) == 0
    assert most_in_one_second(started) <= 5
    per_second = collections.Counter(int(t) for t in started)
    assert max(per_second.values()) <= 5
    assert started[-1] == pytest.approx(199 / 5)  # paced, not slower than the rate


def test_gate_catches_up_when_the_loop_comes_back_late_and_keeps_the_bound():
    """A loop busy with 1,000 streams runs the gate's timer late: the attempts due meanwhile go
    together (saved tokens), so the pace stays the rate, and never more than the rate per second."""
    loop = FakeLoop(late=0.015)
    gate = LoginGate(200, clock=loop.clock, call_later=loop.call_later)
    started: list[float] = []
    for i in range(1000):
        gate.request(i, lambda: started.append(loop.now))
    loop.run_until(60)
    assert len(started) == 1000
    assert started[-1] < 1000 / 200 + 0.5  # ~5 s; with a bucket of one token: 1000 x 20 ms = 20 s
    assert most_in_one_second(started) <= 200
    # the catching up is bounded too: never more than rate x CATCH_UP (20) in one go
    assert max(collections.Counter(started).values()) <= 20


def test_gate_window_holds_even_when_the_bucket_could_give_more():
    """A large saved-up bucket and a very late loop: the sliding window still bounds each second."""
    loop = FakeLoop(late=0.4)
    gate = LoginGate(20, catch_up=1.0, clock=loop.clock, call_later=loop.call_later)
    started: list[float] = []
    for i in range(200):
        gate.request(i, lambda: started.append(loop.now))
    loop.run_until(100)
    assert len(started) == 200
    assert most_in_one_second(started) <= 20


def test_gate_counts_its_attempts_and_the_most_in_one_second():
    """What the metrics show (archipel_login_attempts, ..._peak_per_second), bounded or not."""
    loop = FakeLoop(late=0.015)
    gate = LoginGate(50, clock=loop.clock, call_later=loop.call_later)
    for i in range(120):
        gate.request(i, lambda: None)
    loop.run_until(10)
    assert gate.started == 120 and gate.peak == 50
    unbounded = LoginGate(0, clock=loop.clock)
    for i in range(30):
        unbounded.request(i, lambda: None)
    assert unbounded.started == 30 and unbounded.peak == 30


def test_gate_keeps_fifo_order_one_place_per_key_and_cancel_withdraws():
    loop = FakeLoop()
    gate = LoginGate(2, clock=loop.clock, call_later=loop.call_later)
    ran = []
    for key in "abcd":
        gate.request(key, lambda key=key: ran.append(key))
    gate.request("b", lambda: ran.append("b2"))  # asked again: keeps its place, newest callback
    gate.cancel("c")  # an entity stopped while waiting
    loop.run_until(10)
    assert ran == ["a", "b2", "d"]
    assert len(loop.timers) == 0


def test_gate_one_failing_attempt_does_not_stall_the_others():
    loop = FakeLoop()
    gate = LoginGate(100, clock=loop.clock, call_later=loop.call_later)
    ran = []

    def boom():
        raise RuntimeError("broken entity")
    gate.request("x", boom)
    gate.request("y", lambda: ran.append("y"))
    loop.run_until(1)
    assert ran == ["y"]


def test_gate_sets_a_single_timer_however_many_requests_arrive():
    loop = FakeLoop()
    gate = LoginGate(1, clock=loop.clock, call_later=loop.call_later)
    for i in range(50):
        gate.request(i, lambda: None)
    assert len(loop.timers) == 1


# -- [XMPP] max_logins_per_second ------------------------------------------------

def test_config_sample_sets_the_rate_and_a_missing_key_means_the_default(tmp_path):
    assert load_config(SAMPLE).xmpp.max_logins_per_second == DEFAULT_MAX_LOGINS_PER_SECOND
    missing = load_config(with_value(tmp_path, "XMPP", "max_logins_per_second", None))
    assert missing.xmpp.max_logins_per_second == DEFAULT_MAX_LOGINS_PER_SECOND


@pytest.mark.parametrize("value, expected", [("0", 0), ("5", 5), ("1000", 1000)])
def test_config_accepts_zero_as_unlimited_and_positive_rates(tmp_path, value, expected):
    config = load_config(with_value(tmp_path, "XMPP", "max_logins_per_second", value))
    assert config.xmpp.max_logins_per_second == expected


@pytest.mark.parametrize("value", ["-1", "fast", "2.5"])
def test_config_refuses_a_bad_rate(tmp_path, value):
    error = expect_error(with_value(tmp_path, "XMPP", "max_logins_per_second", value),
                         "XMPP", "max_logins_per_second")
    assert "expected an integer >= 0" in error.reason and repr(value) in error.reason
