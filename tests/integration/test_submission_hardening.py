"""Submission hardening from the attacker's side (issue 7 items 14 and 16), over real TLS.

Item 14: junk addresses ("x@", "a@[") made aiosmtpd's parser raise, which came back as
451 "internal error" with a traceback in the log: they are the client's syntax errors
(5xx). Control characters a client sends (ESC, BEL, BS) are never echoed raw, in a reply
or in a log line.

Item 16: a needlessly quoted local part ("alice"@example.test) is the same mailbox as the
unquoted one, in the envelope and in the header, while a quoted string that is not a
dot-atom stays a different address; a Return-Path field sent by the client is a forged
trace field and is removed, the rest of the message stored byte for byte.

Bounded by socket timeouts and counts; nothing is timed.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config
from tests.support.rawsmtp import RawSMTP, Reply, close_all, plain_blob, ready_session

TIMEOUT = 10.0
LOOPS = ["asyncio", "uvloop"]
# C0 controls and DEL; CR and LF only as a line's end.
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture(params=LOOPS)
def smtpd(request: pytest.FixtureRequest, tmp_path: Path,
          ca: trustme.CA) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca)
    running = start_thread_daemon(config, ca, str(request.param))
    try:
        yield running
    finally:
        close_all()
        running.stop()


def _session(d: RunningDaemon, user: str | None = "alice") -> RawSMTP:
    return ready_session(d.submission_port, d.client_context(), user=user, timeout=TIMEOUT)


def _raw_reply(c: RawSMTP) -> list[bytes]:
    """One (possibly multi-line) reply as the raw lines the server wrote."""
    lines: list[bytes] = []
    while True:
        line = c.read_line()
        assert line is not None, f"closed after {lines!r}"
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def _no_internal_errors(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text


def _deliver(c: RawSMTP, message: bytes, *, mail_from: str = "<alice@example.test>",
             rcpt: str = "<bob@example.test>") -> Reply:
    for command, code in ((f"MAIL FROM:{mail_from}", 250), (f"RCPT TO:{rcpt}", 250),
                          ("DATA", 354)):
        r = c.cmd(command)
        assert r.code == code, (command, str(r))
    c.send(message + b".\r\n")
    return c.reply()


# -- item 14: junk addresses are syntax errors ----------------------------------------------

JUNK_BEFORE_MAIL = ["VRFY x@", "VRFY a@[", "MAIL FROM:x@", "MAIL FROM:<x@>", "MAIL FROM:a@[",
                    "MAIL FROM:<a@[>"]
JUNK_IN_TRANSACTION = ["RCPT TO:a@[", "RCPT TO:<a@[>", "RCPT TO:x@", "RCPT TO:<x@>"]


def test_junk_addresses_get_syntax_replies_never_internal_errors(
        smtpd: RunningDaemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailkeep")
    c = _session(smtpd)
    for command in JUNK_BEFORE_MAIL:
        r = c.cmd(command)
        assert r.code in (501, 502, 553), (command, str(r))
    assert c.cmd("MAIL FROM:<alice@example.test>").code == 250
    for command in JUNK_IN_TRANSACTION:
        r = c.cmd(command)
        assert r.code in (501, 502, 553), (command, str(r))
    # The session is in sync and the transaction still good.
    assert c.cmd("RCPT TO:<bob@example.test>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(b"From: alice@example.test\r\nSubject: after junk\r\n\r\nok\r\n.\r\n")
    assert c.reply().code == 250
    assert c.cmd("QUIT").code == 221
    c.close()
    assert len(smtpd.maildir_files("bob")) == 1
    _no_internal_errors(caplog)


# -- item 14: control characters ------------------------------------------------------------

# (sent before login?, the command line) -- every one carries ESC, BEL, BS or DEL.
CONTROL_LINES: list[tuple[bool, bytes]] = [
    (True, b"XYZ\x1b[31m\x07\x08"),
    (True, b"EHLO \x1b[2Jclient\x07"),
    (True, b"AUTH PLAIN " + plain_blob("alice", "\x1b[31mwrong\x07",
                                       authzid="\x1b]0;pwned\x07").encode()),
    (True, b"AUTH PLAIN " + base64.b64encode(
        b"\0\x1b[31mroot\x08\x08\x7f\0nope")),
    (False, b"XYZ\x1b[31m\x07\x08"),
    (False, b"VRFY \x1b[31mbob\x07@example.test"),
    (False, b"HELP \x1b[31m\x07"),
    (False, b"MAIL FROM:<ceo\x1b[31m@bank.example>"),
    (False, b"MAIL FROM:<\x1b[1mceo@bank.example>"),
    (False, b"RCPT TO:<bob\x07@example.test>"),
    (False, b"\x1b[A\x1b[A\x08\x08\x08"),
]


def test_control_characters_are_never_echoed_raw(
        smtpd: RunningDaemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = _session(smtpd, user=None)
    seen: list[bytes] = []

    def check(line: bytes) -> None:
        c.send(line + b"\r\n")
        reply = _raw_reply(c)
        seen.extend(reply)
        for raw in reply:
            assert raw.endswith(b"\r\n") and not RAW_CONTROL.search(raw), (line, raw)

    for before, line in CONTROL_LINES:
        if before:
            check(line)
    c.login("alice")
    for before, line in CONTROL_LINES:
        if not before:
            check(line)
    # A header sender refusal quotes the client's address, in the reply and in the log.
    for command in (b"MAIL FROM:<alice@example.test>", b"RCPT TO:<bob@example.test>",
                    b"DATA"):
        check(command)
    check(b"From: Boss <\"ceo\x1b[31m\x07\"@bank.example>\r\nSubject: x\r\n\r\nx\r\n.")
    assert seen[-1].startswith(b"553 5.7.1"), seen[-1]
    # The client's bytes are shown escaped, not dropped: the reply still names them.
    assert any(b"\\x1b" in raw for raw in seen), seen
    assert c.cmd("QUIT").code == 221
    c.close()

    messages = [r.getMessage() for r in caplog.records]
    assert messages, "nothing was logged"
    for text in messages:
        assert not RAW_CONTROL.search(text.encode("utf-8", "surrogateescape")), text
    _no_internal_errors(caplog)


# -- item 16: quoted local parts, Return-Path -----------------------------------------------

HEADER = (b"From: \"Alice\" <\"alice\"@example.test>\r\n"
          b"To: bob@example.test\r\n"
          b"Subject: quoted\r\n"
          b"Date: Mon, 02 Feb 2026 10:00:00 +0000\r\n")
BODY = (b"\r\n"
        b"Return-Path: <stays@body.example> is body text, not a field\r\n"
        b"bye\r\n")

# (forged field(s), where in the header): each is removed, nothing else changes.
RETURN_PATHS = [
    b"Return-Path: <ceo@bank.example>\r\n",
    b"return-path:<ceo@bank.example>\r\n",
    b"RETURN-PATH :\r\n <ceo@bank.example>\r\n",
]


def _stored_matches(stored: bytes, expected: bytes) -> None:
    """`stored` is our Return-Path (RFC 5321 §4.4: exactly one, from the envelope) and our
    Received field, followed by `expected`, byte for byte."""
    assert stored.endswith(expected), stored
    trace = stored[:len(stored) - len(expected)]
    first, _, trace = trace.partition(b"\r\n")
    assert first.startswith(b"Return-Path: <") and b"Return-Path" not in trace, stored
    assert trace.startswith(b"Received: "), trace
    assert all(line.startswith((b"Received: ", b"\t", b" "))
               for line in trace.split(b"\r\n")[:-1]), trace


def test_quoted_local_part_is_the_same_mailbox(smtpd: RunningDaemon) -> None:
    c = _session(smtpd)
    for i, forged in enumerate(RETURN_PATHS):
        message_id = f"Message-ID: <quoted{i}@example.test>\r\n".encode()
        # The forged field first, in the middle, or last in the header.
        lines = [HEADER, message_id]
        lines.insert(i % 3, forged)
        sent = b"".join(lines) + BODY
        r = _deliver(c, sent, mail_from='<"alice"@example.test>',
                     rcpt='<"bob"@example.test>' if i == 1 else "<bob@example.test>")
        assert r.code == 250, str(r)
        stored = [f.read_bytes() for f in smtpd.maildir_files("bob")]
        assert len(stored) == i + 1
        mine = [m for m in stored if message_id in m]
        assert len(mine) == 1
        assert b"ceo@bank.example" not in mine[0]
        _stored_matches(mine[0], HEADER + message_id + BODY)
    assert c.cmd("QUIT").code == 221
    c.close()


@pytest.mark.parametrize("address", ['"alice.x"@example.test', '"al ice"@example.test',
                                     '"alice"@example.test.', '"alice@example.test"'])
def test_quotes_do_not_make_a_stranger_address_yours(smtpd: RunningDaemon,
                                                     address: str) -> None:
    c = _session(smtpd)
    r = c.cmd(f"MAIL FROM:<{address}>")
    assert r.code in (501, 553) and r.code != 451, str(r)
    # The header is checked the same way.
    message = (f"From: Alice <{address}>\r\nTo: bob@example.test\r\nSubject: spoof\r\n\r\n"
               "x\r\n").encode()
    r = _deliver(c, message)
    assert (r.code, r.enhanced) == (553, "5.7.1"), str(r)
    assert c.cmd("NOOP").code == 250
    assert smtpd.maildir_files("bob") == []
    c.close()
