"""relay/authresults.py against a real DNS server on loopback (tests/support/dns_zone_server.py):
SPF, DKIM (signed by relay/dkim.py), ARC, DMARC, the reject switch, and time-outs."""

from __future__ import annotations

import concurrent.futures
import logging
import re
import threading
from collections.abc import Iterator

import dkim
import dns.resolver
import pytest
from authres import AuthenticationResultsHeader

from mailkeep.relay.authdns import make_resolver
from mailkeep.relay.authresults import (
    MAX_DKIM_SIGNATURES,
    AuthVerdict,
    Peer,
    authenticate,
    authenticate_async,
    dmarc_refusal,
)
from mailkeep.relay.dkim import KeyType, keygen, sign
from mailkeep.relay.dmarc import DmarcPolicy
from tests.support.dns_zone_server import DnsZoneServer

OURS = "mx.example.org"
CLIENT = "127.0.0.1"      # the connecting IP every test claims
ELSEWHERE = "192.0.2.99"  # an IP no SPF record allows (TEST-NET-1, never contacted)
MESSAGE = (b"From: Alice <alice@example.com>\r\n"
           b"To: bob@example.org\r\n"
           b"Subject: figures\r\n"
           b"Date: Sun, 01 Mar 2026 12:00:00 +0000\r\n"
           b"Message-ID: <m1@example.com>\r\n"
           b"\r\n"
           b"The figures are attached.\r\n")


def txt_value(line: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', line))


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    pem, line = keygen("example.com", "sel")
    ed_pem, ed_line = keygen("example.com", "ed", key_type=KeyType.ED25519)
    return {"pem": pem, "txt": txt_value(line).encode(), "ed_pem": ed_pem,
            "ed_txt": txt_value(ed_line).encode()}


@pytest.fixture
def server(keys: dict[str, bytes]) -> Iterator[DnsZoneServer]:
    zone = {
        # SPF: example.com allows 127.0.0.1 and nothing else.
        "example.com": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "A": ["127.0.0.1"]},
        "mx.example.com": {"TXT": ["v=spf1 a -all"], "A": ["127.0.0.1"]},
        "soft.example.net": {"TXT": ["v=spf1 ip4:192.0.2.1 ~all"]},
        "broken.example.net": {"TXT": ["v=spf1 ip4:not-an-ip -all"]},
        "nospf.example.net": {"A": ["192.0.2.7"]},
        "my-shop.com": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        # DKIM keys.
        "sel._domainkey.example.com": {"TXT": [keys["txt"].decode()]},
        "ed._domainkey.example.com": {"TXT": [keys["ed_txt"].decode()]},
        # DMARC.
        "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; rua=mailto:d@example.com"]},
        "_dmarc.my-shop.com": {"TXT": ["v=DMARC1; p=reject"]},
        "_dmarc.example.net": {"TXT": ["v=DMARC1; p=quarantine; sp=none"]},
    }
    with DnsZoneServer(zone) as s:
        yield s


@pytest.fixture
def resolver(server: DnsZoneServer) -> dns.resolver.Resolver:
    return make_resolver([server.host], port=server.port, timeout=2.0)


def check(message: bytes, resolver: dns.resolver.Resolver, *, ip: str = CLIENT,
          helo: str = "mx.example.com", mail_from: str = "alice@example.com") -> AuthVerdict:
    return authenticate(message, Peer(ip, helo, mail_from), OURS, resolver)


def results(v: AuthVerdict) -> list[tuple[str, str]]:
    """(method, result) pairs, read back from the field we wrote."""
    parsed = AuthenticationResultsHeader.parse(v.header_field().decode().rstrip("\r\n"))
    assert parsed.authserv_id == OURS
    return [(r.method, r.result) for r in parsed.results]


# -- SPF -----------------------------------------------------------------------------------------

def test_spf_pass(resolver: dns.resolver.Resolver, server: DnsZoneServer) -> None:
    v = check(MESSAGE, resolver)
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "pass"
    assert v.spf_mailfrom.domain == "example.com"
    assert v.spf_helo is not None and v.spf_helo.result == "pass"  # "a" -> 127.0.0.1
    assert ("example.com", "TXT") in server.queries  # asked our server, not the host's
    assert ("spf", "pass") in results(v)


