"""relay/dns.py against a real DNS server on loopback (tests/support/dnsstub.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from mailkeep.relay.dns import (
    MxHost,
    NullMxError,
    PermanentDnsError,
    Resolver,
    TemporaryDnsError,
)
from mailkeep.relay.routes import NameServer
from tests.support.dnsstub import DnsStub, Zone

# Small enough that a deliberately unanswered query ends the test quickly.
TIMEOUT = 1.0


@pytest.fixture
def zone() -> Zone:
    z = Zone()
    z.mx("partner.test", (20, "mx2.partner.test"), (10, "mx1.partner.test"),
         (30, "mx3.partner.test"))
    z.a("mx1.partner.test", "127.0.0.1")
    z.aaaa("mx1.partner.test", "::1")
    z.a("mx2.partner.test", "127.0.0.2")
    z.a("plain.test", "127.0.0.3")          # no MX: implicit MX
    z.txt("plain.test", "not an address")
    z.null_mx("nomail.test")
    z.a("nomail.test", "127.0.0.4")
    z.servfail("broken.test")
    z.slow("slow.test")
    z.cname("alias.partner.test", "mx2.partner.test")
    return z


@pytest.fixture
def stub(zone: Zone) -> Iterator[DnsStub]:
    with DnsStub(zone) as s:
        yield s


def resolver(stub: DnsStub, **kwargs: object) -> Resolver:
    return Resolver([NameServer(stub.host, stub.port)], timeout=TIMEOUT, cache=False,
                    **kwargs)  # type: ignore[arg-type]


async def test_mx_sorted_by_preference(stub: DnsStub) -> None:
    hosts = await resolver(stub).mx("partner.test")
    assert hosts == [MxHost("mx1.partner.test", 10), MxHost("mx2.partner.test", 20),
                     MxHost("mx3.partner.test", 30)]


async def test_equal_preferences_are_shuffled_and_never_reordered_across(zone: Zone,
                                                                         stub: DnsStub) -> None:
    zone.mx("many.test", *((10, f"a{i}.many.test") for i in range(4)), (5, "first.many.test"),
            (50, "last.many.test"))
    r = resolver(stub, rng=random.Random(1))
    orders = set()
    for _ in range(12):
        hosts = await r.mx("many.test")
        assert hosts[0].name == "first.many.test"
        assert hosts[-1].name == "last.many.test"
        assert sorted(h.name for h in hosts[1:-1]) == [f"a{i}.many.test" for i in range(4)]
        orders.add(tuple(h.name for h in hosts))
    assert len(orders) > 1, "RFC 5321 §5.1: equal preferences must be randomised"


async def test_duplicate_targets_keep_the_best_preference(zone: Zone, stub: DnsStub) -> None:
    zone.mx("dup.test", (30, "mx.dup.test"), (10, "mx.dup.test"), (20, "other.dup.test"))
    hosts = await resolver(stub).mx("dup.test")
    assert hosts == [MxHost("mx.dup.test", 10), MxHost("other.dup.test", 20)]


async def test_implicit_mx_when_no_mx_records(stub: DnsStub) -> None:
    hosts = await resolver(stub).mx("plain.test")
    assert hosts == [MxHost("plain.test", 0, implicit=True)]
    assert await resolver(stub).addresses("plain.test") == ("127.0.0.3",)


async def test_null_mx_is_permanent_556(stub: DnsStub) -> None:
    with pytest.raises(NullMxError) as info:
        await resolver(stub).mx("nomail.test")
    assert (info.value.code, info.value.enhanced) == (556, "5.1.10")
    assert not info.value.temporary


async def test_null_mx_beside_real_mx_is_ignored(zone: Zone, stub: DnsStub) -> None:
    zone.null_mx("mixed.test").mx("mixed.test", (10, "mx.mixed.test"))
    assert await resolver(stub).mx("mixed.test") == [MxHost("mx.mixed.test", 10)]


async def test_nxdomain_is_permanent(stub: DnsStub) -> None:
    with pytest.raises(PermanentDnsError) as info:
        await resolver(stub).mx("nowhere.test")
    assert (info.value.code, info.value.enhanced) == (550, "5.1.2")
    assert not info.value.temporary


async def test_servfail_is_temporary(stub: DnsStub) -> None:
    with pytest.raises(TemporaryDnsError) as info:
        await resolver(stub).mx("broken.test")
    assert (info.value.code, info.value.enhanced) == (451, "4.4.3")
    assert info.value.temporary


async def test_timeout_is_temporary(stub: DnsStub) -> None:
    with pytest.raises(TemporaryDnsError, match="timed out"):
        await resolver(stub).mx("slow.test")


async def test_slow_but_within_the_timeout_answers(zone: Zone, stub: DnsStub) -> None:
    zone.slow("partner.test", 0.2)
    hosts = await resolver(stub).mx("partner.test")
    assert hosts[0].name == "mx1.partner.test"


async def test_addresses_ipv6_first_then_ipv4(stub: DnsStub) -> None:
    assert await resolver(stub).addresses("mx1.partner.test") == ("::1", "127.0.0.1")


async def test_ipv6_off_skips_aaaa(stub: DnsStub) -> None:
    assert await resolver(stub, ipv6=False).addresses("mx1.partner.test") == ("127.0.0.1",)
    assert stub.asked("mx1.partner.test", "AAAA") == 0


async def test_addresses_follow_cname(stub: DnsStub) -> None:
    assert await resolver(stub).addresses("alias.partner.test") == ("127.0.0.2",)


async def test_host_without_addresses_is_permanent(stub: DnsStub) -> None:
    with pytest.raises(PermanentDnsError):
        await resolver(stub).addresses("mx3.partner.test")   # NXDOMAIN
    with pytest.raises(PermanentDnsError):
        await resolver(stub).addresses("partner.test")       # exists, no A/AAAA


async def test_address_servfail_is_temporary(stub: DnsStub) -> None:
    with pytest.raises(TemporaryDnsError):
        await resolver(stub).addresses("broken.test")


async def test_txt_records(zone: Zone, stub: DnsStub) -> None:
    zone.txt("_mta-sts.partner.test", "v=STSv1; id=abc;", "other")
    assert sorted(await resolver(stub).txt("_mta-sts.partner.test") or []) == [
        "other", "v=STSv1; id=abc;"]
    assert await resolver(stub).txt("_mta-sts.nowhere.test") is None
    assert await resolver(stub).txt("mx1.partner.test") is None   # NODATA
    with pytest.raises(TemporaryDnsError):
        await resolver(stub).txt("broken.test")


async def test_truncated_udp_answers_are_retried_over_tcp(stub: DnsStub) -> None:
    stub.truncate_udp = True
    hosts = await resolver(stub).mx("partner.test")
    assert hosts[0].name == "mx1.partner.test"
    assert ("partner.test", "MX", "tcp") in stub.queries


async def test_cache_answers_repeat_queries(stub: DnsStub) -> None:
    r = Resolver([NameServer(stub.host, stub.port)], timeout=TIMEOUT)
    await r.mx("partner.test")
    await r.mx("partner.test")
    assert stub.asked("partner.test", "MX") == 1
