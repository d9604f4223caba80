"""The counters that every worker shares, held by the parent process.

Each worker asks over its own socketpair (protocol.py); the parent answers from the real
ConnectionBudget, AuthThrottle, SessionCounter and RateLimiters (security/), so a limit
"per address" or "per user" means across all workers, as it did with one process.

What each worker holds (connection slots, IMAP sessions, login attempts in flight) is
tracked per worker: when a worker dies, kill -9 included, everything it held is released,
so a crash cannot leak slots and lock an address out.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mailkeep.config.model import Config
from mailkeep.security import AuthThrottle, ConnectionBudget, SessionCounter
from mailkeep.security.rate import RateLimiter

log = logging.getLogger("mailkeep.workers")


@dataclass
class Holdings:
    """What one worker has taken and not given back."""
    slots: Counter[str] = field(default_factory=Counter)                # address
    sessions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (account, address)
    attempts: Counter[str] = field(default_factory=Counter)             # address


class Coordinator:
    def __init__(self, config: Config) -> None:
        security = config.security
        # The total cap counts across workers; each worker's own open-files limit is
        # checked by the worker (descriptors.py) and only lowers what it can take.
        self.budget = ConnectionBudget(security)
        self.throttle = AuthThrottle(security)
        self.sessions = SessionCounter(config.imap.max_connections_per_user,
                                       config.imap.max_connections_per_user_ip)
        self.rates = _rate_limiters(config)
        self.holdings: dict[int, Holdings] = {}

    def reconfigure(self, config: Config) -> None:
        """SIGHUP with a valid new config: the new limits apply to the counts so far."""
        security = config.security
        self.budget.config = security
        self.budget.capacity = security.max_connections
        self.throttle.config = security
        self.sessions.per_user = config.imap.max_connections_per_user
        self.sessions.per_user_ip = config.imap.max_connections_per_user_ip
        fresh = _rate_limiters(config)
        for name, limiter in fresh.items():
            old = self.rates.get(name)
            if old is not None and (old.capacity, old.refill) == (limiter.capacity,
                                                                  limiter.refill):
                fresh[name] = old  # the same rate: keep the buckets
        self.rates = fresh

    def forget(self, worker: int) -> None:
        """`worker` is gone: give back everything it held."""
        held = self.holdings.pop(worker, None)
        if held is None:
            return
        for address, n in held.slots.items():
            for _ in range(n):
                self.budget.release(address)
        for (account, address), n in held.sessions.items():
            for _ in range(n):
                self.sessions.release(account, address)
        for address, n in held.attempts.items():
            for _ in range(n):
                # An attempt cut short by a crash is not counted as a failure.
                self.throttle.end(address, True)
        total = sum(held.slots.values()) + sum(held.sessions.values()) \
            + sum(held.attempts.values())
        if total:
            log.info("worker %d: released %d connection slots, %d IMAP sessions and %d "
                     "login attempts it held", worker, sum(held.slots.values()),
                     sum(held.sessions.values()), sum(held.attempts.values()))

    def handle(self, worker: int, op: str, args: list[Any]) -> Any:
        """Answer one request (already checked by protocol.decode_request)."""
        held = self.holdings.setdefault(worker, Holdings())
        if op == "budget.acquire":
            refusal = self.budget.acquire(args[0])
            if refusal is None:
                held.slots[args[0]] += 1
            return refusal
        if op == "budget.release":
            if _take(held.slots, args[0]):
                self.budget.release(args[0])
            return None
        if op == "budget.count":
            return self.budget.count(args[0])
        if op == "throttle.check":
            verdict, seconds = self.throttle.check(args[0])
            return [verdict.value, seconds]
        if op == "throttle.begin":
            verdict, seconds = self.throttle.begin(args[0])
            if verdict.value == "allow":
                held.attempts[args[0]] += 1
            return [verdict.value, seconds]
        if op == "throttle.end":
            if _take(held.attempts, args[0]):
                self.throttle.end(args[0], args[1])
            elif not args[1]:
                self.throttle.failure(args[0])
            return None
        if op == "throttle.failure":
            self.throttle.failure(args[0])
            return None
        if op == "sessions.acquire":
            refusal = self.sessions.acquire(args[0], args[1])
            if refusal is None:
                held.sessions[(args[0], args[1])] += 1
            return refusal
        if op == "sessions.release":
            if _take(held.sessions, (args[0], args[1])):
                self.sessions.release(args[0], args[1])
            return None
        if op == "sessions.count":
            return self.sessions.count(args[0], args[1] or None)
        if op == "rate.allow":
            limiter = self.rates.get(args[0])
            return True if limiter is None else limiter.allow(args[1])
        raise AssertionError(op)  # protocol.OPS lists nothing else


def _take(counter: Counter[Any], key: object) -> bool:
    """Count one release of `key`; False if the worker never held it (ignored: a worker
    cannot release what another holds)."""
    if counter[key] <= 0:
        counter.pop(key, None)
        return False
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
    return True


def _rate_limiters(config: Config) -> dict[str, RateLimiter]:
    return {lst.name: RateLimiter(lst.rate.count, lst.rate.seconds)
            for lst in config.listeners if lst.rate is not None}
