"""Attacker-side tests of SMTP submission: every security promise, against the real daemon.

Each test runs under asyncio and uvloop (the `daemon` fixture) over real TLS on loopback, and
each would fail if the protection it names were taken out. Raw sockets (tests.support.rawsmtp)
are used where smtplib would refuse to send the bytes an attacker sends.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import random
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.support.daemon import USERS, RunningDaemon
from tests.support.rawsmtp import (
    RawSMTP,
    Reply,
    ServerClosed,
    close_all,
    plain_blob,
    ready_session,
)
from tests.support.wait import eventually

ALICE_PW = USERS["alice"][0]


@pytest.fixture(autouse=True)
def _close_clients(daemon: RunningDaemon) -> Iterator[None]:
    """Torn down before `daemon`: no client left open can delay the daemon's stop."""
    yield
    close_all()


def _normal_message_goes_through(daemon: RunningDaemon, subject: str = "after") -> None:
    """A fresh, honest client still gets mail delivered: the daemon survived."""
    s = daemon.smtp(timeout=10)
    s.login("alice", ALICE_PW)
    refused = s.sendmail("alice@example.test", ["bob@example.test"],
                         f"From: alice@example.test\r\nSubject: {subject}\r\n\r\nok\r\n".encode())
    assert refused == {}
    s.quit()
    assert any(f"Subject: {subject}".encode() in f.read_bytes()
               for f in daemon.maildir_files("bob"))


def _send_data(c: RawSMTP, message: bytes, *, mail_from: str = "alice@example.test",
               rcpt: str = "bob@example.test") -> Reply:
    """One transaction; `message` is sent as is (already dot-stuffed), then CRLF.CRLF."""
    r = c.cmd(f"MAIL FROM:<{mail_from}>")
    assert r.code == 250, r
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    assert r.code == 250, r
    r = c.cmd("DATA")
    assert r.code == 354, r
    c.send(message + b"\r\n.\r\n")
    return c.reply()


# -- 1. nothing that matters before TLS on 587 ----------------------------------------------

def test_no_auth_and_no_mail_before_starttls(daemon: RunningDaemon) -> None:
    c = RawSMTP(daemon.submission_port)
    c.greeting()
    ehlo = c.ehlo()
    assert "STARTTLS" in ehlo.lines
    assert not any(line.upper().startswith("AUTH") for line in ehlo.lines), ehlo
    for command in (f"AUTH PLAIN {plain_blob('alice')}", "AUTH LOGIN",
                    f"AUTH LOGIN {base64.b64encode(b'alice').decode()}",
                    "MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>", "DATA",
                    "VRFY bob@example.test"):
        r = c.cmd(command)
        assert (r.code, r.enhanced) == (530, "5.7.0"), (command, str(r))
    # The connection is still fine for what is allowed before TLS.
    assert c.cmd("NOOP").code == 250
    c.starttls(daemon.client_context())
    assert any(line.startswith("AUTH ") for line in c.ehlo().lines)
    c.login("alice")
    c.close()
    assert daemon.maildir_files("bob") == []


def test_smtplib_login_refused_before_starttls(daemon: RunningDaemon) -> None:
    s = daemon.smtp(starttls=False)
    s.ehlo("client.test")
    with pytest.raises(smtplib.SMTPNotSupportedError):
        s.login("alice", ALICE_PW)   # smtplib sees no AUTH offered
    code, text = s.docmd("AUTH", f"PLAIN {plain_blob('alice')}")
    assert (code, text[:5]) == (530, b"5.7.0")
    s.close()


def test_state_is_reset_by_starttls(daemon: RunningDaemon) -> None:
    # RFC 3207 §4.2: the EHLO from before TLS does not count; AUTH needs a fresh EHLO.
    c = RawSMTP(daemon.submission_port)
    c.greeting()
    c.ehlo()
    c.starttls(daemon.client_context())
    r = c.cmd(f"AUTH PLAIN {plain_blob('alice')}")
    assert r.code == 503, r
    c.ehlo()
    c.login("alice")
    assert c.cmd("STARTTLS").code == 503   # no second upgrade
    c.close()


# -- 2. STARTTLS command injection -----------------------------------------------------------

