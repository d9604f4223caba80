"""MTA-STS applied to delivery (RFC 8461 §4, §5): enforce keeps only matching MX hosts and only
with verified TLS; testing only logs. Real DNS stub, real HTTPS policy server, fake upstreams."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from mailkeep.relay.client import OutboundClient
from mailkeep.relay.dns import Resolver
from mailkeep.relay.mtasts import POLICY_PATH, MtaSts
from mailkeep.relay.results import Delivered, TemporaryFailure
from tests.support.dnsstub import DnsStub, Zone
from tests.support.httpsstub import HttpsStub
from tests.support.relay import delivery_config, send
from tests.support.upstream import Upstreams, server_context

MX_NAMES = ("mx1.partner.test", "mx2.partner.test")


def policy(mode: str, *mx: str) -> str:
    lines = "".join(f"mx: {m}\n" for m in mx)
    return f"version: STSv1\nmode: {mode}\n{lines}max_age: 86400\n"


@dataclass
class World:
    tmp_path: Path
    ca: trustme.CA
    ca_file: Path
    zone: Zone
    dns: DnsStub
    web: HttpsStub
    ups: Upstreams

    def publish(self, text: str) -> None:
        self.zone.txt("_mta-sts.partner.test", "v=STSv1; id=1;")
        self.web.respond(POLICY_PATH, text)

    def client(self, port: int, **delivery: object) -> OutboundClient:
        config = delivery_config(self.tmp_path, self.dns, port=port, ca_file=str(self.ca_file),
                                 **delivery)
        resolver = Resolver(config.dns_servers, timeout=config.dns_timeout)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        sts = MtaSts(resolver, context=ctx, port=self.web.port, timeout=2.0)
        return OutboundClient(config, resolver=resolver, mta_sts=sts)


@pytest.fixture
def world(tmp_path: Path, ca: trustme.CA) -> Iterator[World]:
    zone = Zone()
    zone.mx("partner.test", (10, "mx1.partner.test"), (20, "mx2.partner.test"))
    zone.a("mx1.partner.test", "127.0.0.1").a("mx2.partner.test", "127.0.0.1")
    zone.a("mta-sts.partner.test", "127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with DnsStub(zone) as dns, HttpsStub(server_context(ca, "mta-sts.partner.test")) as web:
        group = Upstreams()
        try:
            yield World(tmp_path, ca, ca_file, zone, dns, web, group)
        finally:
            group.stop()


async def test_enforce_skips_mx_hosts_outside_the_policy(world: World) -> None:
    up = world.ups(starttls=server_context(world.ca, *MX_NAMES))
    world.publish(policy("enforce", "mx2.partner.test"))
    result, = await send(world.client(up.port), ["bob@partner.test"])
    assert isinstance(result, Delivered), result
    assert result.remote_host.startswith("mx2.partner.test")
    assert result.tls is not None and result.tls.endswith("(verified)")
    assert up.connections == 1 and up.sni == ["mx2.partner.test"]


async def test_enforce_with_wildcard(world: World) -> None:
    up = world.ups(starttls=server_context(world.ca, *MX_NAMES))
    world.publish(policy("enforce", "*.partner.test"))
    result, = await send(world.client(up.port), ["bob@partner.test"])
    assert isinstance(result, Delivered) and result.remote_host.startswith("mx1.")


async def test_enforce_without_a_matching_mx_is_temporary(world: World) -> None:
    up = world.ups(starttls=server_context(world.ca, *MX_NAMES))
    world.publish(policy("enforce", "mx.elsewhere.test"))
    result, = await send(world.client(up.port), ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.7.5"
    assert up.connections == 0


async def test_enforce_requires_tls_even_under_may(world: World) -> None:
    up = world.ups()  # no STARTTLS at all
    world.publish(policy("enforce", *MX_NAMES))
    result, = await send(world.client(up.port), ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure), result
    assert up.messages == [] and not any(c.startswith("MAIL") for c in up.commands())


async def test_enforce_requires_a_valid_certificate(world: World) -> None:
    up = world.ups(starttls=server_context(trustme.CA(), *MX_NAMES))
    world.publish(policy("enforce", *MX_NAMES))
    result, = await send(world.client(up.port), ["bob@partner.test"])
    assert isinstance(result, TemporaryFailure) and result.reply.status == "4.7.5"
    assert up.messages == []


async def test_testing_mode_only_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    up = world.ups()  # no STARTTLS, and mx1 is not in the policy
    world.publish(policy("testing", "mx2.partner.test"))
    with caplog.at_level(logging.WARNING, logger="mailkeep.relay"):
        result, = await send(world.client(up.port), ["bob@partner.test"])
    assert isinstance(result, Delivered) and result.remote_host.startswith("mx1.")
    assert "testing" in caplog.text and "mx1.partner.test" in caplog.text


async def test_no_policy_leaves_delivery_alone(world: World) -> None:
    up = world.ups()
    result, = await send(world.client(up.port), ["bob@partner.test"])
    assert isinstance(result, Delivered) and result.tls is None
    assert world.dns.asked("_mta-sts.partner.test", "TXT") == 1


async def test_mta_sts_can_be_switched_off(world: World) -> None:
    up = world.ups()
    world.publish(policy("enforce", "mx.elsewhere.test"))
    config = delivery_config(world.tmp_path, world.dns, port=up.port, mta_sts=False)
    result, = await send(OutboundClient(config), ["bob@partner.test"])
    assert isinstance(result, Delivered)
    assert world.dns.asked("_mta-sts.partner.test") == 0 and world.web.requests == []


async def test_smarthost_routes_do_not_look_up_mta_sts(world: World) -> None:
    up = world.ups(starttls=server_context(world.ca, "127.0.0.1"))
    world.publish(policy("enforce", "mx.elsewhere.test"))
    client = world.client(25, routes={"up": {"type": "smarthost", "host": "127.0.0.1",
                                             "port": up.port}}, default_route="up")
    result, = await send(client, ["bob@partner.test"])
    assert isinstance(result, Delivered)
    assert world.dns.asked("_mta-sts.partner.test") == 0
