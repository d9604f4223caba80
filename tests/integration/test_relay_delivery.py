"""Outbound delivery through the whole daemon: submission (smtplib, swaks) -> spool -> remote.

Real parts on loopback only: the daemon in a thread, a DNS stub whose MX records point at
fake upstream SMTP servers (aiosmtpd), trustme certificates. Retries run on a short schedule
from the config ([delivery] retry_schedule); nothing here measures time.
"""

from __future__ import annotations

import logging
import shutil
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config
from tests.support.dnsstub import DnsStub
from tests.support.rawsmtp import RawSMTP, ready_session
from tests.support.relay import (
    daemon_delivery,
    mailbox_messages,
    message_ids,
    mx_zone,
    parse_dsn,
    simple_message,
    spool_ids,
)
from tests.support.upstream import Behaviour, Upstreams, server_context, upstreams
from tests.support.wait import eventually

ALICE_PW = "alice-secret-pw"
SMARTHOST_USER, SMARTHOST_PW = "relayuser", "smarthost pass:=+"
# Bounds for waiting on the queue (never measured).
WAIT = 15.0
# The smarthost bait offers AUTH; aiosmtpd warns when it is not required inside TLS.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

Starter = Callable[..., RunningDaemon]


@pytest.fixture
def dns() -> Iterator[DnsStub]:
    with DnsStub(mx_zone("partner.test", "elsewhere.test")) as stub:
        yield stub


@pytest.fixture
def ups() -> Iterator[Upstreams]:
    yield from upstreams()


@pytest.fixture
def start(tmp_path: Path, ca: trustme.CA) -> Iterator[Starter]:
    """start(**write_config kwargs) -> a running daemon (stopped after the test)."""
    started: list[RunningDaemon] = []

    def factory(loop_kind: str = "asyncio", **kwargs: Any) -> RunningDaemon:
        root = tmp_path / f"d{len(started)}"
        root.mkdir()
        running = start_thread_daemon(write_config(root, ca, **kwargs), ca, loop_kind)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


def submit(d: RunningDaemon, recipients: list[str], data: bytes, *,
           mail_options: tuple[str, ...] = (), rcpt_options: tuple[str, ...] = ()) -> None:
    with d.smtp() as s:
        s.login("alice", ALICE_PW)
        refused = s.sendmail("alice@example.test", recipients, data,
                             mail_options=list(mail_options), rcpt_options=list(rcpt_options))
        assert refused == {}


def drained(d: RunningDaemon) -> bool:
    """Nothing left in the queue (DSNs included: they are queued before their cause goes)."""
    assert d.daemon is not None and d.daemon.runner is not None
    return not d.daemon.runner.entries and not spool_ids(d.data_dir)


def inbox(d: RunningDaemon, account: str) -> list[bytes]:
    return mailbox_messages(d.data_dir, account)


# -- MX delivery --------------------------------------------------------------------------------


def test_mixed_local_and_remote_local_at_once_remote_after_retry(
        start: Starter, dns: DnsStub, ups: Upstreams, loop_kind: str) -> None:
    # The first connection tempfails MAIL: the remote copy waits for the retry; the local
    # copy is in bob's INBOX when the client hears 250.
    up = ups(Behaviour(mail="451 4.3.0 greylisted, try later"), Behaviour())
    d = start(loop_kind, delivery=daemon_delivery(dns, up.port))
    submit(d, ["bob@example.test", "carol@partner.test"], simple_message("mixed@t"))
    assert message_ids(inbox(d, "bob")) == ["mixed@t"]
    assert eventually(lambda: len(up.messages) == 1, WAIT), up.messages
    assert eventually(lambda: drained(d), WAIT)
    (got,) = up.messages
    assert got.rcpt_tos == ["carol@partner.test"] and got.mail_from == "alice@example.test"
    assert got.connection == 1  # the first connection was the greylisted one
    assert b"Message-ID: <mixed@t>" in got.data
    assert b"Return-Path" not in got.data  # added at final delivery only (RFC 5321 §4.4)
    assert message_ids(inbox(d, "bob")) == ["mixed@t"]  # still exactly one local copy
    assert inbox(d, "alice") == []  # no DSN: nothing failed, nobody asked


def test_dropped_and_stalled_connections_are_retried(
        start: Starter, dns: DnsStub, ups: Upstreams, loop_kind: str) -> None:
    up = ups(Behaviour(stall="greeting"), Behaviour(drop="MAIL"), Behaviour(drop="DATA-END"),
             Behaviour(stall="RCPT"), Behaviour())
    d = start(loop_kind, delivery=daemon_delivery(dns, up.port, connect_timeout=1.0,
                                                  command_timeout=1.0, data_timeout=1.0))
    submit(d, ["carol@partner.test"], simple_message("flaky@t"))
    assert eventually(lambda: drained(d), WAIT)
    (got,) = up.messages  # one copy: the dropped DATA was never accepted
    assert got.connection == 4
    assert b"Message-ID: <flaky@t>" in got.data
    assert inbox(d, "alice") == []