def _no_235_anywhere(c: RawSMTP, context: ssl.SSLContext) -> list[Reply]:
    """Read to the server's close; if it ever says 220 to STARTTLS, try TLS and read on."""
    seen: list[Reply] = []
    while True:
        try:
            r = c.reply()
        except ServerClosed:
            break
        seen.append(r)
        if r.code == 220 and "TLS" in r.text:
            try:
                c.buf = b""
                c.wrap(context)
            except (ssl.SSLError, OSError):
                break
    assert not any(r.code == 235 for r in seen), [str(r) for r in seen]
    return seen


INJECTIONS = [
    pytest.param(b"EHLO x\r\nSTARTTLS\r\nAUTH PLAIN %s\r\n", True, id="auth-behind-starttls"),
    pytest.param(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<alice@example.test>\r\n", True,
                 id="mail-behind-starttls"),
    pytest.param(b"EHLO x\r\nSTARTTLS\r\nEHLO y\r\nAUTH PLAIN %s\r\n"
                 b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
                 True, id="whole-transaction-behind-starttls"),
    pytest.param(b"STARTTLS\r\nAUTH PLAIN %s\r\n", False, id="after-ehlo-reply-one-packet"),
    pytest.param(b"STARTTLS\r\n\r\n", False, id="just-a-crlf-behind-starttls"),
]


@pytest.mark.parametrize(("payload", "with_ehlo"), INJECTIONS)
def test_starttls_injection_is_refused(daemon: RunningDaemon, payload: bytes,
                                       with_ehlo: bool) -> None:
    c = RawSMTP(daemon.submission_port)
    c.greeting()
    if not with_ehlo:
        c.ehlo()
    c.send(payload.replace(b"%s", plain_blob("alice").encode()))
    seen = _no_235_anywhere(c, daemon.client_context())
    assert seen, "no reply at all"
    last = seen[-1]
    assert (last.code, last.enhanced) == (554, "5.5.1"), [str(r) for r in seen]
    assert not any(r.code == 220 for r in seen), "STARTTLS went ahead despite pipelined data"
    assert c.eof
    c.close()
    assert daemon.maildir_files("bob") == []
    _normal_message_goes_through(daemon)


def test_plaintext_instead_of_tls_handshake_gets_nothing(daemon: RunningDaemon) -> None:
    # The injected bytes arrive after the 220: they reach the TLS layer, not the SMTP parser.
    c = RawSMTP(daemon.submission_port)
    c.greeting()
    c.ehlo()
    r = c.cmd("STARTTLS")
    assert r.code == 220
    c.send(f"AUTH PLAIN {plain_blob('alice')}\r\nMAIL FROM:<alice@example.test>\r\n".encode())
    # Whatever comes back is TLS alert bytes at most, never an SMTP reply line.
    data = b""
    while True:
        try:
            chunk = c.sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    assert not re.search(rb"(^|\n)\d\d\d[ -]", data), data
    c.close()
    _normal_message_goes_through(daemon)


# -- 3. no mail without AUTH, even inside TLS ------------------------------------------------

def test_unauthenticated_mail_after_tls_refused(daemon: RunningDaemon) -> None:
    ctx = daemon.client_context()
    implicit = RawSMTP(daemon.submissions_port, implicit_tls=ctx)
    implicit.greeting()
    implicit.ehlo()
    for c in (ready_session(daemon.submission_port, ctx, user=None), implicit):
        for command in ("MAIL FROM:<alice@example.test>", "RCPT TO:<bob@example.test>", "DATA",
                        "VRFY bob@example.test", "HELP"):
            r = c.cmd(command)
            assert (r.code, r.enhanced) == (530, "5.7.0"), (command, str(r))
        c.close()
    assert daemon.maildir_files("bob") == []


