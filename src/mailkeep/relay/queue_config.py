"""The queue's settings in `[delivery]`: retries, lifetime, delay notices, concurrency, and
split delivery for local domains (`[delivery.local_domains."DOMAIN"] fallback_route`).

relay/routes.py parses the routing keys of the same table; this module the rest. Problems are
reported keyed by dotted path, like every other configuration problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# Postfix retries a deferred message after 300 s, then backs off exponentially up to 4000 s
# (minimal_backoff_time / maximal_backoff_time); Exim retries every 15 minutes for 2 hours,
# then at growing intervals. We start sooner (greylisting usually clears within minutes)
# and double up to 4 hours, then every 4 hours.
DEFAULT_RETRY_SCHEDULE = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
# RFC 5321 §4.5.4.1: give up after at least 4-5 days (Postfix maximal_queue_lifetime: 5d).
DEFAULT_MAX_LIFETIME = 5 * 24 * 3600.0
# RFC 3461 / common practice (Postfix delay_warning_time, Exim delay_warning): one notice
# after 4 hours still undelivered. 0 turns notices off.
DEFAULT_DELAY_WARNING = 4 * 3600.0
# Remote deliveries in flight at once (Postfix default_process_limit is 100; we are one
# process: 20 concurrent SMTP sessions keep a 2-core machine busy without starving clients).
DEFAULT_CONCURRENCY = 20


@dataclass(frozen=True, slots=True)
class QueueConfig:
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    max_lifetime: float = DEFAULT_MAX_LIFETIME
    delay_warning: float = DEFAULT_DELAY_WARNING
    concurrency: int = DEFAULT_CONCURRENCY
    # Local domain -> route for local parts with no account here (split delivery while
    # migrating: unknown users go to the legacy server instead of being refused).
    fallback_routes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
        index = min(max(attempts, 1), len(self.retry_schedule)) - 1
        return self.retry_schedule[index]


def parse_queue(raw: Mapping[str, Any], *, routes: Mapping[str, object],
                local_domains: tuple[str, ...]) -> tuple[QueueConfig, list[str]]:
    problems: list[str] = []
    pre = "delivery."
    defaults = QueueConfig()

    schedule = defaults.retry_schedule
    if "retry_schedule" in raw:
        value = raw["retry_schedule"]
        if not isinstance(value, list) or not value or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value):
            problems.append(f"{pre}retry_schedule: expected a non-empty list of seconds "
                            "greater than 0, e.g. [60, 300, 900, 3600]")
        else:
            schedule = tuple(float(v) for v in value)

    def seconds(key: str, default: float, allow_zero: bool = False) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{pre}{key}: expected a number of seconds, got {value!r}")
            return default
        if value < 0 or (value == 0 and not allow_zero):
            problems.append(f"{pre}{key}: must be greater than 0" +
                            (" (0 turns it off)" if allow_zero else "") + f", got {value}")
            return default
        return float(value)

    lifetime = seconds("max_lifetime", defaults.max_lifetime)
    warning = seconds("delay_warning", defaults.delay_warning, allow_zero=True)
    concurrency = raw.get("concurrency", defaults.concurrency)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        problems.append(f"{pre}concurrency: expected a whole number of at least 1, "
                        f"got {concurrency!r}")
        concurrency = defaults.concurrency

    fallbacks: dict[str, str] = {}
    table = raw.get("local_domains", {})
    if not isinstance(table, dict):
        problems.append(f"{pre}local_domains: expected a table of domains")
        table = {}
    for domain, settings in table.items():
        key = f'{pre}local_domains."{domain}"'
        normal = domain.lower().rstrip(".")
        if normal not in local_domains:
            problems.append(f"{key}: not one of the local domains ({', '.join(local_domains)});"
                            " add it to `domains` or remove this table")
            continue
        if not isinstance(settings, dict):
            problems.append(f"{key}: expected a table, e.g. fallback_route = \"legacy\"")
            continue
        for extra in sorted(set(settings) - {"fallback_route"}):
            problems.append(f"{key}.{extra}: unknown key (known keys here: fallback_route)")
        route = settings.get("fallback_route")
        if route is None:
            continue
        if not isinstance(route, str) or route not in routes:
            problems.append(f"{key}.fallback_route: {route!r} is not a route defined under "
                            f"[delivery.routes] (defined: {', '.join(sorted(routes))})")
            continue
        fallbacks[normal] = route
    config = QueueConfig(retry_schedule=schedule, max_lifetime=lifetime, delay_warning=warning,
                         concurrency=concurrency, fallback_routes=MappingProxyType(fallbacks))
    return config, problems
