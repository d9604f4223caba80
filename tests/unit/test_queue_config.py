"""relay/queue_config.py: the queue's keys of `[delivery]` -- every problem at once, keyed by
dotted path, and the retry schedule."""

from __future__ import annotations

from typing import Any

import pytest

from mailkeep.relay.queue_config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DELAY_WARNING,
    DEFAULT_MAX_LIFETIME,
    DEFAULT_RETRY_SCHEDULE,
    QueueConfig,
    parse_queue,
)

ROUTES = {"mx": object(), "legacy": object()}
LOCAL = ("example.test", "example.org")


def parse(raw: dict[str, Any]) -> tuple[QueueConfig, list[str]]:
    return parse_queue(raw, routes=ROUTES, local_domains=LOCAL)


def keys(problems: list[str]) -> list[str]:
    return [p.split(": ", 1)[0] for p in problems]


def test_defaults() -> None:
    config, problems = parse({})
    assert problems == []
    assert config == QueueConfig()
    assert config.retry_schedule == DEFAULT_RETRY_SCHEDULE
    assert config.max_lifetime == DEFAULT_MAX_LIFETIME == 5 * 86400   # RFC 5321 §4.5.4.1
    assert config.delay_warning == DEFAULT_DELAY_WARNING
    assert config.concurrency == DEFAULT_CONCURRENCY
    assert dict(config.fallback_routes) == {}


def test_every_key_read() -> None:
    config, problems = parse({
        "retry_schedule": [30, 120.5], "max_lifetime": 3600, "delay_warning": 0,
        "concurrency": 3, "local_domains": {"Example.Test.": {"fallback_route": "legacy"}},
        "dns_timeout": 1.0,  # a routing key of the same table: not this parser's business
    })
    assert problems == []
    assert config.retry_schedule == (30.0, 120.5)
    assert all(isinstance(v, float) for v in config.retry_schedule)
    assert config.max_lifetime == 3600.0
    assert config.delay_warning == 0.0  # 0: no delay notices
    assert config.concurrency == 3
    assert dict(config.fallback_routes) == {"example.test": "legacy"}


def test_every_problem_at_once_keyed_by_path() -> None:
    config, problems = parse({
        "retry_schedule": [60, -1],
        "max_lifetime": 0,
        "delay_warning": -5,
        "concurrency": 0,
        "local_domains": {
            "elsewhere.example": {"fallback_route": "legacy"},
            "example.test": {"fallback_route": "nowhere", "colour": "blue"},
            "example.org": "legacy",
        },
    })
    assert keys(problems) == [
        "delivery.retry_schedule",
        "delivery.max_lifetime",
        "delivery.delay_warning",
        "delivery.concurrency",
        'delivery.local_domains."elsewhere.example"',
        'delivery.local_domains."example.test".colour',
        'delivery.local_domains."example.test".fallback_route',
        'delivery.local_domains."example.org"',
    ]
    # Each says how to fix it.
    text = "\n".join(problems)
    assert "e.g. [60, 300, 900, 3600]" in text
    assert "(0 turns it off)" in text
    assert "defined: legacy, mx" in text
    assert "add it to `domains`" in text
    # What was wrong falls back to the default, so the rest can still be checked.
    assert config.retry_schedule == DEFAULT_RETRY_SCHEDULE
    assert config.max_lifetime == DEFAULT_MAX_LIFETIME
    assert config.concurrency == DEFAULT_CONCURRENCY
    assert dict(config.fallback_routes) == {}


@pytest.mark.parametrize("schedule", [[], "60", [60, "300"], [60, True], [0], [60, None],
                                      {"a": 1}])
def test_bad_retry_schedules(schedule: object) -> None:
    _, problems = parse({"retry_schedule": schedule})
    assert keys(problems) == ["delivery.retry_schedule"]


@pytest.mark.parametrize(("key", "value"), [
    ("max_lifetime", "5d"), ("max_lifetime", True), ("max_lifetime", -1), ("max_lifetime", 0),
    ("delay_warning", "4h"), ("delay_warning", False), ("delay_warning", -0.5),
    ("concurrency", 1.5), ("concurrency", "20"), ("concurrency", True), ("concurrency", -3),
])
def test_bad_values(key: str, value: object) -> None:
    _, problems = parse({key: value})
    assert keys(problems) == [f"delivery.{key}"]
    assert repr(value) in problems[0] or str(value) in problems[0]


def test_smallest_good_values() -> None:
    config, problems = parse({"max_lifetime": 0.001, "concurrency": 1, "retry_schedule": [0.5]})
    assert problems == []
    assert (config.max_lifetime, config.concurrency, config.retry_schedule) == (0.001, 1, (0.5,))


def test_local_domains_must_be_a_table() -> None:
    _, problems = parse({"local_domains": ["example.test"]})
    assert keys(problems) == ["delivery.local_domains"]


def test_a_local_domain_without_fallback_route_is_fine() -> None:
    config, problems = parse({"local_domains": {"example.test": {}}})
    assert problems == [] and dict(config.fallback_routes) == {}


def test_fallback_route_must_be_a_route_name() -> None:
    _, problems = parse({"local_domains": {"example.test": {"fallback_route": 5}}})
    assert keys(problems) == ['delivery.local_domains."example.test".fallback_route']


# -- retry_delay -----------------------------------------------------------------------------------

def test_retry_delay_walks_the_schedule_then_repeats_the_last() -> None:
    config = QueueConfig(retry_schedule=(60.0, 300.0, 900.0))
    assert [config.retry_delay(n) for n in range(1, 7)] == [60.0, 300.0, 900.0, 900.0,
                                                            900.0, 900.0]
    assert config.retry_delay(10_000) == 900.0


def test_retry_delay_before_any_attempt_is_the_first_step() -> None:
    config = QueueConfig(retry_schedule=(60.0, 300.0))
    assert config.retry_delay(0) == 60.0
    assert config.retry_delay(-3) == 60.0


def test_default_schedule_backs_off_to_four_hours() -> None:
    config = QueueConfig()
    delays = [config.retry_delay(n) for n in range(1, 10)]
    assert delays == sorted(delays)
    assert delays[0] == 60.0 and delays[-1] == 4 * 3600.0
    # Within the default lifetime the queue tries a few dozen times, not thousands.
    elapsed, attempts = 0.0, 0
    while elapsed < config.max_lifetime:
        attempts += 1
        elapsed += config.retry_delay(attempts)
    assert 25 < attempts < 40
