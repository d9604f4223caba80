"""Helpers for outbound delivery tests: a [delivery] config pointed at the stubs, and send().

    config = delivery_config(tmp_path, dns, port=up.port, tls_policy={"partner.test": "verify"})
    results = await send(OutboundClient(config), ["bob@partner.test"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mailkeep.relay.client import OutboundClient
from mailkeep.relay.envelope import OutboundMessage, Recipient
from mailkeep.relay.results import RecipientResult
from mailkeep.relay.routes import DeliveryConfig, parse_delivery
from tests.support.dnsstub import DnsStub

HELO = "relay.mailkeep.test"
MESSAGE = (b"From: alice@example.test\r\nTo: bob@partner.test\r\nSubject: hello\r\n"
           b"Message-ID: <1@example.test>\r\n\r\nHello Bob.\r\n.leading dot\r\n")
# Tests keep timeouts short so that a stall ends quickly; none asserts on elapsed time.
FAST = {"connect_timeout": 2.0, "command_timeout": 5.0, "data_timeout": 5.0, "dns_timeout": 2.0}


def delivery_config(base: Path, dns: DnsStub | None, *, port: int = 25,
                    **delivery: Any) -> DeliveryConfig:
    """parse_delivery() of a [delivery] table using the DNS stub; fails on any problem."""
    raw: dict[str, Any] = {**FAST, "helo_name": HELO, "port": port, **delivery}
    if dns is not None:
        raw.setdefault("dns_servers", [dns.address])
    config, problems = parse_delivery(raw, base)
    assert problems == [], problems
    return config


def message(data: bytes = MESSAGE, **kwargs: Any) -> OutboundMessage:
    kwargs.setdefault("sender", "alice@example.test")
    kwargs.setdefault("id", "test")
    return OutboundMessage(data=data, **kwargs)


async def send(client: OutboundClient, recipients: list[str | Recipient],
               msg: OutboundMessage | None = None) -> list[RecipientResult]:
    """Plan and deliver like the runner will: every destination, results in plan order."""
    rcpts = [r if isinstance(r, Recipient) else Recipient(r) for r in recipients]
    destinations, results = client.plan(rcpts)
    for destination in destinations:
        results += await client.deliver(destination, msg or message())
    return results