def test_failed_auth_does_not_authenticate(daemon: RunningDaemon) -> None:
    c = ready_session(daemon.submission_port, daemon.client_context(), user=None)
    r = c.cmd(f"AUTH PLAIN {plain_blob('alice', 'not-the-password')}")
    assert (r.code, r.enhanced) == (535, "5.7.8")
    # RFC 4616 §2: an authzid naming someone else is not "act as bob".
    r = c.cmd(f"AUTH PLAIN {plain_blob('alice', authzid='bob@example.test')}")
    assert (r.code, r.enhanced) == (535, "5.7.8"), r
    r = c.cmd("AUTH PLAIN")
    assert r.code == 334
    r = c.cmd("*")                      # client aborts the exchange
    assert r.code == 501
    r = c.cmd("MAIL FROM:<alice@example.test>")
    assert (r.code, r.enhanced) == (530, "5.7.0")
    c.close()


# -- 4. sender spoofing ----------------------------------------------------------------------

ENVELOPE_SPOOFS = [
    "<bob@example.test>",
    "<someone@elsewhere.test>",
    "<alice@example.test.elsewhere.test>",
    "<alice@sub.example.test>",
    "<noreply@example.test>",
]


def test_envelope_sender_spoofing_refused(daemon: RunningDaemon) -> None:
    c = ready_session(daemon.submission_port, daemon.client_context(), user="alice")
    for sender in ENVELOPE_SPOOFS:
        r = c.cmd(f"MAIL FROM:{sender}")
        assert (r.code, r.enhanced) == (553, "5.7.1"), (sender, str(r))
    # Tricks that must not slip through either, whatever the exact refusal.
    for sender in ("<>", "<alice@example.test@elsewhere.test>", '<"alice@example.test">',
                   "<alice@example.test.>", "<alice@example.test> <bob@example.test>"):
        r = c.cmd(f"MAIL FROM:{sender}")
        assert 500 <= r.code < 600, (sender, str(r))
        c.cmd("RSET")
    # The account's own addresses, any case, do work (the check is not "refuse everything").
    for own in ("<a.smith@example.test>", "<ALICE@Example.Test>"):
        r = c.cmd(f"MAIL FROM:{own}")
        assert r.code == 250, (own, str(r))
        assert c.cmd("RSET").code == 250
    c.close()
    assert daemon.maildir_files("bob") == []


HEADER_SPOOFS = [
    (b"From: bob@example.test", 553, "5.7.1"),
    (b"From: Bob <bob@example.test>", 553, "5.7.1"),
    (b"From: someone@elsewhere.test", 553, "5.7.1"),
    (b"From: alice@example.test\r\nFrom: bob@example.test", 550, "5.6.0"),
    (b"From: alice@example.test\r\nFrom: alice@example.test", 550, "5.6.0"),
    (b"From : bob@example.test", 553, "5.7.1"),
    (b"From\t: bob@example.test", 553, "5.7.1"),
    (b"From: alice@example.test\r\nFrom : bob@example.test", 550, "5.6.0"),
    (b"FROM: bob@example.test", 553, "5.7.1"),
    (b"from:bob@example.test", 553, "5.7.1"),
    (b"From:\r\n bob@example.test", 553, "5.7.1"),
    (b"From: alice@example.test\r\nSender: bob@example.test", 553, "5.7.1"),
    (b"From: alice@example.test\r\nSender: alice@example.test\r\nSender: bob@example.test",
     550, "5.6.0"),
    (b'From: "alice@example.test" <bob@example.test>', 553, "5.7.1"),
    (b"From: alice@example.test <bob@example.test>", 553, "5.7.1"),
    (b"From: bob@example.test <alice@example.test>", 553, "5.7.1"),
    (b"From: <alice@example.test> <bob@example.test>", 553, "5.7.1"),
    (b"From: alice@example.test, bob@example.test", 553, "5.7.1"),
    (b"From: Friends: bob@example.test;", 553, "5.7.1"),
    (b"From: =?utf-8?q?Alice?= <bob@example.test>", 553, "5.7.1"),
    (b"From bob@example.test", 550, "5.6.0"),     # no colon: not a header line at all
    (b"From: undisclosed-recipients:;", 550, "5.6.0"),
]


