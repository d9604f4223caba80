"""IMAP security promises over real sockets: TLS before credentials, STARTTLS injection,
hostile input, limits (line, literal, bad commands, connections, auth failures, idle) and
secrets kept out of the logs."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon
from tests.support.imap import (
    RawImap,
    ServerClosed,
    append,
    message,
    password,
    plain_b64,
    running_imap_daemon,
    session,
    submit,
)


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_imap_daemon(tmp_path, ca, loop_kind)


def custom(tmp_path: Path, ca: trustme.CA, **kwargs: object) -> Iterator[RunningDaemon]:
    return running_imap_daemon(tmp_path, ca, "asyncio", **kwargs)


def not_authenticated(c: RawImap) -> bool:
    """SELECT is refused (BAD/NO) in the not-authenticated state."""
    return c.command("SELECT INBOX").status in ("BAD", "NO")


# -- TLS before credentials -------------------------------------------------------------------

def test_capability_on_143_before_tls(imapd: RunningDaemon) -> None:
    c = RawImap.plain(imapd)
    greeting = c.greeting()
    assert b"AUTH=" not in greeting.upper()
    r = c.ok("CAPABILITY")
    caps = r.untagged_named("CAPABILITY")[0].upper().split()
    assert b"STARTTLS" in caps and b"LOGINDISABLED" in caps
    assert not [x for x in caps if x.startswith(b"AUTH=")]
    c.close()


@pytest.mark.parametrize("command", [
    'LOGIN bob "{pw}"',
    "AUTHENTICATE PLAIN {ir}",
    "AUTHENTICATE PLAIN",
])
def test_credentials_refused_before_starttls(imapd: RunningDaemon, command: str) -> None:
    c = RawImap.plain(imapd)
    c.greeting()
    line = command.format(pw=password("bob"), ir=plain_b64("bob"))
    r = c.command(line)
    assert r.status == "NO", r  # RFC 3501 §6.2.3 / §6.2.2: refused until TLS
    assert not r.continuations  # no SASL exchange was started
    assert not_authenticated(c)
    # the same connection upgrades and then logs in
    c.starttls(imapd.client_context())
    caps = c.ok("CAPABILITY").untagged_named("CAPABILITY")[0].upper().split()
    assert b"LOGINDISABLED" not in caps and b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps
    assert not_authenticated(c)  # state was reset by the upgrade, nothing carried over
    c.login("bob")
    assert c.command("SELECT INBOX").status == "OK"
    c.close()


def test_starttls_injection_never_authenticates(imapd: RunningDaemon) -> None:
    submit(imapd, message("secret"))
    c = RawImap.plain(imapd)
    c.greeting()
    c.send(f'a STARTTLS\r\nb LOGIN bob "{password("bob")}"\r\nc SELECT INBOX\r\n'
           "d FETCH 1 BODY[]\r\n".encode())
    first = c.read_response()
    assert first is not None, "closed without answering STARTTLS"
    if not first.startswith(b"a OK"):
        # Refusing the STARTTLS because of what follows it is safe too, if the smuggled
        # commands then get plaintext refusals (LOGINDISABLED) or the connection closes.
        assert first.startswith((b"a BAD", b"a NO")), first
        try:
            assert c.until_tagged("b").status in ("NO", "BAD")
            assert c.until_tagged("c").status in ("NO", "BAD")
            assert c.until_tagged("d").status in ("NO", "BAD")
            assert not_authenticated(c)
        except ServerClosed:
            pass
        assert b"secret" not in b"".join(c.seen)
        c.close()
        return
    # Whatever the server does with the smuggled lines (discard, or refuse and close), it
    # must never have answered them in plaintext nor run them inside TLS.
    leftover = c.buf
    assert b"b OK" not in leftover and b"FETCH" not in leftover
    c.buf = b""
    try:
        c.wrap(imapd.client_context())
        r = c.command("SELECT INBOX", tag="e")
    except (ssl.SSLError, OSError, ServerClosed):
        return  # closed instead of upgrading: nothing was executed
    seen = b"".join(c.seen)
    assert b"b OK" not in seen and b"c OK" not in seen and b"secret" not in seen
    assert r.status in ("BAD", "NO")
    c.close()


def test_plaintext_racing_the_handshake_is_not_executed(imapd: RunningDaemon) -> None:
    c = RawImap.plain(imapd)
    c.greeting()
    r = c.command("STARTTLS")
    assert r.status == "OK"
    c.send(f'b LOGIN bob "{password("bob")}"\r\n'.encode())  # plaintext where TLS must start
    assert c.closed()
    assert b"b OK" not in c.buf


def test_starttls_refused_inside_tls_and_after_login(imapd: RunningDaemon) -> None:
    c = RawImap.tls(imapd)
    c.greeting()
    assert c.command("STARTTLS").status in ("BAD", "NO")
    c.close()


# -- hostile input ----------------------------------------------------------------------------

@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02\xff\xfe\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",   # a TLS ClientHello on a TLS socket
    b"a1 \xff\xfe\xfd\r\n",
    b"a2 LOGIN\r\n",
    b"a3 FETCH 1:* (BODY[\r\n",
    b"a4 SELECT \"unterminated\r\n",
    b"a5 SEARCH ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((\r\n",
    b")(*&^%$#@!\r\n",
    b"a6 LOGIN {5}\r\n",       # a literal announcement before authentication, then a command
])
def test_garbage_gets_bad_and_the_session_survives(imapd: RunningDaemon, garbage: bytes) -> None:
    c = RawImap.tls(imapd)
    c.greeting()
    c.send(garbage)
    if garbage.endswith(b"{5}\r\n"):
        cont = c.read_response()
        assert cont is not None and (cont.startswith(b"+") or b" BAD" in cont
                                     or b" NO" in cont), cont
        if cont.startswith(b"+"):
            c.send(b"bob12 x\r\n")
    r = c.command("NOOP", tag="zz1")
    assert r.status == "OK"
    errors = [line for line in [*r.other_tags, *r.untagged]
              if line.split(b" ")[1:2] in ([b"BAD"], [b"NO"]) or line.startswith(b"BAD")]
    assert errors, c.seen
    c.login("bob")
    assert c.command("SELECT INBOX").status == "OK"
    c.close()


def test_garbage_before_authentication_in_the_selected_state(imapd: RunningDaemon) -> None:
    submit(imapd, message("keep me"))
    c = session(imapd)
    for bad in ("FETCH", "FETCH 1", "FETCH x FLAGS", "STORE 1 FLAGS", "COPY 1",
                "FETCH 0 FLAGS", "FETCH 4294967296 FLAGS", "SEARCH NOT", "UID", "APPEND"):
        assert c.command(bad).status == "BAD", bad
    assert c.ok("FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]").fetches()[1][
        "BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: keep me\r\n\r\n"
    c.close()


def test_overlong_line_is_refused_then_usable(tmp_path: Path, ca: trustme.CA) -> None:
    limit = 8192  # the smallest allowed imap.max_line_length (RFC 7162 §4)
    gen = custom(tmp_path, ca, imap={"max_line_length": limit})
    d = next(gen)
    try:
        c = RawImap.tls(d)
        c.greeting()
        c.login("bob")
        c.ok("SELECT INBOX")
        # well within the limit: accepted (a long but valid sequence set)
        seq = ",".join(["1"] * ((limit - 200) // 2))
        assert c.command(f"SEARCH {seq}").status == "OK"
        # twice the limit: BAD, the rest of the line is drained, the session continues
        r = c.command("SEARCH " + ",".join(["1"] * limit))
        assert r.status == "BAD"
        assert c.command("NOOP").status == "OK"
        # a huge line (1 MiB) does not make the server buffer it: BAD or a clean close
        try:
            c.send(b"x1 NOOP " + b"a" * (1 << 20) + b"\r\n")
            r = c.until_tagged("x1")
            assert r.status == "BAD"
            assert c.command("NOOP").status == "OK"
        except (ServerClosed, ConnectionError):
            assert c.closed()
        c.close()
    finally:
        gen.close()


def test_literal_over_the_limit_is_refused_before_it_is_sent(tmp_path: Path,
                                                             ca: trustme.CA) -> None:
    limit = 4096
    gen = custom(tmp_path, ca, imap={"max_literal_size": limit})
    d = next(gen)
    try:
        c = session(d)
        # at the limit: accepted
        data = message("at limit", b"x" * 10)
        data += b"y" * (limit - len(data) - 2) + b"\r\n"
        assert len(data) == limit
        assert append(c, "INBOX", data).status == "OK"
        # one past: a tagged NO or BAD instead of "+", so the client never sends it (§7.5)
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX {{{limit + 1}}}\r\n".encode())
        line = c.read_response()
        assert line is not None and line.startswith(f"{tag} ".encode()), line
        assert line.split()[1] in (b"NO", b"BAD")
        assert b"[TOOBIG]" in line.upper() or line.split()[1] == b"BAD"
        # never read: the connection is in sync, the next command works
        assert c.command("NOOP").status == "OK"
        # a 2 GiB announcement is refused the same way, without waiting for the data
        r = c.command("APPEND INBOX {2147483648}")
        assert r.status in ("NO", "BAD") and not r.continuations
        assert c.command("NOOP").status == "OK"
        assert c.ok("STATUS INBOX (MESSAGES)").untagged_named("STATUS")[0].endswith(
            b"(MESSAGES 1)")
        c.close()
    finally:
        gen.close()


def test_huge_nonsynchronizing_literal_is_not_read_to_the_end(tmp_path: Path,
                                                              ca: trustme.CA) -> None:
    """LITERAL+ (RFC 7888 §4): the client sends without waiting, so the server must answer
    (BAD [TOOBIG] or NO) or close; it must not wait for 100 MB it will not store."""
    gen = custom(tmp_path, ca, imap={"max_literal_size": 4096})
    d = next(gen)
    try:
        c = session(d)
        c.send(b"big APPEND INBOX {100000000+}\r\n" + b"z" * 65536)
        try:
            r = c.until_tagged("big")
            assert r.status in ("BAD", "NO")
        except ServerClosed:
            pass  # closing is allowed
        except TimeoutError:  # socket timeout: the server is waiting for the data
            pytest.fail("the server waits for the whole oversized literal")
        c.close()
        assert d.maildir_files("bob") == []
    finally:
        gen.close()


def test_bad_command_budget_closes_the_connection(tmp_path: Path, ca: trustme.CA) -> None:
    gen = custom(tmp_path, ca, imap={"max_errors": 3})
    d = next(gen)
    try:
        c = RawImap.tls(d)
        c.greeting()
        assert c.command("BOGUS1").status == "BAD"
        assert c.command("BOGUS2").status == "BAD"
        assert c.command("NOOP").status == "OK"   # a good command resets "in a row"
        assert c.command("BOGUS3").status == "BAD"
        assert c.command("BOGUS4").status == "BAD"
        c.send(b"z BOGUS5\r\n")
        assert c.closed()  # the third bad command in a row ends the session
        assert b"* BYE" in c.buf or any(x.startswith(b"* BYE") for x in c.seen)
        c.close()
        d2 = RawImap.tls(d)  # a new connection is fine
        d2.greeting()
        d2.login("bob")
        d2.close()
    finally:
        gen.close()


# -- budgets ----------------------------------------------------------------------------------

def test_auth_failures_are_throttled_per_address(tmp_path: Path, ca: trustme.CA) -> None:
    gen = custom(tmp_path, ca, security={"auth_failures_before_delay": 100,
                                         "auth_failures_before_block": 2,
                                         "auth_block_seconds": 600})
    d = next(gen)
    try:
        c = RawImap.tls(d)
        c.greeting()
        assert c.command('LOGIN bob "wrong-1"').status == "NO"
        assert c.command(f"AUTHENTICATE PLAIN {plain_b64('bob', 'wrong-2')}").status == "NO"
        r = c.command(f'LOGIN bob "{password("bob")}"')
        assert r.status == "NO"  # blocked even with the right password
        assert not_authenticated(c)
        c.close()
        c = RawImap.tls(d)  # a new connection from the same address: still blocked
        c.greeting()
        assert c.command(f"AUTHENTICATE PLAIN {plain_b64('bob')}").status == "NO"
        c.close()
        other = RawImap.tls(d, source="127.0.0.2")  # another client address is unaffected
        other.greeting()
        other.login("bob")
        assert other.command("SELECT INBOX").status == "OK"
        other.close()
    finally:
        gen.close()


def test_connections_per_user(tmp_path: Path, ca: trustme.CA) -> None:
    gen = custom(tmp_path, ca, imap={"max_connections_per_user": 2})
    d = next(gen)
    try:
        a = session(d, select=None)
        b = session(d, select=None)
        c = RawImap.tls(d)
        c.greeting()
        try:
            r = c.command(f'LOGIN bob "{password("bob")}"')
            assert r.status == "NO"
        except ServerClosed:
            pass  # BYE and close is also a refusal
        c.close()
        other = session(d, "alice", select=None)  # per user, not global
        other.close()
        a.command("LOGOUT")
        a.close()
        time.sleep(0.2)
        again = session(d, select=None)  # a slot is free again
        again.close()
        b.close()
    finally:
        gen.close()


def test_idle_autologout(tmp_path: Path, ca: trustme.CA) -> None:
    gen = custom(tmp_path, ca, imap={"idle_timeout": 0.5})
    d = next(gen)
    try:
        submit(d, message("kept"))
        c = session(d)
        c.ok("STORE 1 +FLAGS (\\Deleted)")
        line = c.read_response()  # nothing more is sent: the server times out
        assert line is not None and line.upper().startswith(b"* BYE"), line
        assert c.closed()
        assert len(d.maildir_files("bob")) == 1  # autologout does not expunge (§6.4.2)
        pre = RawImap.tls(d)  # also before authentication
        pre.greeting()
        assert pre.closed()
    finally:
        gen.close()


def test_secrets_never_reach_the_logs(imapd: RunningDaemon,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = RawImap.tls(imapd)
    c.greeting()
    assert c.command('LOGIN bob "wrong-password-xyz"').status == "NO"
    assert c.command(f"AUTHENTICATE PLAIN {plain_b64('bob', 'other-wrong-pw')}").status == "NO"
    r = c.with_literal("LOGIN bob", b"literal-wrong-pw")
    assert r.status == "NO"
    ir = plain_b64("bob")
    assert c.command(f"AUTHENTICATE PLAIN {ir}").status == "OK"
    c.command("LOGOUT")
    c.close()
    c = RawImap.plain(imapd)
    c.greeting()
    c.command(f'LOGIN bob "{password("bob")}"')  # refused before TLS, still never logged
    c.close()
    time.sleep(0.3)
    text = caplog.text
    for secret in ("wrong-password-xyz", "other-wrong-pw", "literal-wrong-pw", password("bob"),
                   ir, plain_b64("bob", "other-wrong-pw")):
        assert secret not in text
    assert "bob" in text  # the log does say who logged in


def test_no_open_port_accepts_credentials_in_clear(imapd: RunningDaemon) -> None:
    """A raw client that never upgrades gets nothing but refusals on 143."""
    c = RawImap.plain(imapd)
    c.greeting()
    for cmd in (f'LOGIN bob "{password("bob")}"', f"AUTHENTICATE PLAIN {plain_b64('bob')}",
                f'LOGIN "bob" {{{len(password("bob"))}}}'):
        if cmd.endswith("}"):
            r = c.with_literal(cmd.rsplit(" ", 1)[0], password("bob").encode())
        else:
            r = c.command(cmd)
        assert r.status in ("NO", "BAD"), cmd
    assert not_authenticated(c)
    c.close()


def test_tls_handshake_garbage_on_993_is_dropped(imapd: RunningDaemon) -> None:
    sock = socket.create_connection(("127.0.0.1", imapd.imaps_port), timeout=10)
    sock.sendall(b"a LOGIN bob x\r\n" * 10)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    assert b"OK" not in data


def test_append_then_logout_keeps_exactly_one_copy(imapd: RunningDaemon) -> None:
    c = session(imapd)
    append(c, "INBOX", message("only once"))
    c.command("LOGOUT")
    c.close()
    assert len(imapd.maildir_files("bob")) == 1
