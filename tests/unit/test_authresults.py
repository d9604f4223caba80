"""relay/dmarc.py and the pure parts of relay/authresults.py: DMARC steps, the reject
decision, stripping forged Authentication-Results fields, and a field that cannot be broken.

The checks against a real DNS server are in tests/integration/test_authresults.py."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import spf
from authres import AuthenticationResultsHeader

from mailkeep.relay.authdns import DnsTempError, _dispatching_lookup
from mailkeep.relay.authresults import (
    AuthVerdict,
    DkimOutcome,
    SpfOutcome,
    add_results,
    authserv_id_of,
    dmarc_refusal,
    strip_forged,
)
from mailkeep.relay.dmarc import (
    Authenticated,
    DmarcOutcome,
    DmarcPolicy,
    DmarcRecord,
    aligned,
    author_domain,
    evaluate,
    organizational_domain,
    parse_record,
)

OURS = "mx.example.org"


def msg(from_field: str = "From: a@example.com") -> bytes:
    return f"{from_field}\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n".encode()


# -- organisational domains and alignment (RFC 7489 §3) -------------------------------------------

@pytest.mark.parametrize(("domain", "org"), [
    ("example.com", "example.com"),
    ("a.b.example.com", "example.com"),
    ("mail.example.co.uk", "example.co.uk"),
    ("x.y.github.io", "y.github.io"),       # a private suffix on the list
    ("news.my-shop.com", "my-shop.com"),
    ("a.example.test", "example.test"),     # not on the list: the default rule "*"
    ("Example.COM.", "example.com"),
])
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


def test_alignment() -> None:
    assert aligned("example.com", "example.com", "s")
    assert not aligned("mail.example.com", "example.com", "s")
    assert aligned("mail.example.com", "example.com", "r")
    assert aligned("bounce.example.com", "news.example.com", "r")
    assert not aligned("example.net", "example.com", "r")
    assert not aligned("a.github.io", "b.github.io", "r")  # different registrants


# -- records (RFC 7489 §6.3, §6.4) ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "record"), [
    ("v=DMARC1; p=reject", DmarcRecord(DmarcPolicy.REJECT)),
    ("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20",
     DmarcRecord(DmarcPolicy.QUARANTINE, DmarcPolicy.NONE, "s", "s", 20)),
    ("v=DMARC1; p=Reject; rua=mailto:d@example.com", DmarcRecord(DmarcPolicy.REJECT)),
    ("v=DMARC1; p=bogus; rua=mailto:d@example.com", DmarcRecord(DmarcPolicy.NONE)),
    ("v=DMARC1; rua=mailto:d@example.com", DmarcRecord(DmarcPolicy.NONE)),
    ("v=DMARC1; p=none; pct=250", DmarcRecord(DmarcPolicy.NONE)),
    ("v=DMARC1; p=none; pct=x", DmarcRecord(DmarcPolicy.NONE)),
    ("v=DMARC1; p=none; sp=bogus", DmarcRecord(DmarcPolicy.NONE)),
])
def test_parse_record(text: str, record: DmarcRecord) -> None:
    assert parse_record(text) == record


@pytest.mark.parametrize("text", [
    "v=DMARC1", "v=DMARC1; p=bogus", "p=reject; v=DMARC1", "v=dmarc1; p=reject",
    "v=DMARC2; p=reject", "v=DMARC1; p", "",
])
def test_unusable_record(text: str) -> None:
    assert parse_record(text) is None


# -- the author domain (RFC 7489 §6.6.1) ----------------------------------------------------------

def test_author_domain() -> None:
    assert author_domain(msg("From: Alice <alice@Example.COM>")) == ("example.com", None)
    # authheaders 0.16.3 reads this as "my": the reason relay/dmarc.py exists.
    assert author_domain(msg("From: a@news.my-shop.com")) == ("news.my-shop.com", None)
    assert author_domain(msg("From: a@example.com, b@example.com")) == ("example.com", None)
    assert author_domain("From: a@b\u00fccher.example\r\n\r\n".encode()) == (
        "xn--bcher-kva.example", None)
    for bad in ["From: a@example.com\r\nFrom: a@example.net", "From: a@example.com, b@example.net",
                "From: nobody", "From: a@[192.0.2.1]", "X-From: a@example.com"]:
        domain, problem = author_domain(msg(bad))
        assert domain is None and problem


# -- DMARC verdicts, with DNS answered from a dict ------------------------------------------------

def txt_from(zone: dict[str, list[str]], failing: Sequence[str] = ()) -> object:
    def txt(name: str) -> list[bytes]:
        if name in failing:
            raise DnsTempError(name)
        return [v.encode() for v in zone.get(name, [])]
    return txt


def dmarc(message: bytes, zone: dict[str, list[str]], spf_domain: str | None = None,
          dkim_domains: Sequence[str] = (), failing: Sequence[str] = ()) -> DmarcOutcome:
    return evaluate(message, Authenticated(spf_domain) if spf_domain else None,
                    [Authenticated(d) for d in dkim_domains],
                    txt_from(zone, failing))  # type: ignore[arg-type]


def test_dmarc_pass_by_dkim_or_spf_and_fail_by_neither() -> None:
    zone = {"_dmarc.example.com": ["v=DMARC1; p=reject"]}
    assert dmarc(msg(), zone, dkim_domains=["example.com"]).result == "pass"
    assert dmarc(msg(), zone, spf_domain="bounce.example.com").result == "pass"  # relaxed
    failed = dmarc(msg(), zone, spf_domain="example.net", dkim_domains=["example.net"])
    assert failed.result == "fail"
    assert failed.policy is DmarcPolicy.REJECT and failed.from_domain == "example.com"


def test_dmarc_strict_alignment() -> None:
    zone = {"_dmarc.example.com": ["v=DMARC1; p=reject; adkim=s; aspf=s"]}
    assert dmarc(msg(), zone, dkim_domains=["mail.example.com"]).result == "fail"
    assert dmarc(msg(), zone, spf_domain="bounce.example.com").result == "fail"
    assert dmarc(msg(), zone, dkim_domains=["example.com"]).result == "pass"


def test_hyphenated_domain_aligns() -> None:
    zone = {"_dmarc.my-shop.com": ["v=DMARC1; p=reject"]}
    outcome = dmarc(msg("From: a@my-shop.com"), zone, spf_domain="my-shop.com")
    assert outcome.result == "pass" and outcome.from_domain == "my-shop.com"


def test_subdomain_policy_only_for_subdomains() -> None:
    zone = {"_dmarc.example.com": ["v=DMARC1; p=reject; sp=none"]}
    # authheaders 0.16.3 applies sp=none here; RFC 7489 §6.3 says p= governs the domain itself.
    top = dmarc(msg("From: a@example.com"), zone)
    assert top.result == "fail" and top.policy is DmarcPolicy.REJECT
    sub = dmarc(msg("From: a@news.example.com"), zone)
    assert sub.result == "fail" and sub.policy is DmarcPolicy.NONE
    assert sub.record_domain == "example.com"
    own = dmarc(msg("From: a@news.example.com"),
                {**zone, "_dmarc.news.example.com": ["v=DMARC1; p=quarantine; sp=none"]})
    assert own.policy is DmarcPolicy.QUARANTINE and own.record_domain == "news.example.com"


def test_no_record_several_records_and_noise() -> None:
    assert dmarc(msg(), {}).result == "none"
    several = dmarc(msg(), {"_dmarc.example.com": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]})
    assert several.result == "none" and several.comment and "several" in several.comment
    noise = dmarc(msg(), {"_dmarc.example.com": ["google-site-verification=x",
                                                 "v=DMARC1; p=quarantine"]})
    assert noise.result == "fail" and noise.policy is DmarcPolicy.QUARANTINE
    assert dmarc(msg(), {"_dmarc.example.com": ["v=DMARC1; p=bogus"]}).result == "none"


def test_dmarc_dns_failure_is_temperror() -> None:
    outcome = dmarc(msg(), {}, dkim_domains=["example.com"], failing=["_dmarc.example.com"])
    assert outcome.result == "temperror" and outcome.policy is None


def test_dmarc_without_a_usable_from_is_permerror() -> None:
    assert dmarc(msg("From: a@example.com\r\nFrom: b@example.com"), {}).result == "permerror"


# -- the reject decision --------------------------------------------------------------------------

def verdict(outcome: DmarcOutcome) -> AuthVerdict:
    return AuthVerdict(OURS, None, None, (), outcome, None)


@pytest.mark.parametrize(("outcome", "switch", "refused"), [
    (DmarcOutcome("fail", "example.com", DmarcPolicy.REJECT), True, True),
    (DmarcOutcome("fail", "example.com", DmarcPolicy.REJECT), False, False),
    (DmarcOutcome("fail", "example.com", DmarcPolicy.QUARANTINE), True, False),
    (DmarcOutcome("fail", "example.com", DmarcPolicy.NONE), True, False),
    (DmarcOutcome("pass", "example.com", DmarcPolicy.REJECT), True, False),
    (DmarcOutcome("temperror", "example.com", DmarcPolicy.REJECT), True, False),
    (DmarcOutcome("permerror"), True, False),
    (DmarcOutcome("none", "example.com"), True, False),
    (DmarcOutcome("fail", "example.com", DmarcPolicy.REJECT, pct=99), True, False),
])
def test_dmarc_refusal(outcome: DmarcOutcome, switch: bool, refused: bool) -> None:
    reply = dmarc_refusal(verdict(outcome), reject_dmarc_failures=switch)
    if refused:
        assert reply is not None and reply.startswith("550 5.7.1 ")
        assert "example.com" in reply
    else:
        assert reply is None


def prop(result: object, ptype: str, name: str) -> str | None:
    for p in getattr(result, "properties", []):
        if p.type == ptype and p.name == name:
            return str(p.value)
    return None


# -- the field we write ---------------------------------------------------------------------------

def test_field_renders_and_parses_back() -> None:
    v = AuthVerdict(
        OURS,
        SpfOutcome("pass", "mailfrom", "alice@example.com", "example.com", "sender authorized"),
        SpfOutcome("none", "helo", "mx.example.net", "mx.example.net"),
        (DkimOutcome("pass", "example.com", "sel", "@example.com", "rsa-sha256"),
         DkimOutcome("fail", "example.net", "s1", None, "rsa-sha256", "body hash mismatch")),
        DmarcOutcome("pass", "example.com", DmarcPolicy.REJECT, comment="p=reject"),
        "none")
    field = v.header_field()
    assert field.startswith(b"Authentication-Results: mx.example.org;\r\n\t")
    assert field.endswith(b"\r\n") and field.isascii()
    parsed = AuthenticationResultsHeader.parse(field.decode().rstrip("\r\n"))
    assert parsed.authserv_id == OURS
    got = [(r.method, r.result) for r in parsed.results]
    assert got == [("spf", "pass"), ("spf", "none"), ("dkim", "pass"), ("dkim", "fail"),
                   ("arc", "none"), ("dmarc", "pass")]
    assert parsed.results[0].smtp_mailfrom == "alice@example.com"
    assert parsed.results[1].smtp_helo == "mx.example.net"
    assert parsed.results[2].header_d == "example.com"
    assert prop(parsed.results[5], "header", "from") == "example.com"
    assert add_results(b"X: y\r\n\r\nb\r\n", v) == field + b"X: y\r\n\r\nb\r\n"


def test_unsigned_message_reads_dkim_none() -> None:
    v = AuthVerdict(OURS, None, None, (), DmarcOutcome("none"), None)
    parsed = AuthenticationResultsHeader.parse(v.header_field().decode().rstrip("\r\n"))
    assert [(r.method, r.result) for r in parsed.results] == [("dkim", "none"),
                                                              ("dmarc", "none")]


def test_hostile_values_cannot_break_the_field() -> None:
    evil_sender = '"a;b\r\nX-Evil: 1 (c)"@example.com'
    v = AuthVerdict(
        OURS,
        SpfOutcome("fail", "mailfrom", evil_sender, "example.com", "why); dkim=pass (x"),
        SpfOutcome("none", "helo", "bad helo;dkim=pass", "bad helo;dkim=pass"),
        (DkimOutcome("fail", "evil.example; dkim=pass", "s", None, None, "\r\nX: y"),),
        DmarcOutcome("fail", "example.com", DmarcPolicy.REJECT, comment="p=reject)"),
        None)
    field = v.header_field()
    assert field.count(b"\r\n") == len(field.split(b";\r\n\t"))  # only our own line breaks
    parsed = AuthenticationResultsHeader.parse(field.decode().rstrip("\r\n"))
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "fail"), ("spf", "none"), ("dkim", "fail"), ("dmarc", "fail")]
    assert parsed.results[0].smtp_mailfrom == "example.com"  # the domain, not the quoted mess
    assert b"X-Evil" not in field.replace(b"X-Evil?", b"")


def test_authserv_id_must_be_a_name() -> None:
    with pytest.raises(ValueError):
        AuthVerdict("bad id;", None, None, (), DmarcOutcome("none"), None).header_field()


# -- forged fields (RFC 8601 §5), from the attacker's side ----------------------------------------

BODY = b"From: a@example.com\r\nSubject: s\r\n\r\nAuthentication-Results: mx.example.org; x\r\n"


@pytest.mark.parametrize("forged", [
    b"Authentication-Results: mx.example.org; dkim=pass header.d=bank.example\r\n",
    b"authentication-results: MX.Example.ORG; spf=pass\r\n",
    b"Authentication-Results : mx.example.org; spf=pass\r\n",
    b"Authentication-Results: (trust me) mx.example.org (really); dmarc=pass\r\n",
    b"Authentication-Results: \"mx.example.org\"; dmarc=pass\r\n",
    b"Authentication-Results: mx.example.org.; dmarc=pass\r\n",
    b"Authentication-Results: mx.example.org 1; dmarc=pass\r\n",
    b"Authentication-Results:\r\n mx.example.org;\r\n\tdkim=pass\r\n",
    b"Authentication-Results: ((nested) comment) mx.example.org; dmarc=pass\r\n",
])
def test_forged_fields_are_removed(forged: bytes) -> None:
    message = b"Received: from x by y; Sun, 1 Mar 2026 12:00:00 +0000\r\n" + forged + BODY
    cleaned = strip_forged(message, {OURS})
    assert cleaned == b"Received: from x by y; Sun, 1 Mar 2026 12:00:00 +0000\r\n" + BODY


def test_other_servers_fields_stay_byte_for_byte() -> None:
    theirs = (b"Authentication-Results: mx.example.net; dkim=pass\r\n"
              b"Authentication-Results: mx.example.org.evil.example; spf=pass\r\n"
              b"Authentication-Results: (mx.example.org) relay.example; spf=pass\r\n"
              b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n"
              b"X-Authentication-Results: mx.example.org; spf=pass\r\n")
    message = theirs + BODY
    assert strip_forged(message, {OURS}) is message


def test_several_ids_and_repeated_fields() -> None:
    one = b"Authentication-Results: mx.example.org; spf=pass\r\n"
    two = b"Authentication-Results: mail.example.org; spf=pass\r\n"
    keep = b"Authentication-Results: other.example; spf=pass\r\n"
    message = one + keep + two + one + BODY
    assert strip_forged(message, {OURS, "mail.example.org"}) == keep + BODY


def test_header_only_message() -> None:
    assert strip_forged(b"Authentication-Results: mx.example.org; spf=pass", {OURS}) == b""
    assert strip_forged(b"Subject: x\r\nAuthentication-Results: mx.example.org; a=b",
                        {OURS}) == b"Subject: x"


@pytest.mark.parametrize(("value", "ident"), [
    (" mx.example.org; spf=pass", "mx.example.org"),
    ("mx.example.org 1; spf=pass", "mx.example.org"),
    ("(c) \"Mx.Example.Org\" ; none", "mx.example.org"),
    ("mx.example.org;none", "mx.example.org"),
    ("  ", ""),
])
def test_authserv_id_of(value: str, ident: str) -> None:
    assert authserv_id_of(value) == ident


# -- pyspf is pointed at our resolver by a dispatcher, installed once -----------------------------

def test_pyspf_lookup_is_dispatched() -> None:
    assert spf.DNSLookup is _dispatching_lookup