@pytest.mark.skipif(not shutil.which("swaks"), reason="swaks is installed by scripts/check.sh")
def test_swaks_submission_to_mx(start: Starter, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(starttls=server_context(trustme.CA(), "mx.partner.test"))
    d = start(delivery=daemon_delivery(dns, up.port))
    ca = d.root / "ca.pem"
    d.ca.cert_pem.write_to_path(str(ca))
    r = subprocess.run(
        ["swaks", "--server", "localhost", "--port", str(d.submission_port), "--tls",
         "--tls-verify", "--tls-ca-path", str(ca), "--helo", "client.test",
         "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", ALICE_PW,
         "--from", "alice@example.test", "--to", "carol@partner.test,bob@example.test",
         "--header", "Message-Id: <swaks@t>", "--header", "Subject: via swaks"],
        capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0 Ok: queued as" in r.stdout
    assert eventually(lambda: len(up.messages) == 1, WAIT)
    (got,) = up.messages
    assert got.rcpt_tos == ["carol@partner.test"]
    assert got.tls  # MX policy "may": STARTTLS used when offered, even unverifiable
    assert b"Subject: via swaks" in got.data
    assert message_ids(inbox(d, "bob")) == ["swaks@t"]


def test_per_recipient_5xx_bounces_and_4xx_is_retried(
        start: Starter, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(Behaviour(rcpt={"gone@partner.test": "550 5.1.1 <gone@partner.test>: no such user",
                             "busy@partner.test": "452 4.2.2 mailbox full, try later"}),
             Behaviour(rcpt={"gone@partner.test": "550 5.1.1 still no such user"}))
    d = start(delivery=daemon_delivery(dns, up.port))
    submit(d, ["carol@partner.test", "gone@partner.test", "busy@partner.test"],
           simple_message("split@t"))
    assert eventually(lambda: drained(d), WAIT)
    # carol on the first attempt, busy on the retry; gone never.
    assert [m.rcpt_tos for m in up.messages] == [["carol@partner.test"], ["busy@partner.test"]]
    assert [m.connection for m in up.messages] == [0, 1]
    (raw,) = inbox(d, "alice")
    assert raw.startswith(b"Return-Path: <>\r\n")  # DSNs come from the null sender
    dsn = parse_dsn(raw)
    assert dsn.message["To"] == "alice@example.test"
    assert dsn.message["Auto-Submitted"] == "auto-replied"
    assert dsn.per_message["reporting-mta"] == "dns; mail.example.test"
    assert len(dsn.recipients) == 1  # only the failed one: busy was delivered later
    gone = dsn.recipient("gone@partner.test")
    assert gone["Action"] == "failed"
    assert gone["Status"] == "5.1.1"
    assert gone["Remote-MTA"].startswith("dns; mx.partner.test")
    assert gone["Diagnostic-Code"] == "smtp; 550 5.1.1 <gone@partner.test>: no such user"
    # Default RET: the header section comes back, not the body.
    assert dsn.returned is not None and dsn.returned["Message-ID"] == "<split@t>"
    assert b"Hello." not in raw.split(b"text/rfc822-headers", 1)[1]


def test_dsn_parameters_are_passed_to_a_dsn_capable_upstream(
        start: Starter, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(dsn=True)
    d = start(delivery=daemon_delivery(dns, up.port))
    submit(d, ["carol@partner.test"], simple_message("dsn@t"),
           mail_options=("RET=HDRS", "ENVID=QQ+2B314159"),
           rcpt_options=("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Carol@Partner.test"))
    assert eventually(lambda: drained(d), WAIT)
    (got,) = up.messages
    # RFC 3461 §5.2.1: passed on exactly as received, case kept (xtext is case-sensitive).
    assert {"ENVID=QQ+2B314159", "RET=HDRS"} <= set(got.mail_params), got.mail_params
    params = got.rcpt_params["carol@partner.test"]
    assert "ORCPT=rfc822;Carol@Partner.test" in params
    assert any(p.upper() in ("NOTIFY=SUCCESS,FAILURE", "NOTIFY=FAILURE,SUCCESS")
               for p in params), params
    # The next hop offers DSN: the success report is its job, not ours.
    assert inbox(d, "alice") == []


def test_relayed_dsn_when_the_upstream_does_not_offer_dsn(
        start: Starter, dns: DnsStub, ups: Upstreams) -> None:
    up = ups(dsn=False)
    d = start(delivery=daemon_delivery(dns, up.port))
    submit(d, ["carol@partner.test"], simple_message("relayed@t"),
           mail_options=("ENVID=env-42",),
           rcpt_options=("NOTIFY=SUCCESS", "ORCPT=rfc822;carol@partner.test"))
    assert eventually(lambda: drained(d), WAIT)
    (got,) = up.messages
    assert got.mail_params == [p for p in got.mail_params if not p.startswith(("RET", "ENVID"))]
    assert got.rcpt_params["carol@partner.test"] == []
    (raw,) = inbox(d, "alice")
    dsn = parse_dsn(raw)
    assert dsn.per_message["original-envelope-id"] == "env-42"
    carol = dsn.recipient("carol@partner.test")
    assert carol["Action"] == "relayed"  # RFC 3464 §2.3.3: sent on to a non-DSN MTA
    assert carol["Status"].startswith("2.")
    assert carol["Original-Recipient"].replace(" ", "") == "rfc822;carol@partner.test"


def test_bounce_of_a_null_sender_message_produces_no_dsn(
        start: Starter, dns: DnsStub, ups: Upstreams, caplog: pytest.LogCaptureFixture) -> None:
    # A bounce from the internet for a user that only the legacy server knew, which refuses
    # it: the failure must not produce a DSN (to <>: RFC 3461 §6.2, RFC 5321 §4.5.5).
    caplog.set_level(logging.INFO, logger="mailkeep")
    legacy = ups(Behaviour(rcpt={"gone@example.test": "550 5.1.1 user unknown"}))
    d = start(delivery=daemon_delivery(dns, 25, routes={"legacy": {
                  "type": "smarthost", "host": "127.0.0.1", "port": legacy.port,
                  "tls": "none"}},
                  local_domains={"example.test": {"fallback_route": "legacy"}}),
              listeners={"inbound": {"protocol": "smtp", "tls": "starttls"}})
    with smtplib.SMTP("127.0.0.1", d.ports["inbound"], local_hostname="mx.sender.test",
                      timeout=10) as s:
        s.sendmail("", ["gone@example.test"],
                   simple_message("bounce@t", sender="MAILER-DAEMON@sender.test",
                                  to="someone@example.test"))
    assert eventually(lambda: drained(d), WAIT)
    assert legacy.connections >= 1 and legacy.messages == []
    assert any("no failed notice" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    assert not any("notice queued" in r.getMessage() for r in caplog.records)
    for account in ("alice", "bob", "app"):
        assert inbox(d, account) == []


# -- TLS ----------------------------------------------------------------------------------------


def test_tls_verify_failure_is_not_downgraded(start: Starter, dns: DnsStub, ups: Upstreams,
                                              ca: trustme.CA, tmp_path: Path) -> None:
    # The upstream's certificate comes from a CA nobody trusts (a man in the middle).
    up = ups(starttls=server_context(trustme.CA(), "mx.partner.test"))
    ca_file = tmp_path / "trusted-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    d = start(delivery=daemon_delivery(dns, up.port, ca_file=str(ca_file),
                                       tls_policy={"partner.test": "verify"}))
    submit(d, ["carol@partner.test"], simple_message("verify@t"))
    # Retried (the schedule is fast), never sent.
    assert eventually(lambda: up.connections >= 3, WAIT), up.connections
    assert up.messages == []
    plain = [c.split(" ")[0].upper() for c in up.commands(tls=False)]
    assert set(plain) <= {"EHLO", "STARTTLS"}, plain  # nothing else ever in plaintext
    assert not any(c.upper().startswith(("MAIL", "RCPT", "DATA")) for c in up.commands())
    assert d.daemon is not None and d.daemon.runner is not None
    (entry,) = d.daemon.runner.entries.values()
    assert entry.recipients[0].status == "pending"  # deferred: still queued
    assert "4.7.5" in entry.recipients[0].reply and "certificate" in entry.recipients[0].reply
    assert spool_ids(d.data_dir) == [entry.id]
    assert inbox(d, "alice") == []


# -- smarthost ----------------------------------------------------------------------------------


def test_smarthost_with_starttls_and_auth(start: Starter, dns: DnsStub, ups: Upstreams,
                                          ca: trustme.CA, tmp_path: Path) -> None:
    up = ups(starttls=server_context(ca, "127.0.0.1"), auth=(SMARTHOST_USER, SMARTHOST_PW))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    creds = tmp_path / "smarthost.secret"
    creds.write_text(f"{SMARTHOST_USER}\n{SMARTHOST_PW}\n")
    creds.chmod(0o600)
    d = start(delivery=daemon_delivery(dns, 25, default_route="provider", routes={"provider": {
        "type": "smarthost", "host": "127.0.0.1", "port": up.port, "tls": "starttls",
        "credentials_file": str(creds), "ca_file": str(ca_file)}}))
    submit(d, ["carol@partner.test", "dave@elsewhere.test", "bob@example.test"],
           simple_message("smarthost@t"))
    assert eventually(lambda: drained(d), WAIT)
    (got,) = up.messages  # both remote domains in one transaction through the smarthost
    assert sorted(got.rcpt_tos) == ["carol@partner.test", "dave@elsewhere.test"]
    assert got.tls and got.authenticated_as == SMARTHOST_USER
    assert up.auth_commands == [("PLAIN", True)]
    assert SMARTHOST_PW.encode() not in up.received(tls=False)
    assert dns.asked("partner.test", "MX") == 0  # the smarthost route needs no MX lookup
    assert message_ids(inbox(d, "bob")) == ["smarthost@t"]


# -- split delivery -----------------------------------------------------------------------------


def test_split_delivery_unknown_local_part_goes_to_the_legacy_server(
        start: Starter, dns: DnsStub, ups: Upstreams) -> None:
    legacy = ups()
    d = start(delivery=daemon_delivery(dns, 25, routes={"legacy": {
        "type": "smarthost", "host": "127.0.0.1", "port": legacy.port, "tls": "none"}},
        local_domains={"example.test": {"fallback_route": "legacy"}}))
    submit(d, ["bob@example.test", "olduser@example.test"], simple_message("split-dlv@t"))
    assert eventually(lambda: drained(d), WAIT)
    (got,) = legacy.messages
    assert got.rcpt_tos == ["olduser@example.test"]  # the known user is not sent away
    assert message_ids(inbox(d, "bob")) == ["split-dlv@t"]
    assert inbox(d, "alice") == []


# Local parts that carry a route: a legacy server handed these may relay them on.
SOURCE_ROUTED = [
    "carol%remote.test@example.test",
    "CAROL%REMOTE.TEST@EXAMPLE.TEST",
    "carol%remote.test%example.test@example.test",
    "remote.test!carol@example.test",
    "example.test!remote.test!carol@example.test",
    '"carol@remote.test"@example.test',
    '"carol\\@remote.test"@example.test',
    '"carol%remote.test"@example.test',
    "@example.test:carol%remote.test@example.test",
]


def test_split_delivery_forwards_no_source_route_from_any_door(
        start: Starter, dns: DnsStub, ups: Upstreams) -> None:
    # The attacker's side: the legacy server behind fallback_route may well be the old open
    # relay that reads "%" and "!" as routes. On every door (the anonymous MX, a logged-in
    # user, an application connector without may_relay) such a recipient is refused at
    # RCPT, and the legacy server is handed only the plain unknown local part.
    legacy = ups()
    d = start(delivery=daemon_delivery(dns, 25, routes={"legacy": {
        "type": "smarthost", "host": "127.0.0.1", "port": legacy.port, "tls": "none"}},
        local_domains={"example.test": {"fallback_route": "legacy"}}),
        listeners={"inbound": {"protocol": "smtp", "tls": "starttls"},
                   "apps": {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
                            "senders": ["@example.test"]}})
    ctx = d.client_context()
    doors = {
        "inbound": (lambda: _raw(d.ports["inbound"]), "someone@elsewhere.test"),
        "submission": (lambda: ready_session(d.submission_port, ctx), "alice@example.test"),
        "apps": (lambda: _raw(d.ports["apps"]), "app@example.test"),
    }
    for door, (connect, sender) in doors.items():
        with connect() as c:
            assert c.cmd(f"MAIL FROM:<{sender}>").code == 250
            for address in SOURCE_ROUTED:
                r = c.cmd(f"RCPT TO:<{address}>")
                assert (r.code, r.enhanced) == (550, "5.7.1"), (door, address, r)
            # The oracle: a plain unknown local part does go to the legacy server.
            assert c.cmd("RCPT TO:<olduser@example.test>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(simple_message(f"routed-{door}@t", sender=sender,
                                  to="olduser@example.test") + b".\r\n")
            assert c.reply().code == 250
    assert eventually(lambda: drained(d), WAIT)
    assert sorted(m.rcpt_tos[0] for m in legacy.messages) == ["olduser@example.test"] * 3
    assert all(len(m.rcpt_tos) == 1 for m in legacy.messages)
    received = legacy.received().lower()
    assert b"remote.test" not in received and b"%" not in received and b"!carol" not in received


def _raw(port: int) -> RawSMTP:
    c = RawSMTP(port)
    c.greeting()
    c.ehlo("client.test")
    return c