def test_spf_fail(resolver: dns.resolver.Resolver) -> None:
    v = check(MESSAGE, resolver, ip=ELSEWHERE)
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "fail"
    assert v.spf_helo is not None and v.spf_helo.result == "fail"


def test_spf_softfail_none_and_permerror(resolver: dns.resolver.Resolver) -> None:
    for sender, expected in [("x@soft.example.net", "softfail"),
                             ("x@nospf.example.net", "none"),
                             ("x@nowhere.example.net", "none"),
                             ("x@broken.example.net", "permerror")]:
        v = check(MESSAGE, resolver, mail_from=sender)
        assert v.spf_mailfrom is not None
        assert (sender, v.spf_mailfrom.result) == (sender, expected)


def test_spf_temperror_on_servfail(resolver: dns.resolver.Resolver,
                                   server: DnsZoneServer) -> None:
    server.servfail.add("example.com")
    v = check(MESSAGE, resolver)
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "temperror"


def test_null_sender_is_checked_by_helo(resolver: dns.resolver.Resolver) -> None:
    v = check(MESSAGE, resolver, mail_from="")
    assert v.spf_mailfrom is None
    assert v.spf_helo is not None and v.spf_helo.result == "pass"
    assert results(v)[0] == ("spf", "pass")
    # An address literal or a bare word as HELO is not checked (RFC 7208 §2.3).
    v = check(MESSAGE, resolver, helo="[127.0.0.1]")
    assert v.spf_helo is None
    v = check(MESSAGE, resolver, helo="localhost")
    assert v.spf_helo is None


def test_ipv4_mapped_client(resolver: dns.resolver.Resolver) -> None:
    v = check(MESSAGE, resolver, ip="::ffff:127.0.0.1")
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "pass"


# -- DKIM ----------------------------------------------------------------------------------------

def test_dkim_pass_with_our_signature(resolver: dns.resolver.Resolver,
                                      keys: dict[str, bytes]) -> None:
    signed = sign(MESSAGE, "example.com", "sel", keys["pem"])
    v = check(signed, resolver, ip=ELSEWHERE)  # SPF fails; DKIM carries DMARC alone
    assert [(d.result, d.domain, d.selector) for d in v.dkim] == [
        ("pass", "example.com", "sel")]
    assert v.dmarc.result == "pass"
    assert ("dkim", "pass") in results(v)


def test_dkim_ed25519_pass(resolver: dns.resolver.Resolver, keys: dict[str, bytes]) -> None:
    signed = sign(MESSAGE, "example.com", "ed", keys["ed_pem"])
    v = check(signed, resolver)
    assert [(d.result, d.algorithm) for d in v.dkim] == [("pass", "ed25519-sha256")]


def test_dkim_fail_when_tampered(resolver: dns.resolver.Resolver, keys: dict[str, bytes],
                                 caplog: pytest.LogCaptureFixture) -> None:
    signed = sign(MESSAGE, "example.com", "sel", keys["pem"])
    caplog.set_level(logging.DEBUG)
    for tampered in (signed.replace(b"figures are", b"figures were"),
                     signed.replace(b"Subject: figures", b"Subject: invoice")):
        v = check(tampered, resolver, ip=ELSEWHERE)
        assert [d.result for d in v.dkim] == ["fail"]
        assert v.dmarc.result == "fail"
    # A stranger's broken signature is not an error in our log (dkimpy says ERROR).
    unpublished = sign(MESSAGE, "example.com", "gone", keys["pem"])
    assert [d.result for d in check(unpublished, resolver).dkim] == ["permerror"]
    assert [r for r in caplog.records if "dkimpy" in r.name]  # it did speak ...
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # ... quietly


def test_dkim_none_permerror_temperror(resolver: dns.resolver.Resolver,
                                       server: DnsZoneServer,
                                       keys: dict[str, bytes]) -> None:
    assert check(MESSAGE, resolver).dkim == ()
    assert ("dkim", "none") in results(check(MESSAGE, resolver))
    # No key published for the selector: a permanent error (RFC 6376 §6.1.2).
    unpublished = sign(MESSAGE, "example.com", "gone", keys["pem"])
    assert [d.result for d in check(unpublished, resolver).dkim] == ["permerror"]
    # A key lookup that fails for now: temperror, not fail.
    server.servfail.add("sel._domainkey.example.com")
    signed = sign(MESSAGE, "example.com", "sel", keys["pem"])
    assert [d.result for d in check(signed, resolver).dkim] == ["temperror"]


