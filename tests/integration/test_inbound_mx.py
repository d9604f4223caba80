"""The inbound MX connector (protocol = "smtp"): mail from the internet for local users.

Real parts: the daemon in a thread with an `smtp` listener, a DNS stub on loopback that
publishes SPF, DKIM and DMARC records for the sending domains ([delivery] dns_servers points
the inbound checks at it), messages DKIM-signed with relay/dkim.py, smtplib and a raw client.
"""

from __future__ import annotations

import email
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from authres import AuthenticationResultsHeader

from mailkeep.relay.dkim import keygen, record_name, sign, txt_strings, txt_value
from tests.support.daemon import HOSTNAME, RunningDaemon, start_thread_daemon, write_config
from tests.support.dnsstub import DnsStub, Zone
from tests.support.rawsmtp import RawSMTP
from tests.support.relay import FAST, mailbox_messages, message_ids

SELECTOR = "s1"
HELO = "mx.sender.test"


def signed_message(pem: bytes, message_id: str, *, author: str = "news@sender.test",
                   extra_top: bytes = b"") -> bytes:
    body = (f"From: Sender News <{author}>\r\nTo: bob@example.test\r\n"
            f"Subject: monthly figures\r\nDate: Sun, 01 Mar 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{message_id}>\r\n\r\nThe figures.\r\n").encode()
    return extra_top + sign(body, "sender.test", SELECTOR, pem)


@pytest.fixture(scope="module")
def dkim_pem() -> bytes:
    return keygen("sender.test", SELECTOR)[0]


@pytest.fixture(scope="module")
def dns(dkim_pem: bytes) -> Iterator[DnsStub]:
    zone = Zone()
    # sender.test: SPF allows 127.0.0.1, a DKIM key, DMARC p=reject (it passes here).
    zone.txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")
    zone.add(record_name("sender.test", SELECTOR), "TXT",
             " ".join(f'"{s}"' for s in txt_strings(txt_value(dkim_pem))))
    zone.txt("_dmarc.sender.test", "v=DMARC1; p=reject")
    zone.txt(HELO, "v=spf1 ip4:127.0.0.1 -all")
    # strict.test: SPF allows nobody here, no DKIM, DMARC p=reject: a forgery fails DMARC.
    zone.txt("strict.test", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("_dmarc.strict.test", "v=DMARC1; p=reject")
    with DnsStub(zone) as stub:
        yield stub


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA,
       dns: DnsStub) -> Iterator[RunningDaemon]:
    root = tmp_path_factory.mktemp("mx")
    config = write_config(
        root, ca, delivery={**FAST, "dns_servers": [dns.address], "mta_sts": False},
        listeners={"inbound": {"protocol": "smtp", "tls": "starttls"},
                   "strict": {"protocol": "smtp", "tls": "starttls",
                              "reject_dmarc_failures": True}})
    running = start_thread_daemon(config, ca)
    yield running
    running.stop()


def inbox(d: RunningDaemon, account: str) -> list[bytes]:
    return mailbox_messages(d.data_dir, account)


def find(d: RunningDaemon, account: str, message_id: str) -> email.message.Message:
    for raw in inbox(d, account):
        if message_ids([raw]) == [message_id]:
            return email.message_from_bytes(raw)
    raise AssertionError(f"{message_id} not in {account}'s INBOX")


def results_of(msg: email.message.Message) -> list[AuthenticationResultsHeader]:
    fields = msg.get_all("Authentication-Results") or []
    return [AuthenticationResultsHeader.parse("Authentication-Results: " + " ".join(
        str(f).split())) for f in fields]


def methods(header: AuthenticationResultsHeader) -> dict[str, str]:
    """method -> result; SPF of the HELO identity is "spf-helo", of MAIL FROM "spf"."""
    out: dict[str, str] = {}
    for r in header.results:
        names = {f"{p.type}.{p.name}" for p in r.properties}
        out["spf-helo" if "smtp.helo" in names else r.method] = r.result
    return out


def connect(d: RunningDaemon, listener: str = "inbound") -> RawSMTP:
    c = RawSMTP(d.ports[listener])
    c.greeting()
    return c


