"""relay/mtasts.py: RFC 8461 record and policy parsing, and discovery over a real DNS stub and a
real HTTPS server (trustme certificates), with caching by id and max_age."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.relay.dns import Resolver
from mailkeep.relay.mtasts import (
    FETCH_RETRY_INTERVAL,
    MAX_MAX_AGE,
    MAX_POLICY_SIZE,
    POLICY_PATH,
    MtaSts,
    PolicyError,
    mx_matches,
    parse_policy,
    parse_txt,
)
from mailkeep.relay.routes import NameServer
from tests.support.dnsstub import DnsStub, Zone
from tests.support.httpsstub import HttpsStub
from tests.support.upstream import server_context

# RFC 8461 §3.2's example, LF-separated (erratum 6253 allows LF or CRLF).
POLICY = ("version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\n"
          "mx: backupmx.example.com\nmax_age: 604800\n")

# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("records", "expected"), [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),   # RFC 8461 §3.1 example
    (["v=STSv1;id=abc"], "abc"),
    (["v=STSv1; id=abc; ext=1", "unrelated text"], "abc"),
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),               # not exactly one
    (["v=STSv2; id=a"], None),
    ([" v=STSv1; id=a"], None),
    (["v=STSv1; id=" + "a" * 33], None),                      # id is 1-32 alphanumerics
    (["v=STSv1; id=a-b"], None),
    (["v=STSv1;"], None),
    ([], None),
])
def test_parse_txt(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


def test_parse_policy_rfc_example() -> None:
    mode, mx, max_age = parse_policy(POLICY)
    assert mode == "enforce" and max_age == 604800
    assert mx == ("mail.example.com", "*.example.net", "backupmx.example.com")
    assert parse_policy(POLICY.replace("\n", "\r\n")) == (mode, mx, max_age)


@pytest.mark.parametrize("text", [
    POLICY.replace("version: STSv1", "version: STSv2"),
    POLICY.replace("mode: enforce", "mode: strict"),
    POLICY.replace("max_age: 604800", "max_age: soon"),
    POLICY.replace("max_age: 604800\n", ""),
    POLICY.replace("*.example.net", "mx*.example.net"),
    "version: STSv1\nmode: testing\nmax_age: 10\n",             # no mx outside mode none
    POLICY + "this line has no colon\n",
])
def test_parse_policy_refuses(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


def test_parse_policy_leniency() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n") == ("none", (), 0)
    mode, _, age = parse_policy(POLICY + "extension_key: ignored\n")
    assert mode == "enforce" and age == 604800
    assert parse_policy(POLICY.replace("604800", "99999999999"[:10]))[2] == MAX_MAX_AGE


@given(st.text(max_size=300))
def test_any_policy_text_parses_or_is_refused(text: str) -> None:
    try:
        mode, _mx, max_age = parse_policy(text)
    except PolicyError:
        return
    assert mode in ("enforce", "testing", "none") and 0 <= max_age <= MAX_MAX_AGE


@given(st.lists(st.text(max_size=60), max_size=4))
def test_any_txt_records_give_an_id_or_none(records: list[str]) -> None:
    record_id = parse_txt(records)
    assert record_id is None or (record_id.isalnum() and len(record_id) <= 32)


@pytest.mark.parametrize(("pattern", "host", "ok"), [
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.Example.COM.", True),
    ("*.example.net", "mx1.example.net", True),
    ("*.example.net", "example.net", False),
    ("*.example.net", "a.b.example.net", False),
    ("*.example.net", ".example.net", False),
    ("mail.example.com", "other.example.com", False),
])
def test_mx_matches(pattern: str, host: str, ok: bool) -> None:
    assert mx_matches(pattern, host) is ok


# -- discovery and fetching -------------------------------------------------------------------

@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    zone: Zone
    dns: DnsStub
    web: HttpsStub
    sts: MtaSts
    clock: Clock

    def publish(self, record_id: str = "one", policy: str = POLICY, **kwargs: object) -> None:
        self.zone.remove("_mta-sts.partner.test").txt("_mta-sts.partner.test",
                                                      f"v=STSv1; id={record_id};")
        self.web.respond(POLICY_PATH, policy, **kwargs)  # type: ignore[arg-type]


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def world(ca: trustme.CA) -> Iterator[World]:
    zone = Zone().a("mta-sts.partner.test", "127.0.0.1")
    with DnsStub(zone) as dns, HttpsStub(server_context(ca, "mta-sts.partner.test")) as web:
        resolver = Resolver([NameServer(dns.host, dns.port)], timeout=1.0, cache=False)
        clock = Clock()
        sts = MtaSts(resolver, context=client_context(ca), port=web.port, timeout=2.0,
                     clock=clock)
        yield World(zone, dns, web, sts, clock)


async def test_policy_is_fetched_and_cached_by_id(world: World) -> None:
    world.publish("one")
    policy = await world.sts.policy("partner.test")
    assert policy is not None and policy.mode == "enforce" and policy.id == "one"
    assert policy.matches("mx7.example.net") and not policy.matches("evil.test")
    assert world.web.requests == [("mta-sts.partner.test", POLICY_PATH)]
    assert await world.sts.policy("partner.test") == policy
    assert len(world.web.requests) == 1  # same id: the cache answers
    world.publish("two", POLICY.replace("enforce", "testing"))
    newer = await world.sts.policy("partner.test")
    assert newer is not None and newer.id == "two" and newer.mode == "testing"
    assert len(world.web.requests) == 2


async def test_expired_policy_is_fetched_again(world: World) -> None:
    world.publish("one", POLICY.replace("604800", "60"))
    assert await world.sts.policy("partner.test") is not None
    world.clock.now += 61
    assert await world.sts.policy("partner.test") is not None
    assert len(world.web.requests) == 2


async def test_no_record_means_no_policy(world: World) -> None:
    assert await world.sts.policy("partner.test") is None
    assert world.web.requests == []


async def test_vanished_record_keeps_the_cached_policy(world: World) -> None:
    world.publish("one")
    first = await world.sts.policy("partner.test")
    world.zone.remove("_mta-sts.partner.test")
    assert await world.sts.policy("partner.test") == first
    world.zone.servfail("_mta-sts.partner.test")
    assert await world.sts.policy("partner.test") == first
    world.clock.now += 604800
    assert await world.sts.policy("partner.test") is None


async def test_txt_servfail_without_cache_is_no_policy(world: World) -> None:
    world.zone.servfail("_mta-sts.partner.test")
    assert await world.sts.policy("partner.test") is None


@pytest.mark.parametrize("kwargs", [
    {"status": 404},
    {"status": 301, "headers": {"Location": "https://elsewhere.test/policy.txt",
                                "Content-Type": "text/plain"}},
    {"headers": {"Content-Type": "text/html"}},
    {"headers": {}},
])
async def test_fetch_refusals(world: World, kwargs: dict[str, object]) -> None:
    world.publish("one", **kwargs)
    assert await world.sts.policy("partner.test") is None
    assert len(world.web.requests) == 1  # RFC 8461 §3.3: redirects are not followed


async def test_policy_size_limit(world: World) -> None:
    padding = "x_pad: " + "y" * 100 + "\n"
    big = POLICY + padding * (MAX_POLICY_SIZE // len(padding) + 1)
    world.publish("one", big)
    assert await world.sts.policy("partner.test") is None
    fits = POLICY + padding * (MAX_POLICY_SIZE // len(padding) - 1)
    world.publish("two", fits)
    assert await world.sts.policy("partner.test") is not None


@pytest.mark.parametrize("framing", [{"chunked": True}, {"length": False}])
async def test_other_body_framings_are_read(world: World, framing: dict[str, bool]) -> None:
    world.publish("one", **framing)
    policy = await world.sts.policy("partner.test")
    assert policy is not None and policy.max_age == 604800


async def test_size_limit_holds_without_content_length(world: World) -> None:
    world.publish("one", POLICY + "x: " + "y" * MAX_POLICY_SIZE + "\n", length=False)
    assert await world.sts.policy("partner.test") is None


async def test_wrong_certificate_is_refused(world: World, ca: trustme.CA) -> None:
    world.publish("one")
    other = MtaSts(world.sts.resolver, context=client_context(trustme.CA()),
                   port=world.web.port, timeout=2.0, clock=world.clock)
    assert await other.policy("partner.test") is None


async def test_stalled_server_times_out(world: World) -> None:
    world.publish("one")
    world.web.stall = True
    sts = MtaSts(world.sts.resolver, context=world.sts.context, port=world.web.port,
                 timeout=0.3, clock=world.clock)
    assert await sts.policy("partner.test") is None


async def test_failed_fetch_is_not_retried_at_once(world: World) -> None:
    world.publish("one", status=500)
    assert await world.sts.policy("partner.test") is None
    assert await world.sts.policy("partner.test") is None
    assert len(world.web.requests) == 1
    world.clock.now += FETCH_RETRY_INTERVAL + 1
    world.publish("one")
    assert await world.sts.policy("partner.test") is not None
    assert len(world.web.requests) == 2


async def test_failed_update_keeps_the_cached_policy(world: World) -> None:
    world.publish("one")
    first = await world.sts.policy("partner.test")
    world.publish("two", "garbage")
    assert await world.sts.policy("partner.test") == first


async def test_policy_host_without_address(world: World) -> None:
    world.zone.remove("mta-sts.partner.test")
    world.publish("one")
    assert await world.sts.policy("partner.test") is None