def test_several_signatures_and_the_cap(resolver: dns.resolver.Resolver,
                                        keys: dict[str, bytes]) -> None:
    signed = sign(MESSAGE, "example.com", "sel", keys["pem"])
    twice = sign(signed, "example.com", "ed", keys["ed_pem"])
    assert [d.result for d in check(twice, resolver).dkim] == ["pass", "pass"]
    many = MESSAGE
    for _ in range(MAX_DKIM_SIGNATURES + 3):
        many = sign(many, "example.com", "sel", keys["pem"])
    assert len(check(many, resolver).dkim) == MAX_DKIM_SIGNATURES


def test_garbage_signature_is_permerror(resolver: dns.resolver.Resolver) -> None:
    for garbage in (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com\r\n",
                    b"DKIM-Signature: ;;;===\r\n",
                    b"DKIM-Signature: v=1; a=rsa-sha256; b=@@@; bh=@@@; d=example.com; "
                    b"h=from; s=sel\r\n"):
        v = check(garbage + MESSAGE, resolver)
        assert len(v.dkim) == 1 and v.dkim[0].result in ("permerror", "fail")
        results(v)  # and the field still parses


# -- ARC ------------------------------------------------------------------------------------------

def test_arc_pass_and_none(resolver: dns.resolver.Resolver, keys: dict[str, bytes]) -> None:
    assert check(MESSAGE, resolver).arc == "none"
    relayed = b"Authentication-Results: lists.example.com; spf=pass\r\n" + MESSAGE
    seals = dkim.arc_sign(relayed, b"sel", b"example.com", keys["pem"], b"lists.example.com",
                          include_headers=[b"from", b"to", b"subject"])
    sealed = b"".join(seals) + relayed
    assert check(sealed, resolver).arc == "pass"
    assert ("arc", "pass") in results(check(sealed, resolver))
    assert check(sealed.replace(b"attached", b"missing"), resolver).arc == "fail"


# -- DMARC and the reject switch ---------------------------------------------------------------

def test_dmarc_pass_by_spf(resolver: dns.resolver.Resolver) -> None:
    v = check(MESSAGE, resolver)
    assert v.dmarc.result == "pass" and v.dmarc_policy is DmarcPolicy.REJECT
    assert dmarc_refusal(v, reject_dmarc_failures=True) is None


def test_dmarc_fail_with_p_reject(resolver: dns.resolver.Resolver) -> None:
    # Unsigned, from an IP example.com's SPF does not allow: DMARC fails, p=reject.
    v = check(MESSAGE, resolver, ip=ELSEWHERE)
    assert v.dmarc.result == "fail"
    assert v.dmarc.policy is DmarcPolicy.REJECT
    assert v.dmarc.from_domain == "example.com"
    assert ("dmarc", "fail") in results(v)
    assert dmarc_refusal(v, reject_dmarc_failures=False) is None  # the default: accept
    reply = dmarc_refusal(v, reject_dmarc_failures=True)
    assert reply is not None and reply.startswith("550 5.7.1 ")


def test_dmarc_fail_when_spf_passes_for_another_domain(resolver: dns.resolver.Resolver) -> None:
    # SPF passes for the envelope domain, but it is not aligned with From.
    v = check(MESSAGE, resolver, mail_from="x@my-shop.com")
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "pass"
    assert v.dmarc.result == "fail"
    assert dmarc_refusal(v, reject_dmarc_failures=True) is not None


def test_dmarc_hyphenated_domain_passes(resolver: dns.resolver.Resolver) -> None:
    v = check(MESSAGE.replace(b"alice@example.com", b"alice@my-shop.com"), resolver,
              mail_from="alice@my-shop.com")
    assert v.dmarc.result == "pass" and v.dmarc.from_domain == "my-shop.com"


def test_dmarc_quarantine_is_never_refused(resolver: dns.resolver.Resolver) -> None:
    message = MESSAGE.replace(b"alice@example.com", b"alice@example.net")
    v = check(message, resolver, ip=ELSEWHERE, mail_from="alice@example.net")
    assert v.dmarc.result == "fail" and v.dmarc.policy is DmarcPolicy.QUARANTINE
    assert dmarc_refusal(v, reject_dmarc_failures=True) is None
    sub = check(MESSAGE.replace(b"alice@example.com", b"alice@news.example.net"), resolver,
                ip=ELSEWHERE, mail_from="alice@news.example.net")
    assert sub.dmarc.policy is DmarcPolicy.NONE and sub.dmarc.record_domain == "example.net"


