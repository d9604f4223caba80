"""Every submission limit at the limit and one past it, against the real daemon (asyncio).

Small limits come from make_daemon(submission=..., security=...). Waits are bounded (socket
timeouts, polling with a deadline); nothing here asserts how long anything took.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import struct
from collections.abc import Callable, Iterator

import pytest

from tests.support.daemon import HOSTNAME, USERS, RunningDaemon
from tests.support.rawsmtp import RawSMTP, Reply, close_all, plain_blob, ready_session
from tests.support.wait import eventually

MakeDaemon = Callable[..., RunningDaemon]
ALICE_PW = USERS["alice"][0]
HEAD = b"From: alice@example.test\r\nSubject: limits\r\n\r\n"


@pytest.fixture(autouse=True)
def _close_clients(make_daemon: MakeDaemon) -> Iterator[None]:
    """Torn down before make_daemon's daemons stop: no client left open delays a stop."""
    yield
    close_all()


def message_of(size: int, first_body_line: bytes = b"") -> bytes:
    """A message of exactly `size` octets as it travels (CRLF line ends, no dot-stuffing)."""
    head = HEAD + first_body_line
    rest = size - len(head)
    assert rest >= 2
    lines = []
    while rest:
        n = min(rest, 78)
        if rest - n == 1:
            n -= 1
        lines.append(b"x" * (n - 2) + b"\r\n")
        rest -= n
    msg = head + b"".join(lines)
    assert len(msg) == size
    return msg


def send_data(c: RawSMTP, message: bytes, rcpt: str = "bob@example.test") -> Reply:
    """One transaction; the message (CRLF-terminated) is dot-stuffed here, as a client does."""
    assert message.endswith(b"\r\n")
    r = c.cmd("MAIL FROM:<alice@example.test>")
    assert r.code == 250, r
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    assert r.code == 250, r
    r = c.cmd("DATA")
    assert r.code == 354, r
    stuffed = (b"." if message.startswith(b".") else b"") + message.replace(b"\r\n.", b"\r\n..")
    c.send(stuffed + b".\r\n")
    return c.reply()


def body_of(stored: bytes) -> bytes:
    return stored.split(b"\r\n\r\n", 1)[1]


# -- 9. max_message_size ---------------------------------------------------------------------

SIZE_LIMIT = 2000