def test_header_sender_spoofing_refused(daemon: RunningDaemon) -> None:
    ctx = daemon.client_context()
    failures = []
    for header, code, enhanced in HEADER_SPOOFS:
        # One session per case: each refusal counts towards max_errors.
        c = ready_session(daemon.submission_port, ctx, user="alice")
        r = _send_data(c, header + b"\r\nSubject: spoof\r\n\r\nbody")
        if (r.code, r.enhanced) != (code, enhanced):
            failures.append((header, str(r)))
        c.close()
    assert failures == []
    assert daemon.maildir_files("bob") == []
    # Positive controls, so the check is not "refuse everything".
    c = ready_session(daemon.submission_port, ctx, user="alice")
    for header in (b'From: "Bob" <alice@example.test>',
                   b"From: alice@example.test\r\nSender: a.smith@example.test",
                   b"From: ALICE@EXAMPLE.TEST"):
        r = _send_data(c, header + b"\r\nSubject: own\r\n\r\nbody")
        assert r.code == 250, (header, str(r))
    c.close()
    stored = [f.read_bytes() for f in daemon.maildir_files("bob")]
    assert len(stored) == 3
    assert not any(b"Subject: spoof" in m for m in stored)


# -- 5. open relay tricks --------------------------------------------------------------------

# Addresses that look local but name another domain, and local-domain tricks. A logged-in
# submission user may send to other domains (the queue relays it), so what matters here is
# that no trick turns into a *different* destination than it names: remote-looking ones are
# remote, local-looking ones are local parts (no such user), malformed ones are refused.
# tests/integration/test_relay_battery.py runs the same tricks against the connectors that
# may not relay (the inbound MX, application connectors), where every one must be refused.
LOCAL_TRICKS = [
    ("<user%elsewhere.test@example.test>", 550, "5.1.1"),            # percent hack
    ('<"user@elsewhere.test"@example.test>', 550, "5.1.1"),          # quoted local part
    ("<elsewhere.test!user@example.test>", 550, "5.1.1"),            # bang path
    ('<"bob%elsewhere.test"@example.test>', 550, "5.1.1"),
    ("<user@elsewhere.test@example.test>", 553, "5.1.3"),            # two @
    ("<bob@example.test.>", 553, "5.1.3"),                           # trailing dot
    ('<"bob@example.test">', 553, "5.1.3"),                          # no domain at all
    ("<user@[192.0.2.1]>", 550, "5.1.3"),                            # address literal
    ("<bob@example.test>,<user@elsewhere.test>", 501, "5.5.4"),      # two in one
    ("bob@example.test user@elsewhere.test", 501, "5.5.4"),
    ("<bob@exa\x00mple.test>", 501, "5.5.2"),                        # NUL
]
REMOTE_LOOKING = [
    "<user@elsewhere.test>",
    "<@example.test:user@elsewhere.test>",                           # source route
    "<@example.test,@mx.example.test:user@elsewhere.test>",
    "<bob@sub.example.test>",
    "<bob@example.test.elsewhere.test>",
]


def test_open_relay_tricks_refused(daemon: RunningDaemon) -> None:
    c = ready_session(daemon.submission_port, daemon.client_context(), user="alice")
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
    failures = []
    for rcpt, code, enhanced in LOCAL_TRICKS:
        r = c.cmd(f"RCPT TO:{rcpt}")
        if (r.code, r.enhanced) != (code, enhanced):
            failures.append((rcpt, str(r)))
    assert failures == []
    # Remote-looking ones are remote (accepted for a logged-in user, then not sent: RSET).
    for rcpt in REMOTE_LOOKING:
        assert c.cmd(f"RCPT TO:{rcpt}").code == 250, rcpt
    assert c.cmd("RSET").code == 250
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
    # A local domain in upper case is still local, and only its owner receives the message.
    r = c.cmd("RCPT TO:<bob@EXAMPLE.TEST>")
    assert r.code == 250, r
    assert c.cmd("DATA").code == 354
    c.send(b"From: alice@example.test\r\nSubject: relay\r\n\r\nx\r\n.\r\n")
    assert c.reply().code == 250
    c.close()
    assert len(daemon.maildir_files("bob")) == 1
    mail_root = daemon.data_dir / "mail"
    assert sorted(p.name for p in mail_root.iterdir()) == ["bob"]
    spool = daemon.data_dir / "spool" / "queue"
    # Nothing left queued for anyone else: the entry is removed just after bob's copy is
    # written (off the loop), so give it a bound to go, not zero time.
    assert eventually(lambda: not any(spool.iterdir()), 10.0), sorted(spool.iterdir())