def test_dmarc_none_without_record(resolver: dns.resolver.Resolver) -> None:
    v = check(MESSAGE.replace(b"alice@example.com", b"a@nospf.example.org"), resolver,
              mail_from="a@nospf.example.org")
    assert v.dmarc.result == "none"
    assert dmarc_refusal(v, reject_dmarc_failures=True) is None


# -- time limits: a slow DNS never holds delivery ------------------------------------------------

async def test_timeout_reads_temperror(server: DnsZoneServer, keys: dict[str, bytes]) -> None:
    # Nothing about example.com is ever answered, so the checks cannot finish before the
    # resolver gives up on the first such query (0.5 s); the caller stops waiting after 0.1 s
    # and gets temperror for whatever did not finish.
    server.silent.update({"example.com", "sel._domainkey.example.com", "_dmarc.example.com"})
    slow = make_resolver([server.host], port=server.port, timeout=0.5)
    signed = sign(MESSAGE, "example.com", "sel", keys["pem"])
    v = await authenticate_async(signed, Peer(CLIENT, "mx.example.com", "alice@example.com"),
                                 OURS, slow, timeout=0.1)
    assert v.timed_out
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "temperror"
    assert [d.result for d in v.dkim] == ["temperror"]
    assert v.dmarc.result == "temperror"
    assert dmarc_refusal(v, reject_dmarc_failures=True) is None
    assert ("dmarc", "temperror") in results(v)


async def test_dns_timeouts_inside_the_limit_read_temperror(server: DnsZoneServer,
                                                            keys: dict[str, bytes]) -> None:
    server.silent.update({"example.com", "sel._domainkey.example.com", "_dmarc.example.com"})
    quick = make_resolver([server.host], port=server.port, timeout=0.2)
    signed = sign(MESSAGE, "example.com", "sel", keys["pem"])
    v = await authenticate_async(signed, Peer(CLIENT, "mx.example.com", "alice@example.com"),
                                 OURS, quick, timeout=30)
    assert not v.timed_out
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "temperror"
    assert v.spf_helo is not None and v.spf_helo.result == "pass"  # mx.example.com answered
    assert [d.result for d in v.dkim] == ["temperror"]
    assert v.dmarc.result == "temperror"


async def test_waiting_for_a_worker_counts_against_the_limit(
        resolver: dns.resolver.Resolver) -> None:
    # Every worker busy (here: the only one, held until we let go): the check cannot start,
    # the caller still gets its answer when its time is up, and the queued check is dropped.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    try:
        pool.submit(release.wait, 10)
        v = await authenticate_async(MESSAGE, Peer(CLIENT, "mx.example.com", "a@example.com"),
                                     OURS, resolver, timeout=0.1, executor=pool)
        assert v.timed_out and v.dmarc.result == "temperror"
    finally:
        release.set()
        pool.shutdown(wait=True)


async def test_async_matches_sync(resolver: dns.resolver.Resolver,
                                  keys: dict[str, bytes]) -> None:
    signed = sign(MESSAGE, "example.com", "sel", keys["pem"])
    peer = Peer(CLIENT, "mx.example.com", "alice@example.com")
    assert await authenticate_async(signed, peer, OURS, resolver) == \
        authenticate(signed, peer, OURS, resolver)


# -- the test DNS server itself -------------------------------------------------------------------

def test_large_records_come_over_tcp(server: DnsZoneServer,
                                     resolver: dns.resolver.Resolver) -> None:
    big = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(1, 120)) + " -all"
    assert len(big) > 1500
    server.set("big.example.net", "TXT", [big])
    answer = resolver.resolve("big.example.net", "TXT")
    assert b"".join(answer.rrset[0].strings).decode() == big  # type: ignore[index]
    assert server.tcp_queries == 1  # truncated over UDP, asked again over TCP
    v = check(MESSAGE, resolver, mail_from="x@big.example.net")
    assert v.spf_mailfrom is not None and v.spf_mailfrom.result == "fail"
