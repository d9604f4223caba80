"""security/: auth-failure throttling (fake clock) and connection budgets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mailkeep.security.throttle as throttle_mod
from mailkeep.config.model import SecurityConfig
from mailkeep.security import AuthThrottle, ConnectionBudget, Verdict

CONFIG = SecurityConfig(
    auth_failures_before_delay=3,
    auth_failure_delay=1.0,
    auth_max_delay=8.0,
    auth_failures_before_block=10,
    auth_block_seconds=900.0,
    auth_failure_window=600.0,
)
IP = "192.0.2.1"
OTHER = "192.0.2.2"


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(clock: FakeClock) -> AuthThrottle:
    return AuthThrottle(CONFIG, clock=clock)


def fail(throttle: AuthThrottle, n: int, address: str = IP) -> None:
    for _ in range(n):
        throttle.failure(address)


def test_no_delay_before_the_threshold(throttle: AuthThrottle) -> None:
    assert throttle.check(IP) == (Verdict.ALLOW, 0.0)
    for _ in range(CONFIG.auth_failures_before_delay - 1):
        throttle.failure(IP)
        assert throttle.check(IP) == (Verdict.ALLOW, 0.0)


def test_doubling_delay_capped(throttle: AuthThrottle) -> None:
    fail(throttle, CONFIG.auth_failures_before_delay - 1)
    delays = []
    for _ in range(CONFIG.auth_failures_before_block - CONFIG.auth_failures_before_delay):
        throttle.failure(IP)
        verdict, delay = throttle.check(IP)
        assert verdict is Verdict.ALLOW
        delays.append(delay)
    # failures 3..9: 1, 2, 4, 8 (cap), 8, 8, 8
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]


def test_delay_cap_is_the_configured_maximum(clock: FakeClock) -> None:
    config = SecurityConfig(auth_failures_before_delay=1, auth_failure_delay=0.5,
                            auth_max_delay=3.0, auth_failures_before_block=50)
    t = AuthThrottle(config, clock=clock)
    seen = []
    for _ in range(10):
        t.failure(IP)
        seen.append(t.check(IP)[1])
    assert seen == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert max(seen) == config.auth_max_delay


def test_block_after_threshold_for_block_seconds_then_allowed(
    throttle: AuthThrottle, clock: FakeClock
) -> None:
    fail(throttle, CONFIG.auth_failures_before_block - 1)
    assert throttle.check(IP)[0] is Verdict.ALLOW  # at the limit minus one: still allowed
    throttle.failure(IP)                              # the limit
    verdict, left = throttle.check(IP)
    assert verdict is Verdict.BLOCKED
    assert left == CONFIG.auth_block_seconds
    clock.advance(CONFIG.auth_block_seconds - 1)
    assert throttle.check(IP) == (Verdict.BLOCKED, 1.0)
    clock.advance(1)
    assert throttle.check(IP) == (Verdict.ALLOW, 0.0)  # block over, a clean slate
    throttle.failure(IP)
    assert throttle.check(IP) == (Verdict.ALLOW, 0.0)


def test_block_outlasts_the_failure_window(clock: FakeClock) -> None:
    config = SecurityConfig(auth_failures_before_block=2, auth_block_seconds=1000.0,
                            auth_failure_window=10.0)
    t = AuthThrottle(config, clock=clock)
    fail(t, 2)
    clock.advance(500)  # far past the window: the block still holds
    assert t.check(IP)[0] is Verdict.BLOCKED


def test_failures_age_out_after_the_window(throttle: AuthThrottle, clock: FakeClock) -> None:
    fail(throttle, 3)
    assert throttle.check(IP) == (Verdict.ALLOW, 1.0)
    clock.advance(CONFIG.auth_failure_window / 2)
    fail(throttle, 2)
    assert throttle.check(IP) == (Verdict.ALLOW, 4.0)
    clock.advance(CONFIG.auth_failure_window / 2 + 0.001)  # the first three are now too old
    assert throttle.check(IP) == (Verdict.ALLOW, 0.0)
    throttle.failure(IP)
    assert throttle.check(IP) == (Verdict.ALLOW, 1.0)  # 2 recent + 1 new = 3
    clock.advance(CONFIG.auth_failure_window)
    assert throttle.check(IP) == (Verdict.ALLOW, 0.0)


def test_slow_guessing_within_the_window_still_blocks(
    throttle: AuthThrottle, clock: FakeClock
) -> None:
    step = CONFIG.auth_failure_window / (CONFIG.auth_failures_before_block + 1)
    for _ in range(CONFIG.auth_failures_before_block):
        throttle.failure(IP)
        clock.advance(step)
    assert throttle.check(IP)[0] is Verdict.BLOCKED


def test_a_different_address_is_unaffected(throttle: AuthThrottle) -> None:
    fail(throttle, CONFIG.auth_failures_before_block)
    assert throttle.check(IP)[0] is Verdict.BLOCKED
    assert throttle.check(OTHER) == (Verdict.ALLOW, 0.0)
    fail(throttle, 3, OTHER)
    assert throttle.check(OTHER) == (Verdict.ALLOW, 1.0)
    assert throttle.check(IP)[0] is Verdict.BLOCKED


def test_success_does_not_reset_failures(throttle: AuthThrottle) -> None:
    # There is deliberately no success method: one valid login must not wipe a guesser's count.
    assert not any(hasattr(throttle, name) for name in ("success", "reset", "clear", "forget"))
    fail(throttle, 4)
    assert throttle.check(IP) == (Verdict.ALLOW, 2.0)
    assert throttle.check(IP) == (Verdict.ALLOW, 2.0)  # checking is not failing


def test_tracked_addresses_are_bounded(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(throttle_mod, "MAX_TRACKED_ADDRESSES", 3)
    t = AuthThrottle(CONFIG, clock=clock)
    addresses = [f"198.51.100.{i}" for i in range(6)]
    for a in addresses:
        fail(t, 3, a)
        assert len(t._records) <= 3
    # the newest three are remembered, the oldest forgotten
    assert [t.check(a)[1] for a in addresses] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_expired_records_are_dropped(throttle: AuthThrottle, clock: FakeClock) -> None:
    fail(throttle, 2)
    clock.advance(CONFIG.auth_failure_window + 1)
    throttle.check(IP)
    assert IP not in throttle._records


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["fail", "check"]), st.floats(0, 200)), max_size=60))
def test_throttle_invariants(ops: list[tuple[str, float]]) -> None:
    clock = FakeClock()
    t = AuthThrottle(CONFIG, clock=clock)
    for op, dt in ops:
        clock.advance(dt)
        if op == "fail":
            t.failure(IP)
        verdict, seconds = t.check(IP)
        assert seconds >= 0
        if verdict is Verdict.ALLOW:
            assert seconds <= CONFIG.auth_max_delay
        else:
            assert 0 < seconds <= CONFIG.auth_block_seconds + 1e-6  # float rounding of now+900-now


# -- connection budget ----------------------------------------------------------------------------


def test_budget_per_ip_at_the_limit_and_one_past() -> None:
    budget = ConnectionBudget(SecurityConfig(max_connections=100, max_connections_per_ip=3))
    for _ in range(3):
        assert budget.acquire(IP) is None
    assert budget.count(IP) == 3
    assert budget.acquire(IP) == "too many connections from your address"
    assert budget.count(IP) == 3  # a refusal takes no slot
    assert budget.acquire(OTHER) is None
    budget.release(IP)
    assert budget.acquire(IP) is None


def test_budget_total_at_the_limit_and_one_past() -> None:
    budget = ConnectionBudget(SecurityConfig(max_connections=3, max_connections_per_ip=10))
    assert budget.acquire("192.0.2.1") is None
    assert budget.acquire("192.0.2.2") is None
    assert budget.acquire("192.0.2.3") is None
    assert budget.total == 3
    assert budget.acquire("192.0.2.4") == "too many connections"
    assert budget.total == 3
    assert budget.count("192.0.2.4") == 0
    budget.release("192.0.2.2")
    assert budget.total == 2
    assert budget.acquire("192.0.2.4") is None


def test_budget_release_forgets_the_address() -> None:
    budget = ConnectionBudget(SecurityConfig(max_connections=10, max_connections_per_ip=2))
    budget.acquire(IP)
    budget.acquire(IP)
    budget.release(IP)
    budget.release(IP)
    assert budget.count(IP) == 0
    assert budget.total == 0
    assert IP not in budget._per_ip


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"])), max_size=80))
def test_budget_matches_a_model(ops: list[tuple[bool, str]]) -> None:
    config = SecurityConfig(max_connections=4, max_connections_per_ip=2)
    budget = ConnectionBudget(config)
    held: dict[str, int] = {}
    for acquire, addr in ops:
        if acquire:
            expected_ok = (sum(held.values()) < config.max_connections
                           and held.get(addr, 0) < config.max_connections_per_ip)
            assert (budget.acquire(addr) is None) == expected_ok
            if expected_ok:
                held[addr] = held.get(addr, 0) + 1
        elif held.get(addr):
            budget.release(addr)
            held[addr] -= 1
        assert budget.total == sum(held.values())
        assert budget.count(addr) == held.get(addr, 0)


def test_ipv6_failures_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    client_key = throttle_mod.client_key
    assert client_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("192.0.2.7") == "192.0.2.7"
    cfg = SecurityConfig(auth_failures_before_block=3, auth_block_seconds=60.0)
    t = AuthThrottle(cfg, clock=lambda: 1000.0)
    for i in range(3):  # three different addresses of one /64
        t.failure(f"2001:db8:1:2::{i + 1}")
    assert t.check("2001:db8:1:2:ffff::9")[0] is Verdict.BLOCKED
    assert t.check("2001:db8:1:3::1")[0] is Verdict.ALLOW  # the neighbouring /64