def test_anonymous_null_sender_starttls_offered_not_required_no_auth(
        mx: RunningDaemon) -> None:
    with connect(mx) as c:
        ehlo = c.ehlo(HELO)
        words = {line.split(" ")[0].upper() for line in ehlo.lines}
        assert "STARTTLS" in words  # RFC 3207: offered
        assert not any(w.startswith("AUTH") for w in words)  # nobody logs in on an MX
        assert c.cmd("AUTH PLAIN AGFsaWNlAGFsaWNlLXNlY3JldC1wdw==").code == 502
        # Plaintext mail is accepted: a public MX must not require TLS (RFC 3207 §4).
        assert c.cmd("MAIL FROM:<>").code == 250
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"From: MAILER-DAEMON@sender.test\r\nSubject: bounce\r\n"
               b"Message-ID: <null@t>\r\n\r\nbounced.\r\n.\r\n")
        assert c.reply().code == 250
    msg = find(mx, "bob", "null@t")
    assert msg["Return-Path"] == "<>"
    # And inside TLS, too.
    ctx = ssl.create_default_context()
    mx.ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", mx.ports["inbound"], local_hostname=HELO,
                      timeout=10) as s:
        s._host = HOSTNAME  # type: ignore[attr-defined]
        s.starttls(context=ctx)
        assert s.sendmail("", ["bob@example.test"],
                          b"Subject: tls\r\nMessage-ID: <null-tls@t>\r\n\r\nx\r\n") == {}
    assert "TLS" in find(mx, "bob", "null-tls@t")["Received"]


def test_other_domains_are_refused_relay_access_denied(mx: RunningDaemon) -> None:
    with connect(mx) as c:
        c.ehlo(HELO)
        assert c.cmd("MAIL FROM:<news@sender.test>").code == 250
        r = c.cmd("RCPT TO:<carol@partner.test>")
        assert (r.code, r.enhanced) == (554, "5.7.1") and "relay access denied" in r.text
        r = c.cmd("RCPT TO:<nobody@example.test>")
        assert (r.code, r.enhanced) == (550, "5.1.1")
        assert c.cmd("RCPT TO:<Bob@EXAMPLE.test>").code == 250


@pytest.mark.parametrize("sender", ["alice@example.test", "nobody@EXAMPLE.TEST"])
def test_local_domain_envelope_sender_is_refused(mx: RunningDaemon, sender: str) -> None:
    with connect(mx) as c:
        c.ehlo(HELO)
        r = c.cmd(f"MAIL FROM:<{sender}>")
        assert (r.code, r.enhanced) == (553, "5.7.1"), r


def test_authentication_results_spf_dkim_dmarc_and_forged_field_removed(
        mx: RunningDaemon, dkim_pem: bytes, dns: DnsStub) -> None:
    forged = (f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=bank.test; "
              "dmarc=pass header.from=bank.test\r\n"
              "Authentication-Results: other.example; spf=pass smtp.mailfrom=x.test\r\n"
              ).encode()
    data = signed_message(dkim_pem, "signed@t", extra_top=forged)
    with smtplib.SMTP("127.0.0.1", mx.ports["inbound"], local_hostname=HELO,
                      timeout=30) as s:
        assert s.sendmail("bounces@sender.test", ["bob@example.test"], data) == {}
    msg = find(mx, "bob", "signed@t")
    headers = results_of(msg)
    ours = [h for h in headers if h.authserv_id == HOSTNAME]
    assert len(ours) == 1, [str(h) for h in headers]  # the forged one is gone
    got = methods(ours[0])
    assert got["spf"] == "pass" and got["spf-helo"] == "pass"
    assert got["dkim"] == "pass"
    assert got["dmarc"] == "pass"
    assert "bank.test" not in str(msg)
    # Another server's field is not ours to remove (RFC 8601 §5).
    assert [h.authserv_id for h in headers if h.authserv_id != HOSTNAME] == ["other.example"]
    # The verdicts came from the configured DNS server ([delivery] dns_servers), the stub.
    assert dns.asked("_dmarc.sender.test", "TXT") >= 1
    assert dns.asked(record_name("sender.test", SELECTOR), "TXT") >= 1


def test_dmarc_reject_switch(mx: RunningDaemon) -> None:
    forgery = (b"From: CEO <ceo@strict.test>\r\nTo: bob@example.test\r\n"
               b"Subject: wire the money\r\nMessage-ID: <forged@t>\r\n\r\nNow.\r\n")
    with smtplib.SMTP("127.0.0.1", mx.ports["strict"], local_hostname=HELO,
                      timeout=30) as s:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail("ceo@strict.test", ["bob@example.test"], forgery)
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error.startswith(b"5.7.1")
    # The listener without the switch accepts it and records the failure.
    with smtplib.SMTP("127.0.0.1", mx.ports["inbound"], local_hostname=HELO,
                      timeout=30) as s:
        assert s.sendmail("ceo@strict.test", ["bob@example.test"], forgery) == {}
    msg = find(mx, "bob", "forged@t")
    (ours,) = [h for h in results_of(msg) if h.authserv_id == HOSTNAME]
    got = methods(ours)
    assert got["spf"] == "fail" and got["dmarc"] == "fail"
    assert message_ids(inbox(mx, "bob")).count("forged@t") == 1


