"""Application connectors (protocol = "relay"): the legacy relay's users, scoped.

One daemon for the module with several connectors, a DNS stub and a fake upstream as the
internet. Checked from the client's side: who may connect (clients), without TLS (legacy
devices), which senders (envelope and header), where to (may_relay), how often (rate), AUTH
only inside TLS; then what the internet received: DKIM-signed mail, verified with dkimpy
against the key published in the DNS stub.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
import trustme

from mailkeep.relay.authdns import make_resolver, txt_records
from mailkeep.relay.dkim import keygen, record_name, txt_strings, txt_value, write_key
from tests.support.daemon import HOSTNAME, RunningDaemon, start_thread_daemon, write_config
from tests.support.dnsstub import DnsStub
from tests.support.rawsmtp import RawSMTP, plain_blob
from tests.support.relay import (
    daemon_delivery,
    mailbox_messages,
    message_ids,
    mx_zone,
    simple_message,
)
from tests.support.upstream import Upstream
from tests.support.wait import eventually

SELECTOR = "mk1"
WAIT = 15.0
LOCAL_ONLY = "legacy"     # a printer: no TLS, no AUTH, local recipients only
APPS = "apps"             # an application that relays to the internet without a password
SECURE = "secure"         # AUTH required, inside TLS
LIMITED = "limited"       # 3 messages a minute

CONNECTORS = {
    LOCAL_ONLY: {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
                 "auth": "none", "senders": ["@example.test"]},
    # The few lines that keep an application working after the open relay is gone.
    APPS: {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
           "senders": ["noreply@example.test", "billing@example.test"], "may_relay": True},
    SECURE: {"protocol": "relay", "tls": "starttls", "clients": ["127.0.0.0/8"],
             "auth": "required", "may_relay": True},
    LIMITED: {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
              "senders": ["@example.test"], "rate": "3/min"},
}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture(scope="module")
def dkim_pem() -> bytes:
    return keygen("example.test", SELECTOR)[0]


@pytest.fixture(scope="module")
def dns(dkim_pem: bytes) -> Iterator[DnsStub]:
    zone = mx_zone("partner.test")
    zone.add(record_name("example.test", SELECTOR), "TXT",
             " ".join(f'"{s}"' for s in txt_strings(txt_value(dkim_pem))))
    with DnsStub(zone) as stub:
        yield stub


@pytest.fixture(scope="module")
def internet() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA, dns: DnsStub,
          internet: Upstream, dkim_pem: bytes) -> Iterator[RunningDaemon]:
    root = tmp_path_factory.mktemp("relay")
    write_key(root / "dkim.key", dkim_pem)
    config = write_config(root, ca, delivery=daemon_delivery(dns, internet.port),
                          dkim={"example.test": {"selector": SELECTOR, "key": "dkim.key"}},
                          listeners=CONNECTORS)
    records = Records()
    logger = logging.getLogger("mailkeep")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        running = start_thread_daemon(config, ca)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    running.extra["log"] = records.lines
    yield running
    running.stop()


def delivered_upstream(up: Upstream, message_id: str) -> list[bytes]:
    return [m.data for m in up.messages if f"Message-ID: <{message_id}>".encode() in m.data]


def connect(d: RunningDaemon, name: str, source: str | None = None) -> RawSMTP:
    return RawSMTP(d.ports[name], source=source)


# -- clients ------------------------------------------------------------------------------------


def test_a_client_outside_clients_is_refused_at_connect(relay: RunningDaemon) -> None:
    with connect(relay, APPS, source="127.0.0.2") as c:
        r = c.reply()
        assert (r.code, r.enhanced) == (554, "5.7.1"), r
        assert c.closed()
    # The same address is welcome where the connector's clients include it.
    with connect(relay, SECURE, source="127.0.0.2") as c:
        assert c.greeting().code == 220


# -- a legacy device without TLS ----------------------------------------------------------------


def test_legacy_device_without_tls_or_auth_delivers_locally(relay: RunningDaemon) -> None:
    assert any(line.startswith("WARNING") and "without TLS" in line and LOCAL_ONLY in line
               for line in relay.extra["log"]), relay.extra["log"]
    with smtplib.SMTP("127.0.0.1", relay.ports[LOCAL_ONLY], timeout=10) as s:
        s.ehlo("printer.lan")
        assert not s.has_extn("starttls") and not s.has_extn("auth")
        assert s.sendmail("scanner@example.test", ["bob@example.test"],
                          simple_message("scan@t", sender="scanner@example.test",
                                         to="bob@example.test")) == {}
    assert "scan@t" in message_ids(mailbox_messages(relay.data_dir, "bob"))


def test_may_relay_false_refuses_other_domains(relay: RunningDaemon) -> None:
    with connect(relay, LOCAL_ONLY) as c:
        c.greeting()
        c.ehlo("printer.lan")
        assert c.cmd("MAIL FROM:<scanner@example.test>").code == 250
        r = c.cmd("RCPT TO:<carol@partner.test>")
        assert (r.code, r.enhanced) == (554, "5.7.1") and "relay access denied" in r.text


# -- senders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["alice@example.test", "noreply@partner.test",
                                    "noreply@example.test.evil.test"])
def test_envelope_sender_outside_senders_is_refused(relay: RunningDaemon, sender: str) -> None:
    with connect(relay, APPS) as c:
        c.greeting()
        c.ehlo("app.lan")
        r = c.cmd(f"MAIL FROM:<{sender}>")
        assert (r.code, r.enhanced) == (553, "5.7.1"), r


@pytest.mark.parametrize("header_from", ["ceo@example.test", "Billing <billing@partner.test>"])
def test_header_from_outside_senders_is_refused(relay: RunningDaemon, header_from: str,
                                                internet: Upstream) -> None:
    data = (f"From: {header_from}\r\nTo: carol@partner.test\r\nSubject: invoice\r\n"
            "Message-ID: <hdr-spoof@t>\r\n\r\nPay.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", relay.ports[APPS], timeout=10) as s:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail("noreply@example.test", ["carol@partner.test"], data)
        assert refused.value.smtp_code == 553
    assert delivered_upstream(internet, "hdr-spoof@t") == []


# -- the application keeps working --------------------------------------------------------------


def test_application_relays_without_a_password_and_mail_is_dkim_signed(
        relay: RunningDaemon, internet: Upstream, dns: DnsStub) -> None:
    data = simple_message("app-1@t", sender="Billing <billing@example.test>")
    with smtplib.SMTP("127.0.0.1", relay.ports[APPS], timeout=10) as s:
        assert s.sendmail("noreply@example.test", ["carol@partner.test", "bob@example.test"],
                          data) == {}
    assert "app-1@t" in message_ids(mailbox_messages(relay.data_dir, "bob"))
    assert eventually(lambda: delivered_upstream(internet, "app-1@t") != [], WAIT)
    (sent,) = delivered_upstream(internet, "app-1@t")
    assert sent.startswith(b"DKIM-Signature:")
    resolver = make_resolver([dns.host], port=dns.port)

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return b"".join(txt_records(resolver, name.decode().rstrip("."))[:1])

    assert dkim.verify(sent, dnsfunc=lookup)
    assert not dkim.verify(sent.replace(b"Hello.", b"Hullo."), dnsfunc=lookup)


# -- AUTH required ------------------------------------------------------------------------------


def test_auth_required_needs_starttls_then_auth(relay: RunningDaemon,
                                               internet: Upstream) -> None:
    ctx = ssl.create_default_context()
    relay.ca.configure_trust(ctx)
    with connect(relay, SECURE) as c:
        c.greeting()
        before = c.ehlo("app.lan")
        assert not any(line.upper().startswith("AUTH") for line in before.lines)
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 530  # STARTTLS first
        r = c.cmd(f"AUTH PLAIN {plain_blob('alice')}")
        assert r.code != 235
        c.starttls(ctx)
        after = c.ehlo("app.lan")
        assert any(line.upper().startswith("AUTH") for line in after.lines)
        r = c.cmd("MAIL FROM:<alice@example.test>")
        assert (r.code, r.enhanced) == (530, "5.7.0"), r  # TLS is not a login
        c.login("alice")
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        assert c.cmd("RCPT TO:<carol@partner.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(simple_message("secure@t") + b".\r\n")
        assert c.reply().code == 250
        # Logged in as alice: someone else's address is still refused.
        r = c.cmd("MAIL FROM:<bob@example.test>")
        assert (r.code, r.enhanced) == (553, "5.7.1")
    assert eventually(lambda: delivered_upstream(internet, "secure@t") != [], WAIT)


# -- rate ---------------------------------------------------------------------------------------


def test_rate_limit_fourth_message_gets_450(relay: RunningDaemon) -> None:
    replies = []
    with smtplib.SMTP("127.0.0.1", relay.ports[LIMITED], timeout=10) as s:
        s.ehlo("robot.lan")
        for n in range(4):
            code, text = s.mail("robot@example.test")
            replies.append((code, text))
            if code == 250:
                s.rcpt("bob@example.test")
                s.data(simple_message(f"rate-{n}@t", sender="robot@example.test"))
            else:
                s.rset()
    assert [code for code, _ in replies] == [250, 250, 250, 450]
    assert replies[3][1].startswith(b"4.7.1")
    ids = message_ids(mailbox_messages(relay.data_dir, "bob"))
    assert [f"rate-{n}@t" in ids for n in range(4)] == [True, True, True, False]


# -- check-config -------------------------------------------------------------------------------


@pytest.mark.parametrize("everyone", ["0.0.0.0/0", "::/0"])
def test_check_config_refuses_an_open_relay(tmp_path: Path, ca: trustme.CA,
                                            everyone: str) -> None:
    config = write_config(tmp_path, ca, listeners={"oldrelay": {
        "protocol": "relay", "tls": "none", "clients": ["192.0.2.0/24", everyone],
        "auth": "none", "senders": ["@example.test"], "may_relay": True}})
    r = subprocess.run([sys.executable, "-m", "mailkeep", "check-config", "--config",
                        str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "listeners.oldrelay.may_relay" in out and "open relay" in out, out


def test_check_config_accepts_the_scoped_connector(tmp_path: Path, ca: trustme.CA) -> None:
    config = write_config(tmp_path, ca, listeners={APPS: CONNECTORS[APPS]})
    r = subprocess.run([sys.executable, "-m", "mailkeep", "check-config", "--config",
                        str(config)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hostname_is_in_the_greeting_of_every_connector(relay: RunningDaemon) -> None:
    for name in CONNECTORS:
        with connect(relay, name) as c:
            assert HOSTNAME in c.greeting().text
