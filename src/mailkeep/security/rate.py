"""Message rate limits per client address (a connector's `rate = "60/min"`).

A token bucket per address (IPv6 per /64): `count` messages may come at once, then one more
each `seconds / count`. Like Postfix's smtpd_client_message_rate_limit, an address over its
rate gets a temporary refusal (450 4.7.1), never a permanent one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from mailkeep.security.throttle import client_key

# Addresses tracked at once; the least recently seen are forgotten first (a forgotten
# address starts with a full bucket, which only ever errs towards letting mail through).
MAX_TRACKED_ADDRESSES = 100_000


class RateLimiter:
    def __init__(self, count: int, seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(count)
        self.refill = count / seconds  # tokens per second
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def reconfigure(self, count: int, seconds: float) -> None:
        """A new rate (a reload). Each address keeps what it has used: its bucket holds no
        more than the new `count`, and refills at the new pace from now on."""
        now = self.clock()
        refreshed: OrderedDict[str, tuple[float, float]] = OrderedDict()
        for key, (held, last) in self._buckets.items():
            tokens = min(self.capacity, held + (now - last) * self.refill)
            refreshed[key] = (min(float(count), tokens), now)
        self.capacity = float(count)
        self.refill = count / seconds
        self._buckets = refreshed

    def allow(self, address: str) -> bool:
        """Take one token for `address`; False when its rate is exceeded."""
        key = client_key(address)
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > MAX_TRACKED_ADDRESSES:
            self._buckets.popitem(last=False)
        return allowed