def test_dmarc_pass_is_not_refused_by_the_switch(mx: RunningDaemon, dkim_pem: bytes) -> None:
    data = signed_message(dkim_pem, "strict-pass@t")
    with smtplib.SMTP("127.0.0.1", mx.ports["strict"], local_hostname=HELO,
                      timeout=30) as s:
        assert s.sendmail("bounces@sender.test", ["bob@example.test"], data) == {}
    (ours,) = [h for h in results_of(find(mx, "bob", "strict-pass@t"))
               if h.authserv_id == HOSTNAME]
    assert methods(ours)["dmarc"] == "pass"


def test_every_configured_dns_server_is_asked_on_its_own_port(
        tmp_path: Path, ca: trustme.CA, dns: DnsStub, dkim_pem: bytes) -> None:
    # dns_servers = [a server that fails every lookup (SERVFAIL), the good one]: the
    # resolver moves on to the second, on the second's port.
    names = ["sender.test", "_dmarc.sender.test", record_name("sender.test", SELECTOR), HELO]
    broken = Zone()
    for name in names:
        broken.servfail(name)
    with DnsStub(broken) as bad:
        config = write_config(
            tmp_path, ca, delivery={**FAST, "dns_servers": [bad.address, dns.address],
                                    "mta_sts": False},
            listeners={"inbound": {"protocol": "smtp", "tls": "starttls"}})
        d = start_thread_daemon(config, ca)
        try:
            with smtplib.SMTP("127.0.0.1", d.ports["inbound"], local_hostname=HELO,
                              timeout=30) as s:
                assert s.sendmail("bounces@sender.test", ["bob@example.test"],
                                  signed_message(dkim_pem, "two-servers@t")) == {}
            msg = find(d, "bob", "two-servers@t")
        finally:
            d.stop()
        assert bad.asked("_dmarc.sender.test") >= 1  # the first server was tried
    (ours,) = [h for h in results_of(msg) if h.authserv_id == HOSTNAME]
    got = methods(ours)
    assert (got["spf"], got["dkim"], got["dmarc"]) == ("pass", "pass", "pass"), str(ours)


@pytest.mark.parametrize("servers", [True, False])
def test_inbound_checks_keep_to_delivery_dns_timeout(tmp_path: Path, ca: trustme.CA,
                                                     dns: DnsStub, servers: bool) -> None:
    # `delivery.dns_timeout` bounds every lookup of the inbound checks as it does outbound
    # ones, whether the servers are configured or the host's resolv.conf is used.
    delivery: dict[str, object] = {**FAST, "dns_timeout": 1.25, "mta_sts": False}
    if servers:
        delivery["dns_servers"] = [dns.address]
    config = write_config(tmp_path, ca, delivery=delivery,
                          listeners={"inbound": {"protocol": "smtp", "tls": "starttls"}})
    d = start_thread_daemon(config, ca)
    try:
        assert d.daemon is not None
        resolver = d.daemon.services.auth_resolver
        assert resolver is not None
        assert (resolver.lifetime, resolver.timeout) == (1.25, 1.25)
        if servers:
            assert [(ns.address, ns.port) for ns in resolver.nameservers  # type: ignore[union-attr]
                    ] == [(dns.host, dns.port)]
            # And it is the one the checks use: the stub hears the SPF and DMARC lookups.
            before = dns.asked("_dmarc.sender.test")
            with smtplib.SMTP("127.0.0.1", d.ports["inbound"], local_hostname=HELO,
                              timeout=30) as s:
                assert s.sendmail("bounces@sender.test", ["bob@example.test"],
                                  simple(f"timeout-{servers}@t")) == {}
            assert dns.asked("_dmarc.sender.test") > before
    finally:
        d.stop()


def simple(message_id: str) -> bytes:
    return (f"From: news@sender.test\r\nTo: bob@example.test\r\nSubject: s\r\n"
            f"Message-ID: <{message_id}>\r\n\r\nbody\r\n").encode()
