"""Connection budgets: total and per client address."""

from __future__ import annotations

from collections import Counter

from mailkeep.config.model import SecurityConfig


class ConnectionBudget:
    def __init__(self, config: SecurityConfig) -> None:
        self.config = config
        self._per_ip: Counter[str] = Counter()
        self.total = 0

    def acquire(self, address: str) -> str | None:
        """Take a slot; return None, or the reason the connection must be refused."""
        if self.total >= self.config.max_connections:
            return "too many connections"
        if self._per_ip[address] >= self.config.max_connections_per_ip:
            return "too many connections from your address"
        self._per_ip[address] += 1
        self.total += 1
        return None

    def release(self, address: str) -> None:
        self._per_ip[address] -= 1
        if self._per_ip[address] <= 0:
            del self._per_ip[address]
        self.total -= 1

    def count(self, address: str) -> int:
        return self._per_ip[address]