def test_message_size_at_limit_and_one_past(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_message_size": SIZE_LIMIT})
    c = ready_session(d.submission_port, d.client_context())
    at = message_of(SIZE_LIMIT)
    r = send_data(c, at)
    assert r.code == 250, r
    r = send_data(c, message_of(SIZE_LIMIT + 1))
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    # The refused DATA was drained: the session is in sync and still usable.
    assert c.cmd("NOOP").code == 250
    r = send_data(c, at)
    assert r.code == 250, r
    c.close()
    stored = [f.read_bytes() for f in d.maildir_files("bob")]
    assert len(stored) == 2
    assert all(body_of(m) == body_of(at) for m in stored)


def test_much_larger_message_refused_and_drained(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_message_size": SIZE_LIMIT})
    c = ready_session(d.submission_port, d.client_context())
    r = send_data(c, message_of(SIZE_LIMIT * 200))
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    assert c.cmd("NOOP").code == 250
    assert send_data(c, message_of(100)).code == 250
    c.close()
    assert len(d.maildir_files("bob")) == 1


def test_mail_from_size_parameter(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_message_size": SIZE_LIMIT})
    c = RawSMTP(d.submission_port)
    c.greeting()
    c.ehlo()
    c.starttls(d.client_context())
    assert f"SIZE {SIZE_LIMIT}" in c.ehlo().lines
    c.login("alice")
    r = c.cmd(f"MAIL FROM:<alice@example.test> SIZE={SIZE_LIMIT + 1}")
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    r = c.cmd(f"MAIL FROM:<alice@example.test> SIZE={10**30}")
    assert (r.code, r.enhanced) == (552, "5.3.4"), r
    r = c.cmd(f"MAIL FROM:<alice@example.test> SIZE={SIZE_LIMIT}")
    assert r.code == 250, r
    c.close()


def test_size_limit_ignores_transparency_dots(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_message_size": SIZE_LIMIT})
    c = ready_session(d.submission_port, d.client_context())
    msg = message_of(SIZE_LIMIT, first_body_line=b".leading dot\r\n")
    assert len(msg) == SIZE_LIMIT
    r = send_data(c, msg)
    assert r.code == 250, r
    c.close()


# -- 10. line length -------------------------------------------------------------------------

def test_998_octet_lines_accepted(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_line_length": 1000})
    c = ready_session(d.submission_port, d.client_context())
    for line in (b"y" * 998, b"." + b"y" * 997):    # the second travels as 999 + CRLF
        msg = HEAD + line + b"\r\n"
        r = send_data(c, msg)
        assert r.code == 250, (line[:3], str(r))
    c.close()
    stored = sorted(body_of(f.read_bytes()) for f in d.maildir_files("bob"))
    assert stored == sorted([b"y" * 998 + b"\r\n", b"." + b"y" * 997 + b"\r\n"])


def test_overlong_lines_refused_and_session_usable(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_line_length": 1000})
    c = ready_session(d.submission_port, d.client_context())
    for n in (1000, 1001, 4096, 100_000):
        r = send_data(c, HEAD + b"y" * n + b"\r\nafter the long line\r\n")
        assert (r.code, r.enhanced) == (500, "5.5.6"), (n, str(r))
        assert c.cmd("NOOP").code == 250, n     # the rest of the DATA was drained
    r = send_data(c, HEAD + b"fine\r\n")
    assert r.code == 250, r
    c.close()
    stored = [f.read_bytes() for f in d.maildir_files("bob")]
    assert len(stored) == 1 and body_of(stored[0]) == b"fine\r\n"


def test_line_one_past_limit_refused(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_line_length": 1000})
    c = ready_session(d.submission_port, d.client_context())
    r = send_data(c, HEAD + b"y" * 999 + b"\r\n")
    assert (r.code, r.enhanced) == (500, "5.5.6"), r
    c.close()


def test_configured_line_length_is_honoured(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_line_length": 200})
    c = ready_session(d.submission_port, d.client_context())
    assert send_data(c, HEAD + b"y" * 198 + b"\r\n").code == 250
    r = send_data(c, HEAD + b"y" * 300 + b"\r\n")
    assert (r.code, r.enhanced) == (500, "5.5.6"), r
    c.close()


def test_command_line_limit(make_daemon: MakeDaemon) -> None:
    d = make_daemon()
    for tls in (False, True):
        c = RawSMTP(d.submission_port)
        c.greeting()
        c.ehlo()
        if tls:
            c.starttls(d.client_context())
            c.ehlo()
            c.login("alice")
        assert c.cmd("NOOP " + "x" * 500).code == 250        # 505 octets: within 512
        for n in (600, 1200, 100_000):
            r = c.cmd("NOOP " + "x" * n)
            assert (r.code, r.enhanced) == (500, "5.5.2"), (tls, n, str(r))
            assert c.cmd("NOOP").code == 250, (tls, n)          # in sync
        r = c.cmd("MAIL FROM:<" + "a" * 700 + "@example.test>")
        assert r.code == 500, r
        c.close()


# -- 11. max_recipients ----------------------------------------------------------------------

def test_max_recipients(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_recipients": 3})
    c = ready_session(d.submission_port, d.client_context())
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
    for rcpt in ("bob@example.test", "alice@example.test", "noreply@example.test"):
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code == 250, (rcpt, str(r))
    r = c.cmd("RCPT TO:<a.smith@example.test>")
    assert (r.code, r.enhanced) == (452, "4.5.3"), r
    assert c.cmd("DATA").code == 354
    c.send(HEAD + b"x\r\n.\r\n")
    assert c.reply().code == 250
    # A new transaction starts from zero again.
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
    for rcpt in ("bob@example.test", "alice@example.test", "noreply@example.test"):
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
    assert c.cmd("RCPT TO:<bob@example.test>").code == 452
    c.close()
    for account in ("alice", "bob", "app"):
        assert len(d.maildir_files(account)) == 1, account


# -- 12. max_errors --------------------------------------------------------------------------

def test_max_errors_closes_the_connection(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_errors": 5})
    c = ready_session(d.submission_port, d.client_context())
    bad = ["RCPT TO:<bob@example.test>", "MAIL FROM:<bob@example.test>", "DATA",
           "MAIL FROM", "RCPT TO:<x@elsewhere.test>"]
    for command in bad[:4]:
        r = c.cmd(command)
        assert 500 <= r.code < 600, (command, str(r))
    r = c.cmd("NOOP")
    assert r.code == 250, r                       # 4 errors: still open
    c.send(f"{bad[4]}\r\n".encode())
    replies = c.replies_until_closed()
    assert [x.code for x in replies] == [503, 421], [str(x) for x in replies]
    assert replies[-1].enhanced == "4.7.0"
    assert c.eof
    c.close()


def test_max_errors_counts_before_tls_too(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"max_errors": 3})
    c = RawSMTP(d.submission_port)
    c.greeting()
    c.send(b"MAIL FROM:<a@example.test>\r\nAUTH PLAIN x\r\nRCPT TO:<b@example.test>\r\n"
           b"NOOP\r\n")
    replies = c.replies_until_closed()
    assert [x.code for x in replies] == [530, 530, 530, 421], [str(x) for x in replies]
    c.close()


# -- 13. idle_timeout ------------------------------------------------------------------------

def test_idle_connections_are_closed(make_daemon: MakeDaemon) -> None:
    d = make_daemon(submission={"idle_timeout": 0.5})
    ctx = d.client_context()
    assert d.daemon is not None and d.daemon.services is not None
    budget = d.daemon.services.budget

    def after_greeting() -> RawSMTP:
        c = RawSMTP(d.submission_port)
        c.greeting()
        return c

    def after_auth() -> RawSMTP:
        return ready_session(d.submission_port, ctx)

    def in_data() -> RawSMTP:
        c = ready_session(d.submission_port, ctx)
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: half a message\r\n")
        return c

    def in_auth() -> RawSMTP:
        c = ready_session(d.submission_port, ctx, user=None)
        assert c.cmd("AUTH LOGIN").code == 334
        return c

    def on_465() -> RawSMTP:
        c = RawSMTP(d.submissions_port, implicit_tls=ctx)
        c.greeting()
        return c

    for opened in (after_greeting, after_auth, in_data, in_auth, on_465):
        c = opened()
        c.sock.settimeout(10)
        while c.read_line() is not None:   # whatever it says, it must end with EOF
            pass
        assert c.eof, opened.__name__
        c.close()
        assert eventually(lambda: budget.count("127.0.0.1") == 0), opened.__name__
    assert d.maildir_files("bob") == []


# -- 14. auth throttling ---------------------------------------------------------------------

THROTTLE = {"auth_failures_before_delay": 1, "auth_failure_delay": 0.05,
            "auth_max_delay": 0.2, "auth_failures_before_block": 3,
            "auth_block_seconds": 600}


def _smtplib_from(d: RunningDaemon, source: str) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", d.submission_port, timeout=10,
                     source_address=(source, 0))
    s._host = HOSTNAME  # type: ignore[attr-defined]
    s.starttls(context=d.client_context())
    return s


def test_auth_throttle_blocks_the_address_not_the_user(make_daemon: MakeDaemon) -> None:
    d = make_daemon(security=THROTTLE)
    ctx = d.client_context()
    c = ready_session(d.submission_port, ctx, user=None)
    # Unknown users count like wrong passwords.
    for user, pw in (("alice", "guess-1"), ("nobody", "guess-2"), ("alice", "guess-3")):
        r = c.cmd(f"AUTH PLAIN {plain_blob(user, pw)}")
        assert (r.code, r.enhanced) == (535, "5.7.8"), r
    c.close()
    # Blocked now: even the right password gets 454, whatever the mechanism or port.
    c = ready_session(d.submission_port, ctx, user=None)
    r = c.cmd(f"AUTH PLAIN {plain_blob('alice')}")
    assert (r.code, r.enhanced) == (454, "4.7.0"), r
    assert c.cmd(f"AUTH LOGIN {base64.b64encode(b'alice').decode()}").code == 334
    r = c.cmd(base64.b64encode(ALICE_PW.encode()))
    assert (r.code, r.enhanced) == (454, "4.7.0"), r
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 530
    c.close()
    with RawSMTP(d.submissions_port, implicit_tls=ctx) as s:
        s.greeting()
        s.ehlo()
        r = s.cmd(f"AUTH PLAIN {plain_blob('alice')}")
        assert (r.code, r.enhanced) == (454, "4.7.0"), r
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        s1 = _smtplib_from(d, "127.0.0.1")
        try:
            s1.login("alice", ALICE_PW)
        finally:
            s1.close()
    assert err.value.smtp_code == 454
    # The real user, from another address, is not locked out.
    s2 = _smtplib_from(d, "127.0.0.2")
    s2.login("alice", ALICE_PW)
    assert s2.sendmail("alice@example.test", ["bob@example.test"], HEAD + b"ok\r\n") == {}
    s2.quit()
    assert len(d.maildir_files("bob")) == 1


def test_auth_failures_below_block_threshold_still_allow_login(make_daemon: MakeDaemon) -> None:
    d = make_daemon(security=THROTTLE)
    c = ready_session(d.submission_port, d.client_context(), user=None)
    for pw in ("typo-1", "typo-2"):
        assert c.cmd(f"AUTH PLAIN {plain_blob('alice', pw)}").code == 535
    c.login("alice")      # two honest typos, then the right password: delayed, not blocked
    c.close()


# -- 15. connections per IP ------------------------------------------------------------------

def test_connections_per_ip(make_daemon: MakeDaemon) -> None:
    d = make_daemon(security={"max_connections_per_ip": 3})
    ctx = d.client_context()
    held = [RawSMTP(d.submission_port), RawSMTP(d.submission_port),
            RawSMTP(d.submissions_port, implicit_tls=ctx)]
    for c in held:
        c.greeting()
    extra = RawSMTP(d.submission_port)
    replies = extra.replies_until_closed()
    assert [(r.code, r.enhanced) for r in replies] == [(421, "4.7.0")], replies
    assert extra.eof
    extra.close()
    # Counted at accept, before TLS: on 465 the connection is closed without a handshake.
    with pytest.raises((ssl.SSLError, OSError)):
        RawSMTP(d.submissions_port, implicit_tls=ctx)
    # Another address is not affected and can do real work.
    s = _smtplib_from(d, "127.0.0.2")
    s.login("alice", ALICE_PW)
    assert s.sendmail("alice@example.test", ["bob@example.test"], HEAD + b"ok\r\n") == {}
    s.quit()
    # A slot freed is a slot available again.
    held.pop().close()
    assert d.daemon is not None and d.daemon.services is not None
    budget = d.daemon.services.budget
    assert eventually(lambda: budget.count("127.0.0.1") == 2)
    again = RawSMTP(d.submission_port)
    again.greeting()
    again.close()
    for c in held:
        c.close()


def test_connection_slots_are_released_however_sessions_end(make_daemon: MakeDaemon) -> None:
    limit = 2
    d = make_daemon(security={"max_connections_per_ip": limit},
                    submission={"max_errors": 2, "idle_timeout": 0.5})
    ctx = d.client_context()
    assert d.daemon is not None and d.daemon.services is not None
    budget = d.daemon.services.budget

    def failed_handshake() -> None:
        c = RawSMTP(d.submission_port)
        c.greeting()
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        c.send(b"this is not a TLS ClientHello\r\n" * 20)
        while c.read_line() is not None:
            pass
        c.close()

    def injection() -> None:
        c = RawSMTP(d.submission_port)
        c.greeting()
        c.send(b"EHLO x\r\nSTARTTLS\r\nAUTH PLAIN " + plain_blob("alice").encode() + b"\r\n")
        assert c.replies_until_closed()[-1].code == 554
        c.close()

    def reset_mid_data() -> None:
        c = ready_session(d.submission_port, ctx)
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: cut\r\n")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()

    def too_many_errors() -> None:
        c = ready_session(d.submission_port, ctx)
        c.send(b"DATA\r\nDATA\r\n")
        assert c.replies_until_closed()[-1].code == 421
        c.close()

    def idle() -> None:
        c = RawSMTP(d.submissions_port, implicit_tls=ctx)
        c.greeting()
        assert c.closed()
        c.close()

    def quit_() -> None:
        c = ready_session(d.submission_port, ctx)
        c.send(b"QUIT\r\n")
        assert c.replies_until_closed()[-1].code == 221
        c.close()

    for ending in (failed_handshake, injection, reset_mid_data, too_many_errors, idle, quit_):
        for _ in range(limit + 1):
            ending()
        assert eventually(lambda: budget.count("127.0.0.1") == 0), ending.__name__
        fresh = [RawSMTP(d.submission_port) for _ in range(limit)]
        for c in fresh:
            c.greeting()
            c.close()
        assert eventually(lambda: budget.count("127.0.0.1") == 0), ending.__name__