def test_unauthenticated_rcpt_refused_on_both_ports(daemon: RunningDaemon) -> None:
    ctx = daemon.client_context()
    c = ready_session(daemon.submission_port, ctx, user=None)
    assert (c.cmd("RCPT TO:<user@elsewhere.test>").code,
            c.cmd("RCPT TO:<bob@example.test>").code) == (530, 530)
    c.close()
    s = RawSMTP(daemon.submissions_port, implicit_tls=ctx)
    s.greeting()
    s.ehlo()
    assert s.cmd("MAIL FROM:<alice@example.test>").code == 530
    assert s.cmd("RCPT TO:<user@elsewhere.test>").code == 530
    s.close()


# -- 6. SMTP smuggling -----------------------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            b"From: alice@example.test\r\nSubject: SMUGGLED\r\n\r\nsmuggled")

SEPARATORS = [b"\n.\r\n", b"\r\n.\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r"]


def test_smtp_smuggling_fake_end_of_data(daemon: RunningDaemon) -> None:
    ctx = daemon.client_context()
    c = ready_session(daemon.submission_port, ctx, user="alice")
    for sep in SEPARATORS:
        outer = b"From: alice@example.test\r\nSubject: outer\r\n\r\nhello" + sep + SMUGGLED
        r = _send_data(c, outer)
        # One reply for the whole DATA, and it is a refusal: the fake end did not end it.
        assert (r.code, r.enhanced) == (550, "5.6.0"), (sep, str(r))
        # The smuggled commands were never run: the next reply is NOOP's own.
        r = c.cmd("NOOP")
        assert (r.code, r.enhanced, r.text) == (250, "2.0.0", "2.0.0 OK"), (sep, str(r))
        # The session is still usable: an honest message goes through.
        r = _send_data(c, b"From: alice@example.test\r\nSubject: honest\r\n\r\nfine")
        assert r.code == 250, (sep, str(r))
    c.close()
    stored = [f.read_bytes() for f in daemon.maildir_files("bob")]
    assert len(stored) == len(SEPARATORS)
    assert all(b"Subject: honest" in m for m in stored)
    assert not any(b"SMUGGLED" in m or b"outer" in m for m in stored)


@pytest.mark.parametrize("bare", [b"\n", b"\r"], ids=["bare-LF", "bare-CR"])
def test_bare_line_ending_inside_data_refused(daemon: RunningDaemon, bare: bytes) -> None:
    c = ready_session(daemon.submission_port, daemon.client_context(), user="alice")
    r = _send_data(c, b"From: alice@example.test\r\nSubject: bare\r\n\r\none" + bare + b"two")
    assert (r.code, r.enhanced) == (550, "5.6.0"), r
    r = _send_data(c, b"From: alice@example.test\r\nSubject: next\r\n\r\nok")
    assert r.code == 250, r
    c.close()
    stored = [f.read_bytes() for f in daemon.maildir_files("bob")]
    assert len(stored) == 1 and b"Subject: next" in stored[0]


# -- 7. garbage ------------------------------------------------------------------------------

def _garbage(seed: int) -> bytes:
    rnd = random.Random(seed)
    parts = [
        rnd.randbytes(4096),
        b"\x00" * 300 + b"\r\n",
        bytes(range(128, 256)) * 4 + b"\r\n",
        b"\xff\xfe\xfd AUTH \x00PLAIN\r\n",
        b"A" * 100_000 + b"\r\n",           # far past every line limit
        b"\r\n\r\n\n\n\r\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rnd.randbytes(512) + b"\r\n",
        rnd.randbytes(2048),
    ]
    return b"".join(parts) + b"\r\n"


def _only_errors_then_close(c: RawSMTP, garbage: bytes) -> list[Reply]:
    try:
        c.send(garbage + b"QUIT\r\n")
        sent_all = True
    except (OSError, ssl.SSLError):
        sent_all = False                 # it hung up on us mid-garbage: allowed
    replies = c.replies_until_closed()   # socket timeout: a hang fails the test
    assert replies or not sent_all, "the server said nothing"
    if replies and replies[-1].code == 221:   # it got as far as our QUIT
        replies = replies[:-1]
    # Everything else was an error (and max_errors or aiosmtpd's bogus-command budget may
    # have hung up before the QUIT): the server closed, it did not hang.
    assert all(400 <= r.code < 600 for r in replies), [str(r) for r in replies]
    assert c.eof
    return replies


