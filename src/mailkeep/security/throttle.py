"""Auth-failure throttling keyed by client address, never by account.

Failures are not cleared by a later success: otherwise one valid account would let a guesser
reset its count every few tries. They age out after the failure window.

Keying by address means a password-guesser is slowed down and then refused, while the real
user logging in from anywhere else is never locked out (no account lockout, which would hand
attackers a denial-of-service switch).

Attempts in flight are bounded: while the failures so far plus the attempts being checked
could reach the block, a new attempt from the same address is not checked yet (begin()
says BUSY and the caller waits for one to end). Otherwise a guesser opening twenty
connections at once would have twenty passwords checked before the first failure is
recorded (outside testing saw 29 checked where the limit was 10). Honest clients are not
slowed down by this: a burst of good logins from one address (an office behind NAT,
Thunderbird's five connections) runs ten at a time and none of them counts as a failure.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mailkeep.config.model import SecurityConfig

# Memory bound: addresses tracked at once. Beyond it the oldest entries are dropped, which at
# worst forgets a slow attacker's history (they are still slowed by the per-connection budget).
MAX_TRACKED_ADDRESSES = 100_000


# An IPv6 client usually has a whole /64 to itself (RFC 6177 recommends /48 to /64 per site),
# so per-address counting would let a guesser rotate through 2**64 addresses. Failures are
# counted per /64 for IPv6, per address for IPv4 (IPv4-mapped IPv6 counts as IPv4).
IPV6_PREFIX = 64


def client_key(address: str) -> str:
    """The unit failures are counted by: an IPv4 address, or an IPv6 /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class Verdict(Enum):
    ALLOW = "allow"
    BLOCKED = "blocked"
    BUSY = "busy"  # begin(): enough attempts in flight to reach the block; wait for one


@dataclass(slots=True)
class _Record:
    failures: deque[float]
    blocked_until: float = 0.0
    in_flight: int = 0


class AuthThrottle:
    def __init__(self, config: SecurityConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._records: dict[str, _Record] = {}

    def reconfigure(self, config: SecurityConfig) -> None:
        """New thresholds (a reload); the failures recorded so far and blocks in force stay."""
        self.config = config

    def _record(self, address: str) -> _Record | None:
        rec = self._records.get(address)
        if rec is None:
            return None
        cutoff = self.clock() - self.config.auth_failure_window
        while rec.failures and rec.failures[0] < cutoff:
            rec.failures.popleft()
        if not rec.failures and rec.blocked_until <= self.clock() and not rec.in_flight:
            del self._records[address]
            return None
        return rec

    def _new_record(self, key: str) -> _Record:
        if len(self._records) >= MAX_TRACKED_ADDRESSES:
            # Evict the oldest record that has no attempt in flight (an in-flight count
            # must survive until its end(), or it would go negative on a fresh record).
            for old, rec in self._records.items():
                if not rec.in_flight:
                    del self._records[old]
                    break
        rec = self._records[key] = _Record(deque())
        return rec

    def check(self, address: str) -> tuple[Verdict, float]:
        """Ask before verifying a password (from `address`, grouped by client_key()).

        Returns (ALLOW, seconds to wait first) or (BLOCKED, seconds the block still lasts)."""
        rec = self._record(client_key(address))
        if rec is None:
            return Verdict.ALLOW, 0.0
        now = self.clock()
        if rec.blocked_until > now:
            return Verdict.BLOCKED, rec.blocked_until - now
        extra = len(rec.failures) - self.config.auth_failures_before_delay
        if extra < 0:
            return Verdict.ALLOW, 0.0
        delay = min(self.config.auth_failure_delay * (2 ** extra), self.config.auth_max_delay)
        return Verdict.ALLOW, delay

    def begin(self, address: str) -> tuple[Verdict, float]:
        """check(); when allowed, one attempt is in flight until end(address, ok). BUSY when
        the failures so far and the attempts in flight could already reach the block: the
        caller waits for an attempt to end and asks again."""
        verdict, seconds = self.check(address)
        if verdict is not Verdict.ALLOW:
            return verdict, seconds
        key = client_key(address)
        rec = self._record(key) or self._new_record(key)
        if len(rec.failures) + rec.in_flight >= self.config.auth_failures_before_block:
            self._record(key)  # drop the record again if nothing else keeps it
            return Verdict.BUSY, 0.0
        rec.in_flight += 1
        return verdict, seconds

    def end(self, address: str, ok: bool) -> None:
        """The attempt begun for `address` is over: a failure is recorded unless `ok`."""
        key = client_key(address)
        rec = self._records.get(key)
        if rec is not None and rec.in_flight > 0:
            rec.in_flight -= 1
        if not ok:
            self.failure(address)
        elif rec is not None:
            self._record(key)  # drop the record if nothing else keeps it

    def failure(self, address: str) -> None:
        key = client_key(address)
        rec = self._record(key) or self._new_record(key)
        now = self.clock()
        rec.failures.append(now)
        if len(rec.failures) >= self.config.auth_failures_before_block:
            rec.blocked_until = now + self.config.auth_block_seconds
            rec.failures.clear()
