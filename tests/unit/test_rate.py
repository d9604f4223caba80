"""security/rate.py: a connector's `rate = "N/period"`, a token bucket per client address
(IPv6 per /64), on a fake clock: at the limit, one past it, refill, and who shares a bucket."""

from __future__ import annotations

import pytest

from mailkeep.security import rate
from mailkeep.security.rate import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def burst(limiter: RateLimiter, address: str, n: int) -> list[bool]:
    return [limiter.allow(address) for _ in range(n)]


@pytest.mark.parametrize(("count", "seconds"), [(1, 1.0), (5, 60.0), (60, 60.0), (120, 60.0),
                                                (1000, 86400.0)])
def test_count_at_once_then_refused(clock: Clock, count: int, seconds: float) -> None:
    limiter = RateLimiter(count, seconds, clock=clock)
    assert burst(limiter, "192.0.2.1", count) == [True] * count     # at the limit
    assert not limiter.allow("192.0.2.1")                           # one past it
    assert not limiter.allow("192.0.2.1")                           # and stays refused


def test_refusals_do_not_cost_tokens(clock: Clock) -> None:
    limiter = RateLimiter(2, 60.0, clock=clock)  # one token per 30 s
    burst(limiter, "192.0.2.1", 2)
    assert burst(limiter, "192.0.2.1", 50) == [False] * 50
    clock.advance(30.0)
    assert limiter.allow("192.0.2.1")  # hammering while refused did not push it back


def test_refill_is_count_per_period(clock: Clock) -> None:
    limiter = RateLimiter(60, 60.0, clock=clock)  # one token per second
    burst(limiter, "192.0.2.1", 60)
    clock.advance(0.999)
    assert not limiter.allow("192.0.2.1")       # not quite one token yet
    clock.advance(0.002)
    assert limiter.allow("192.0.2.1")           # one
    assert not limiter.allow("192.0.2.1")
    clock.advance(10.0)
    assert burst(limiter, "192.0.2.1", 11) == [True] * 10 + [False]


def test_the_bucket_never_holds_more_than_count(clock: Clock) -> None:
    limiter = RateLimiter(3, 60.0, clock=clock)
    clock.advance(86400.0)  # a long quiet day saves up nothing beyond the burst
    assert burst(limiter, "192.0.2.1", 4) == [True, True, True, False]


def test_steady_rate_at_the_limit_is_always_allowed(clock: Clock) -> None:
    limiter = RateLimiter(10, 60.0, clock=clock)  # a token every 6 s
    burst(limiter, "192.0.2.1", 10)
    for _ in range(100):
        clock.advance(6.0)
        assert limiter.allow("192.0.2.1")
        assert not limiter.allow("192.0.2.1")


def test_addresses_have_their_own_buckets(clock: Clock) -> None:
    limiter = RateLimiter(2, 60.0, clock=clock)
    burst(limiter, "192.0.2.1", 2)
    assert not limiter.allow("192.0.2.1")
    assert burst(limiter, "192.0.2.2", 2) == [True, True]
    assert limiter.allow("2001:db8::1")


def test_ipv6_counts_per_64(clock: Clock) -> None:
    # A client usually owns a whole /64: rotating through it must not buy new buckets.
    limiter = RateLimiter(3, 60.0, clock=clock)
    results = [limiter.allow(f"2001:db8:0:1::{i:x}") for i in range(1, 5)]
    assert results == [True, True, True, False]
    assert not limiter.allow("2001:db8:0:1:ffff:ffff:ffff:ffff")
    assert not limiter.allow("2001:DB8:0:1::abcd")      # any spelling of the same /64
    assert limiter.allow("2001:db8:0:2::1")             # the next /64 is someone else


def test_ipv4_mapped_ipv6_shares_the_ipv4_bucket(clock: Clock) -> None:
    limiter = RateLimiter(2, 60.0, clock=clock)
    assert limiter.allow("192.0.2.9")
    assert limiter.allow("::ffff:192.0.2.9")
    assert not limiter.allow("192.0.2.9")
    assert limiter.allow("::ffff:192.0.2.10")


def test_tracked_addresses_are_bounded(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate, "MAX_TRACKED_ADDRESSES", 3)
    limiter = RateLimiter(1, 60.0, clock=clock)
    for i in range(1, 6):
        assert limiter.allow(f"192.0.2.{i}")
    assert len(limiter._buckets) == 3
    # The most recently seen are remembered, the least recently seen forgotten (a forgotten
    # address starts again with a full bucket, erring towards letting mail through).
    assert not limiter.allow("192.0.2.5")
    assert limiter.allow("192.0.2.1")