@pytest.mark.parametrize("seed", [1, 2])
def test_garbage_before_auth(daemon: RunningDaemon, seed: int) -> None:
    c = RawSMTP(daemon.submission_port)
    c.greeting()
    _only_errors_then_close(c, _garbage(seed))
    c.close()
    c = ready_session(daemon.submission_port, daemon.client_context(), user=None)
    _only_errors_then_close(c, _garbage(seed + 100))
    c.close()
    _normal_message_goes_through(daemon)


def test_garbage_after_auth(daemon: RunningDaemon) -> None:
    c = RawSMTP(daemon.submissions_port, implicit_tls=daemon.client_context())
    c.greeting()
    c.ehlo()
    c.login("alice")
    _only_errors_then_close(c, _garbage(7))
    c.close()
    assert daemon.maildir_files("bob") == []
    _normal_message_goes_through(daemon)


def test_garbage_instead_of_tls_handshake(daemon: RunningDaemon) -> None:
    junk = _garbage(3)
    # 465: the very first bytes are not a ClientHello.
    s = socket.create_connection(("127.0.0.1", daemon.submissions_port), timeout=10)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(junk)
    _read_to_eof(s)
    s.close()
    # 587: STARTTLS accepted, then garbage instead of the handshake.
    c = RawSMTP(daemon.submission_port)
    c.greeting()
    c.ehlo()
    assert c.cmd("STARTTLS").code == 220
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        c.send(junk)
    _read_to_eof(c.sock)
    c.close()
    _normal_message_goes_through(daemon)


