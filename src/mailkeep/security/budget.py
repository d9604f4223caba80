"""Connection budgets: total and per client address, counted at accept time (before TLS).

Addresses are grouped like the auth throttle groups them (an IPv6 client counts per /64).
"""

from __future__ import annotations

from collections import Counter

from mailkeep.config.model import SecurityConfig
from mailkeep.security.throttle import client_key

TOO_MANY = "too many connections"
TOO_MANY_FROM_YOU = "too many connections from your address"


class ConnectionBudget:
    def __init__(self, config: SecurityConfig, capacity: int | None = None) -> None:
        self.config = config
        # The effective total: config.max_connections, lowered to fit the open-files limit.
        self.capacity = config.max_connections if capacity is None else capacity
        self._per_ip: Counter[str] = Counter()
        self.total = 0

    def reconfigure(self, config: SecurityConfig, capacity: int | None = None) -> None:
        """New limits for new connections (a reload); the connections counted now stay
        counted, so a lowered limit refuses newcomers until enough of them have left."""
        self.config = config
        self.capacity = config.max_connections if capacity is None else capacity

    def acquire(self, address: str) -> str | None:
        """Take a slot; return None, or the reason the connection must be refused."""
        key = client_key(address)
        if self._per_ip[key] >= self.config.max_connections_per_ip:
            return TOO_MANY_FROM_YOU
        if self.total >= self.capacity:
            return TOO_MANY
        self._per_ip[key] += 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        key = client_key(address)
        self._per_ip[key] -= 1
        if self._per_ip[key] <= 0:
            del self._per_ip[key]
        self.total -= 1

    def count(self, address: str) -> int:
        return self._per_ip[client_key(address)]
