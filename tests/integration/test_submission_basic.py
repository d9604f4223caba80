"""Submission end to end over real TLS with smtplib, under asyncio and uvloop."""

from __future__ import annotations

import smtplib

import pytest

from tests.support.daemon import RunningDaemon

MSG = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"\r\n"
    b"Line one\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b"caf\xc3\xa9 8-bit\r\n"
)


def test_ehlo_before_starttls_offers_no_auth(daemon: RunningDaemon) -> None:
    s = daemon.smtp(starttls=False)
    code, text = s.ehlo("client.test")
    assert code == 250
    assert b"STARTTLS" in text
    assert b"AUTH" not in text
    s.starttls(context=daemon.client_context())
    code, text = s.ehlo("client.test")
    # Exactly these mechanisms (aiosmtpd once advertised "AUTH LOGIN PLAIN required").
    assert b"AUTH LOGIN PLAIN" in text.split(b"\n")
    assert b"STARTTLS" not in text
    for ext in (b"SIZE 26214400", b"PIPELINING", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SMTPUTF8"):
        assert ext in text
    s.quit()


def test_delivery_lands_byte_for_byte(daemon: RunningDaemon) -> None:
    s = daemon.smtp()
    s.login("alice", "alice-secret-pw")
    refused = s.sendmail("alice@example.test", ["bob@example.test"], MSG)
    assert refused == {}
    s.quit()
    files = daemon.maildir_files("bob")
    assert len(files) == 1
    stored = files[0].read_bytes()
    # RFC 5321 §4.4: the final delivery puts the Return-Path first, then our trace field.
    assert stored.startswith(b"Return-Path: <alice@example.test>\r\nReceived: from ")
    trace, _, rest = stored.partition(b"\r\nFrom: Alice")
    assert b"with ESMTPSA id" in trace
    assert b"(using TLSv1.3 with cipher" in trace
    assert b"for <bob@example.test>" in trace
    # Everything after the trace field is what the client sent, unchanged.
    assert b"From: Alice" + rest == MSG
    assert files[0].parent.name == "new"
    assert f",S={len(stored)}," in files[0].name


def test_login_with_address_and_auth_login(daemon: RunningDaemon) -> None:
    s = daemon.smtp()
    s.ehlo("client.test")
    s.user, s.password = "a.smith@example.test", "alice-secret-pw"
    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235
    s.sendmail("a.smith@example.test", ["alice@example.test"], b"Subject: x\r\n\r\nhi\r\n")
    s.quit()
    stored = daemon.maildir_files("alice")[0].read_bytes()
    # RFC 6409 §8: From, Date and Message-ID were missing and are added.
    assert b"\r\nFrom: <a.smith@example.test>\r\n" in stored
    assert b"\r\nDate: " in stored
    assert b"\r\nMessage-ID: <" in stored
    assert stored.endswith(b"\r\n\r\nhi\r\n")


def test_implicit_tls_465_end_to_end(daemon: RunningDaemon) -> None:
    s = daemon.smtps()
    _, text = s.ehlo("client.test")
    assert b"AUTH LOGIN PLAIN" in text.split(b"\n")
    assert b"STARTTLS" not in text
    # An unknown mechanism is the client's mistake (504), not an internal error (451).
    assert s.docmd("AUTH", "required x")[0] == 504
    s.login("bob@example.test", "bob-secret-pw-2")
    s.sendmail("bob@example.test", ["alice@example.test", "bob@example.test"], MSG.replace(
        b"From: Alice <alice@example.test>", b"From: bob@example.test"))
    s.quit()
    assert len(daemon.maildir_files("alice")) == 1
    assert len(daemon.maildir_files("bob")) == 1


def test_aliases_of_one_account_deliver_once(daemon: RunningDaemon) -> None:
    s = daemon.smtp()
    s.login("bob", "bob-secret-pw-2")
    s.sendmail("bob@example.test", ["alice@example.test", "a.smith@example.test"],
               b"From: bob@example.test\r\n\r\nx\r\n")
    s.quit()
    assert len(daemon.maildir_files("alice")) == 1


def test_wrong_password_gets_535_and_session_goes_on(daemon: RunningDaemon) -> None:
    s = daemon.smtp()
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        s.login("alice", "wrong")
    assert err.value.smtp_code == 535
    assert b"5.7.8" in err.value.smtp_error
    with pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("nobody", "wrong")
    s.login("alice", "alice-secret-pw")
    s.quit()


def test_unknown_local_user_refused(daemon: RunningDaemon) -> None:
    s = daemon.smtp()
    s.login("alice", "alice-secret-pw")
    s.ehlo()
    s.mail("alice@example.test")
    code, text = s.rcpt("nobody@example.test")
    assert (code, text[:5]) == (550, b"5.1.1")
    s.quit()


def test_remote_recipient_accepted_for_relay_after_login(daemon: RunningDaemon) -> None:
    """Submission relays for logged-in users (the queue sends it on); not before login."""
    s = daemon.smtp()
    s.ehlo()
    code, _ = s.mail("alice@example.test")
    assert code == 530
    s.login("alice", "alice-secret-pw")
    s.ehlo()
    s.mail("alice@example.test")
    code, _ = s.rcpt("someone@elsewhere.test")
    assert code == 250
    s.rset()
    s.quit()


def test_send_as_others_account_may_use_other_header_from(daemon: RunningDaemon) -> None:
    s = daemon.smtp()
    s.login("app", "app-secret-pw-3")
    msg = b"From: Billing <billing@example.test>\r\nSubject: invoice\r\n\r\nx\r\n"
    assert s.sendmail("noreply@example.test", ["alice@example.test"], msg) == {}
    # ...but its envelope sender is still checked.
    with pytest.raises(smtplib.SMTPSenderRefused):
        s.sendmail("billing@example.test", ["alice@example.test"], msg)
    s.quit()


def test_smtputf8_and_8bitmime_are_honoured(daemon: RunningDaemon) -> None:
    s = daemon.smtp()
    s.login("alice", "alice-secret-pw")
    s.ehlo()
    msg = ("From: Zoë <alice@example.test>\r\nSubject: Grüße, 日本\r\n\r\n"
           "Prüfung ✓\r\n").encode()
    refused = s.sendmail("alice@example.test", ["bob@example.test"], msg,
                         mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert refused == {}
    s.quit()
    [f] = daemon.maildir_files("bob")
    stored = f.read_bytes()
    assert stored.endswith(b"\r\n\r\n" + "Prüfung ✓\r\n".encode())
    assert "Subject: Grüße, 日本\r\n".encode() in stored