def _read_to_eof(s: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(65536)       # socket timeout: a hang fails the test
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_garbage_inside_auth_exchange(daemon: RunningDaemon) -> None:
    c = ready_session(daemon.submission_port, daemon.client_context(), user=None)
    for first, response in (("AUTH PLAIN", b"\xff\xfe\x00\x80garbage"),
                            ("AUTH PLAIN", base64.b64encode(b"\xff\x00\xfe\x00\xfd")),
                            ("AUTH PLAIN", base64.b64encode(b"no-nul-at-all")),
                            ("AUTH LOGIN", base64.b64encode(b"\xff\xfe")),
                            ("AUTH LOGIN", b"!!!not base64!!!")):
        assert c.cmd(first).code == 334
        r = c.cmd(response)
        assert r.code == 501, (first, response, str(r))
    assert c.cmd("AUTH PLAIN " + "=" * 3).code == 501
    assert c.cmd("AUTH CRAM-MD5").code == 504
    assert c.cmd("NOOP").code == 250
    c.login("alice")
    c.close()


def test_overlong_sasl_response_is_a_client_error(daemon: RunningDaemon) -> None:
    c = ready_session(daemon.submission_port, daemon.client_context(), user=None)
    assert c.cmd("AUTH PLAIN").code == 334
    r = c.cmd(b"A" * 5000)
    assert 500 <= r.code < 600, r
    assert c.cmd("NOOP").code == 250
    c.close()


NON_UTF8 = [
    pytest.param("mail", id="MAIL-FROM"),
    pytest.param("rcpt", id="RCPT-TO-local"),
    pytest.param("rcpt-remote", id="RCPT-TO-remote"),
    pytest.param("header", id="header-From"),
]


@pytest.mark.parametrize("where", NON_UTF8)
def test_non_utf8_address_gets_a_permanent_refusal(daemon: RunningDaemon, where: str) -> None:
    c = ready_session(daemon.submission_port, daemon.client_context(), user="alice")
    if where == "mail":
        r = c.cmd(b"MAIL FROM:<bob\xff@example.test>")
    elif where == "rcpt":
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        r = c.cmd(b"RCPT TO:<bob\xff@example.test>")
    elif where == "rcpt-remote":
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        r = c.cmd(b"RCPT TO:<bob@elsewhere\xff.test>")
    else:
        r = _send_data(c, b"From: bob@example.test\xff\r\nSubject: x\r\n\r\nbody")
    assert 500 <= r.code < 600, r
    c.close()
    assert daemon.maildir_files("bob") == []


# -- 8. secrets never reach the logs ---------------------------------------------------------

def _secrets(user: str, password: str) -> list[str]:
    return [
        password,
        plain_blob(user, password),
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
    ]


def _assert_no_secret(caplog: pytest.LogCaptureFixture, secrets: list[str]) -> None:
    assert caplog.records, "nothing was logged: the capture is not working"
    texts = [caplog.text]
    for rec in caplog.records:
        texts.append(rec.getMessage())
        texts.append(repr(rec.args))
        if rec.exc_text:
            texts.append(rec.exc_text)
    blob = "\n".join(texts)
    for secret in secrets:
        # aiosmtpd upper-cases unknown command words before logging them.
        assert secret.upper() not in blob.upper(), f"secret {secret[:4]}... found in the log"


def test_logins_never_log_secrets(daemon: RunningDaemon, caplog: pytest.LogCaptureFixture) -> None:
    # Everything at DEBUG, aiosmtpd's own logger included (it logs every command line).
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="mailkeep")
    caplog.set_level(logging.DEBUG, logger="mail.log")
    wrong = "wrong-Pa55word-xyz"
    ctx = daemon.client_context()
    # Failed logins come from two addresses so that throttling never delays this test.
    c = ready_session(daemon.submission_port, ctx, user=None)
    assert c.cmd(f"AUTH PLAIN {plain_blob('alice', wrong)}").code == 535
    assert c.cmd("AUTH PLAIN").code == 334
    assert c.cmd(plain_blob("alice", wrong)).code == 535
    assert c.cmd(f"AUTH PLAIN {plain_blob('alice')}").code == 235
    c.close()
    c = ready_session(daemon.submission_port, ctx, user=None, source="127.0.0.2")
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(base64.b64encode(b"alice")).code == 334
    assert c.cmd(base64.b64encode(wrong.encode())).code == 535
    assert c.cmd("AUTH LOGIN").code == 334
    assert c.cmd(base64.b64encode(b"alice")).code == 334
    assert c.cmd(base64.b64encode(ALICE_PW.encode())).code == 235
    c.close()
    c = ready_session(daemon.submission_port, ctx, user=None)
    assert c.cmd("AUTH PLAIN").code == 334
    assert c.cmd(plain_blob("alice")).code == 235
    c.close()
    c = ready_session(daemon.submission_port, ctx, user=None)
    assert c.cmd(f"AUTH LOGIN {base64.b64encode(b'alice').decode()}").code == 334
    assert c.cmd(base64.b64encode(ALICE_PW.encode())).code == 235
    c.close()
    s = daemon.smtps()
    s.login("alice", ALICE_PW)
    s.quit()
    assert any("auth ok" in r.getMessage() for r in caplog.records)
    assert any("auth failed" in r.getMessage() for r in caplog.records)
    _assert_no_secret(caplog, _secrets("alice", ALICE_PW) + _secrets("alice", wrong))


def test_misplaced_credentials_never_logged(daemon: RunningDaemon,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Credentials sent where AUTH is refused become "commands": the daemon's log levels keep
    aiosmtpd's command-line logging (which would print them) out of the log."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="mailkeep")
    pw = USERS["bob"][0]
    c = RawSMTP(daemon.submission_port)
    c.greeting()
    c.ehlo()
    # Before TLS: AUTH is refused, so the response line is parsed as a command.
    assert c.cmd("AUTH PLAIN").code == 530
    assert c.cmd(plain_blob("bob")).code >= 500
    assert c.cmd(base64.b64encode(pw.encode())).code >= 500
    assert c.cmd(pw).code >= 500
    c.close()
    c = ready_session(daemon.submission_port, daemon.client_context(), user="alice")
    assert c.cmd("AUTH PLAIN").code == 503     # already authenticated
    assert c.cmd(plain_blob("bob")).code >= 500
    c.close()
    _assert_no_secret(caplog, _secrets("bob", pw))
