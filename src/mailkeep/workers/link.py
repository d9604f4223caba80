"""A worker's side of the coordinator: the shared counters as local-looking objects.

Each object has the synchronous methods of the counter it stands for (security/), and each
call is one request and one reply over the worker's socketpair to the parent: a few tens of
microseconds on a local socket, short enough to make on the event loop, as the local
counters are.

If the parent is gone (the socket fails), every call refuses: no new connection, login or
session is admitted, and the worker is asked to stop (the supervisor that restarts and
reloads it no longer exists).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

from mailkeep.security.budget import TOO_MANY, ConnectionBudget
from mailkeep.security.rate import RateLimiter
from mailkeep.security.sessions import SessionCounter
from mailkeep.security.throttle import AuthThrottle, Verdict
from mailkeep.workers.protocol import MAX_MESSAGE, encode

log = logging.getLogger("mailkeep.workers")

# A reply slower than this means the parent is stuck: refuse rather than hang the worker.
REPLY_TIMEOUT = 5.0
REFUSED_NO_PARENT = "service shutting down"


@dataclass
class WorkerLink:
    """What a worker is given: its channel to the parent and who the parent is."""
    channel: Channel
    index: int
    parent: int

    def ready(self, bound: dict[str, list[str]]) -> None:
        self.channel.call("ready", bound)

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent

    def shared(self, budget: ConnectionBudget, throttle: AuthThrottle,
               sessions: SessionCounter, rates: dict[str, RateLimiter],
               ) -> tuple[ConnectionBudget, AuthThrottle, SessionCounter,
                          dict[str, RateLimiter]]:
        """The same counters, counted by the parent for every worker."""
        return (SharedBudget(self.channel, budget), SharedThrottle(self.channel, throttle),
                SharedSessions(self.channel, sessions.per_user, sessions.per_user_ip),
                {name: SharedRate(self.channel, name, rate) for name, rate in rates.items()})


class ParentGone(Exception):
    pass


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(REPLY_TIMEOUT)
        self._lock = threading.Lock()  # the loop's thread and helper threads
        self.broken = False

    def call(self, *request: Any) -> Any:
        if self.broken:
            raise ParentGone
        with self._lock:
            try:
                self.sock.send(encode(list(request)))
                data = self.sock.recv(MAX_MESSAGE)
            except OSError as exc:
                self._lost(str(exc))
                raise ParentGone from None
        if not data:
            self._lost("connection closed")
            raise ParentGone
        return json.loads(data)

    def _lost(self, why: str) -> None:
        if not self.broken:
            self.broken = True
            log.error("worker %d: lost the supervisor (%s): stopping", os.getpid(), why)
            os.kill(os.getpid(), signal.SIGTERM)


class SharedBudget(ConnectionBudget):
    """ConnectionBudget counted by the parent (the local fields are unused)."""

    def __init__(self, channel: Channel, base: ConnectionBudget) -> None:
        super().__init__(base.config, base.capacity)
        self.channel = channel

    def acquire(self, address: str) -> str | None:
        if self.total >= self.capacity:
            return TOO_MANY  # this worker's own open-files limit (descriptors.py)
        try:
            refusal = self.channel.call("budget.acquire", address)
        except ParentGone:
            return REFUSED_NO_PARENT
        if refusal is None:
            self.total += 1  # this worker's own connections (logs, shedding)
        return str(refusal) if refusal is not None else None

    def release(self, address: str) -> None:
        self.total = max(0, self.total - 1)
        with contextlib.suppress(ParentGone):
            self.channel.call("budget.release", address)

    def count(self, address: str) -> int:
        try:
            return int(self.channel.call("budget.count", address))
        except ParentGone:
            return 0


class SharedThrottle(AuthThrottle):
    def __init__(self, channel: Channel, base: AuthThrottle) -> None:
        super().__init__(base.config)
        self.channel = channel

    def _verdict(self, op: str, address: str) -> tuple[Verdict, float]:
        try:
            verdict, seconds = self.channel.call(op, address)
        except ParentGone:
            return Verdict.BLOCKED, 0.0
        return Verdict(verdict), float(seconds)

    def check(self, address: str) -> tuple[Verdict, float]:
        return self._verdict("throttle.check", address)

    def begin(self, address: str) -> tuple[Verdict, float]:
        return self._verdict("throttle.begin", address)

    def end(self, address: str, ok: bool) -> None:
        with contextlib.suppress(ParentGone):
            self.channel.call("throttle.end", address, ok)

    def failure(self, address: str) -> None:
        with contextlib.suppress(ParentGone):
            self.channel.call("throttle.failure", address)


class SharedSessions(SessionCounter):
    """SessionCounter counted by the parent."""

    def __init__(self, channel: Channel, per_user: int, per_user_ip: int) -> None:
        super().__init__(per_user, per_user_ip)
        self.channel = channel

    def acquire(self, account: str, address: str) -> str | None:
        try:
            refusal = self.channel.call("sessions.acquire", account, address)
        except ParentGone:
            return REFUSED_NO_PARENT
        return str(refusal) if refusal is not None else None

    def release(self, account: str, address: str) -> None:
        with contextlib.suppress(ParentGone):
            self.channel.call("sessions.release", account, address)

    def count(self, account: str, address: str | None = None) -> int:
        try:
            return int(self.channel.call("sessions.count", account, address or ""))
        except ParentGone:
            return 0


class SharedRate(RateLimiter):
    """RateLimiter with one bucket per address across workers."""

    def __init__(self, channel: Channel, listener: str, base: RateLimiter) -> None:
        super().__init__(1, 1.0)
        self.capacity, self.refill = base.capacity, base.refill
        self.channel = channel
        self.listener = listener

    def allow(self, address: str) -> bool:
        try:
            return bool(self.channel.call("rate.allow", self.listener, address))
        except ParentGone:
            return False
