"""Memory held for client input, from the attacker's side (issue 7 item 2), over real sockets.

Before login an IMAP client may send literals of at most 4096 octets (LITERAL-): a larger
non-synchronizing one closes the connection without being read, a larger synchronizing one
is refused before "+". After login only APPEND may carry a large literal; other commands'
literals are bounded by the line length, refused and drained without being held. Every
literal, and every SMTP DATA section, reserves its octets in one daemon-wide budget
(security.max_buffered_input): past it uploads get a temporary refusal (NO [UNAVAILABLE],
452 4.3.1) instead of growing the process, and whatever a session reserved comes back when
its command is done or its client disappears. SMTP SIZE counts the message, not the wire.

Bounded by socket timeouts, counts and eventually(); nothing is timed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme

from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config
from tests.support.imap import RawImap, append, session
from tests.support.imap import close_all as close_imap_clients
from tests.support.rawsmtp import RawSMTP, ready_session
from tests.support.rawsmtp import close_all as close_smtp_clients
from tests.support.tlsraw import MemoryTlsClient
from tests.support.wait import eventually

if TYPE_CHECKING:
    from mailkeep.security.memory import InputBudget

TIMEOUT = 5.0
LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_smtp_clients()
    close_imap_clients()


def _daemon(tmp_path: Path, ca: trustme.CA, loop_kind: str,
            **kwargs: object) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca, imap_listeners=True, **kwargs)  # type: ignore[arg-type]
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        close_smtp_clients()
        close_imap_clients()
        running.stop()


def _input_budget(d: RunningDaemon) -> InputBudget:
    assert d.daemon is not None and d.daemon.services is not None
    return d.daemon.services.input_budget


def _held(d: RunningDaemon) -> int:
    return _input_budget(d).held


def _connections(d: RunningDaemon, address: str = "127.0.0.1") -> int:
    assert d.daemon is not None and d.daemon.services is not None
    return d.daemon.services.budget.count(address)


def _message(size: int, subject: str = "big") -> bytes:
    """A message of exactly `size` octets: a complete header (nothing for the server to
    add but its trace field) and 78-octet lines."""
    head = (f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Date: Mon, 02 Feb 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    full = max((size - len(head)) // len(line) - 1, 0)
    body = line * full
    body += b"y" * (size - len(head) - len(body) - 2) + b"\r\n"
    message = head + body
    assert len(message) == size, (len(message), size)
    return message


def _server_closed(sock: socket.socket) -> bool:
    """True once the server closes (EOF or reset); False if it keeps the connection open
    until the socket timeout. Whatever it says first is read and dropped."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return True


def _payload_refused(sock: socket.socket, total: int = 8 * 1024 * 1024) -> None:
    """Push up to `total` octets at a connection the server has closed: they must be
    refused (reset / broken pipe), not taken. A server that read and discarded them would
    let all of them through; one that neither read nor closed would hit the timeout."""
    chunk = b"z" * 65536
    sent = 0
    try:
        while sent < total:
            sent += sock.send(chunk)
    except TimeoutError:
        pytest.fail(f"the server neither read nor closed after {sent} octets")
    except OSError:
        return
    pytest.fail(f"the server took {sent} octets of a literal it had refused")


# -- IMAP before login ----------------------------------------------------------------------

# 30 MB is over any literal limit; 5 MB is over the 4096 octets allowed before login but
# under max_literal_size (25 MiB), which is what the server used to drain and hold.
PRELOGIN_SIZES = [30_000_000, 5_000_000]


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("size", PRELOGIN_SIZES)
def test_prelogin_nonsynchronizing_literal_is_refused_and_never_read(
        tmp_path: Path, ca: trustme.CA, loop_kind: str, size: int) -> None:
    gen = _daemon(tmp_path, ca, loop_kind)
    d = next(gen)
    try:
        # 143 before STARTTLS: the answer, then the connection closes.
        c = RawImap.plain(d, timeout=TIMEOUT)
        c.greeting()
        c.send(b"a LOGIN {%d+}\r\n" % size)
        line = c.read_response()
        assert line is not None and line.startswith(b"a BAD [TOOBIG]"), line
        assert _server_closed(c.sock)
        _payload_refused(c.sock)
        c.close()

        # 993 before login: the same, and the TCP connection (not only TLS) is closed.
        t = MemoryTlsClient(d.imaps_port, d.client_context(), timeout=TIMEOUT)
        try:
            greeting = t.line()
            assert greeting is not None and greeting.startswith(b"* OK"), greeting
            t.send(b"b LOGIN {%d+}\r\n" % size)
            line = t.line()
            assert line is not None and line.startswith(b"b BAD [TOOBIG]"), line
            assert t.wait_tcp_close()
            _payload_refused(t.sock)
        finally:
            t.close()
        assert eventually(lambda: _connections(d) == 0)
        assert _held(d) == 0
    finally:
        gen.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_sixty_prelogin_literal_floods_hold_nothing(tmp_path: Path, ca: trustme.CA,
                                                   loop_kind: str) -> None:
    """Sixty connections at once announce a large non-synchronizing literal before login
    and send the first 64 KiB of it: every one is closed, no input is held, no slot is
    kept, and an honest client logs in and stores mail."""
    gen = _daemon(tmp_path, ca, loop_kind, security={"max_connections_per_ip": 100})
    d = next(gen)
    try:
        clients = []
        for i in range(60):
            c = RawImap.tls(d, timeout=TIMEOUT) if i % 2 else RawImap.plain(d, timeout=TIMEOUT)
            c.greeting()
            clients.append(c)
        for i, c in enumerate(clients):
            size = PRELOGIN_SIZES[(i // 2) % 2]
            # Refused and closed before the 64 KiB are all written is as it should be.
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                c.send(b"f%d LOGIN {%d+}\r\n" % (i, size) + b"p" * 65536)
        for i, c in enumerate(clients):
            try:
                line = c.read_response()
            except (ConnectionError, ssl.SSLError):
                line = None  # a reset may overtake the answer; closing is what matters
            if line is not None:
                assert line.startswith(b"f%d BAD [TOOBIG]" % i), line
            assert _server_closed(c.sock), f"connection {i} left open"
            c.close()
        assert eventually(lambda: _connections(d) == 0)
        assert _held(d) == 0
        honest = session(d, timeout=TIMEOUT)
        append(honest, "INBOX", _message(2000, "after the flood"))
        assert honest.command("NOOP").status == "OK"
        honest.close()
        assert len(d.maildir_files("bob")) == 1
        assert eventually(lambda: _held(d) == 0)
    finally:
        gen.close()


def _caps(line: bytes) -> set[bytes]:
    return set(line.upper().replace(b"]", b" ").split())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_literal_minus_before_login_literal_plus_after(tmp_path: Path, ca: trustme.CA,
                                                       loop_kind: str) -> None:
    """RFC 7888: LITERAL- (non-synchronizing literals of at most 4096 octets) before
    login, and nothing larger is accepted then; LITERAL+ once logged in."""
    gen = _daemon(tmp_path, ca, loop_kind, security={"auth_failures_before_delay": 100})
    d = next(gen)
    try:
        c = RawImap.tls(d, timeout=TIMEOUT)
        greeting = c.greeting()
        assert b"LITERAL-" in _caps(greeting) and b"LITERAL+" not in _caps(greeting)
        caps = _caps(c.ok("CAPABILITY").untagged_named("CAPABILITY")[0])
        assert b"LITERAL-" in caps and b"LITERAL+" not in caps

        # A synchronizing literal over 4096: NO [TOOBIG] instead of "+" (RFC 7889 §4).
        r = c.command("LOGIN {5000}")
        assert (r.status, r.code, r.continuations) == ("NO", "TOOBIG", []), r
        # At the limit it is read (and the password is simply wrong)...
        r = c.with_literal("LOGIN bob", b"s" * 4096)
        assert (r.status, r.code) == ("NO", "AUTHENTICATIONFAILED"), r
        # ...non-synchronizing too, as LITERAL- allows...
        c.send(b"n1 LOGIN bob {4096+}\r\n" + b"s" * 4096 + b"\r\n")
        r = c.until_tagged("n1")
        assert (r.status, r.code) == ("NO", "AUTHENTICATIONFAILED"), r
        # ...and the session is intact: logging in gives LITERAL+.
        r = c.login("bob")
        assert b"LITERAL+" in _caps(r.text) and b"LITERAL-" not in _caps(r.text)
        caps = _caps(c.ok("CAPABILITY").untagged_named("CAPABILITY")[0])
        assert b"LITERAL+" in caps and b"LITERAL-" not in caps
        c.close()

        # On 143 the same before STARTTLS and after it.
        p = RawImap.plain(d, timeout=TIMEOUT)
        greeting = p.greeting()
        assert b"LITERAL-" in _caps(greeting) and b"LITERAL+" not in _caps(greeting)
        r = p.command("LOGIN {5000}")
        assert (r.status, r.code, r.continuations) == ("NO", "TOOBIG", []), r
        p.starttls(d.client_context())
        caps = _caps(p.ok("CAPABILITY").untagged_named("CAPABILITY")[0])
        assert b"LITERAL-" in caps and b"LITERAL+" not in caps
        p.send(b"n2 LOGIN bob {4097+}\r\n")  # one past the limit: refused and closed
        r = p.until_tagged("n2")
        assert (r.status, r.code) == ("BAD", "TOOBIG"), r
        assert _server_closed(p.sock)
        p.close()
    finally:
        gen.close()


# -- IMAP after login -----------------------------------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_only_append_may_carry_a_literal_longer_than_a_line(tmp_path: Path, ca: trustme.CA,
                                                            loop_kind: str) -> None:
    """SEARCH's literal is a string: at most imap.max_line_length (64 KiB). Larger is
    refused before "+" (synchronizing) or drained without being held (non-synchronizing,
    under max_literal_size), and the session stays in sync."""
    budget = 300_000
    gen = _daemon(tmp_path, ca, loop_kind, security={"max_buffered_input": budget})
    d = next(gen)
    try:
        line_limit = 65_536
        c = session(d, timeout=TIMEOUT)
        r = c.command("SEARCH TEXT {100000}")
        assert (r.status, r.code, r.continuations) == ("NO", "TOOBIG", []), r
        r = c.with_literal("SEARCH TEXT", b"q" * line_limit)   # at the limit
        assert r.status == "OK", r
        r = c.with_literal("SEARCH TEXT", b"q" * (line_limit + 1))  # one past
        assert (r.status, r.code) == ("NO", "TOOBIG"), r
        assert c.command("NOOP").status == "OK"

        # Non-synchronizing, 200 KB: half of it is sent, then another session uploads a
        # 250 KB message, which only fits the 300 KB budget if the drained literal holds
        # nothing.
        c.send(b"n1 SEARCH TEXT {200000+}\r\n" + b"q" * 100_000)
        other = session(d, "alice", timeout=TIMEOUT)
        append(other, "INBOX", _message(250_000, "while draining"))
        other.close()
        c.send(b"q" * 100_000 + b"\r\n")
        r = c.until_tagged("n1")
        assert (r.status, r.code) == ("NO", "TOOBIG"), r
        assert c.command("NOOP").status == "OK"
        assert c.ok("SEARCH ALL").search() == []
        c.close()
        assert eventually(lambda: _held(d) == 0)
        assert len(d.maildir_files("alice")) == 1
    finally:
        gen.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_imap_literals_share_one_daemon_wide_budget(tmp_path: Path, ca: trustme.CA,
                                                    loop_kind: str) -> None:
    size = 1_500_000
    gen = _daemon(tmp_path, ca, loop_kind, security={"max_buffered_input": 2 * 1024 * 1024})
    d = next(gen)
    try:
        data = _message(size)
        a = session(d, "bob", timeout=TIMEOUT)
        b = session(d, "alice", timeout=TIMEOUT)

        # A announces 1.5 MB, gets "+", sends half: its reservation is made before "+".
        a.send(b"up APPEND INBOX {%d}\r\n" % size)
        a.continuation()
        a.send(data[:size // 2])
        # B's synchronizing 1.5 MB does not fit: NO [UNAVAILABLE] instead of "+".
        r = b.command(f"APPEND INBOX {{{size}}}")
        assert (r.status, r.code, r.continuations) == ("NO", "UNAVAILABLE", []), r
        assert _held(d) == size
        # B's non-synchronizing 1.5 MB is read to its end without being held, then refused.
        b.send(b"nb APPEND INBOX {%d+}\r\n" % size + data + b"\r\n")
        r = b.until_tagged("nb")
        assert (r.status, r.code) == ("NO", "UNAVAILABLE"), r
        assert b.command("NOOP").status == "OK"
        assert _held(d) == size
        # A completes; then B's upload fits.
        a.send(data[size // 2:] + b"\r\n")
        assert a.until_tagged("up").status == "OK"
        assert eventually(lambda: _held(d) == 0)
        append(b, "INBOX", data)
        assert eventually(lambda: _held(d) == 0)

        # A client that disappears in the middle of its literal gives its reservation back.
        gone = session(d, "bob", timeout=TIMEOUT)
        gone.send(b"g APPEND INBOX {%d}\r\n" % size)
        gone.continuation()
        assert _held(d) == size
        gone.send(data[:100_000])
        gone.close()
        assert eventually(lambda: _held(d) == 0)

        assert [len(f.read_bytes()) for f in d.maildir_files("bob")] == [size]
        assert [len(f.read_bytes()) for f in d.maildir_files("alice")] == [size]
        assert a.command("NOOP").status == "OK" and b.command("NOOP").status == "OK"
        a.close()
        b.close()
    finally:
        gen.close()


# -- SMTP DATA ------------------------------------------------------------------------------


def _start_data(c: RawSMTP) -> None:
    for command, code in (("MAIL FROM:<alice@example.test>", 250),
                          ("RCPT TO:<bob@example.test>", 250), ("DATA", 354)):
        r = c.cmd(command)
        assert r.code == code, (command, str(r))


def _smtp(d: RunningDaemon) -> RawSMTP:
    return ready_session(d.submission_port, d.client_context(), timeout=TIMEOUT)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_smtp_data_shares_the_daemon_wide_budget(tmp_path: Path, ca: trustme.CA,
                                                 loop_kind: str) -> None:
    gen = _daemon(tmp_path, ca, loop_kind, security={"max_buffered_input": 1024 * 1024})
    d = next(gen)
    try:
        big, other = _message(900_000, "big"), _message(500_000, "other")
        a = _smtp(d)
        _start_data(a)
        a.send(big)  # no final dot yet
        assert eventually(lambda: _held(d) >= len(big))

        b = _smtp(d)
        _start_data(b)
        b.send(other + b".\r\n")
        r = b.reply()
        assert (r.code, r.enhanced) == (452, "4.3.1"), str(r)
        assert b.cmd("NOOP").code == 250

        a.send(b".\r\n")
        r = a.reply()
        assert r.code == 250, str(r)
        assert eventually(lambda: _held(d) == 0)

        _start_data(b)
        b.send(other + b".\r\n")
        r = b.reply()
        assert r.code == 250, str(r)
        assert eventually(lambda: _held(d) == 0)

        # A client that drops in the middle of DATA gives its reservation back.
        gone = _smtp(d)
        _start_data(gone)
        gone.send(other[:300_000])
        assert eventually(lambda: _held(d) >= 300_000)
        gone.close()
        assert eventually(lambda: _held(d) == 0)

        stored = [f.read_bytes() for f in d.maildir_files("bob")]
        assert len(stored) == 2
        assert sorted(m.endswith(big) or m.endswith(other) for m in stored) == [True, True]
        for c in (a, b):
            assert c.cmd("QUIT").code == 221
            c.close()
    finally:
        gen.close()


def _dotted_message(size: int) -> bytes:
    """Exactly `size` octets; every body line starts with "." (some are only "." or ".."),
    so the dot-stuffed wire form is one octet longer per body line."""
    head = (b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: dots\r\n"
            b"Date: Mon, 02 Feb 2026 10:00:00 +0000\r\nMessage-ID: <dots@example.test>\r\n\r\n")
    lines = [b".\r\n", b"..\r\n", b"." + b"d" * 75 + b"\r\n"]
    parts: list[bytes] = []
    length = len(head)
    while size - length >= 2 * 80:
        parts.append(lines[len(parts) % 3])
        length += len(parts[-1])
    body = b"".join(parts)
    rest = size - length
    body += b"." + b"e" * (rest - 3) + b"\r\n"
    message = head + body
    assert len(message) == size
    return message


def _stuffed(message: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency: a line starting with "." gets one more."""
    return b"".join(b"." + line if line.startswith(b".") else line
                    for line in message.splitlines(keepends=True))


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_smtp_size_counts_the_message_not_the_wire(tmp_path: Path, ca: trustme.CA,
                                                   loop_kind: str) -> None:
    limit = 100_000
    gen = _daemon(tmp_path, ca, loop_kind, submission={"max_message_size": limit})
    d = next(gen)
    try:
        c = _smtp(d)
        exact = _dotted_message(limit)
        wire = _stuffed(exact)
        assert len(wire) > limit + 1000
        # At the limit, declared and sent: accepted, stored with one dot removed per line.
        assert c.cmd(f"MAIL FROM:<alice@example.test> SIZE={limit}").code == 250
        assert c.cmd("RCPT TO:<bob@example.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(wire + b".\r\n")
        r = c.reply()
        assert r.code == 250, str(r)
        stored = d.maildir_files("bob")
        assert len(stored) == 1 and stored[0].read_bytes().endswith(exact)

        # One octet more: refused after the final dot, and the session stays in sync.
        _start_data(c)
        c.send(_stuffed(_dotted_message(limit + 1)) + b".\r\n")
        r = c.reply()
        assert (r.code, r.enhanced) == (552, "5.3.4"), str(r)
        assert c.cmd("RSET").code == 250
        assert c.cmd("NOOP").code == 250
        # Declared one past the limit: refused at MAIL (RFC 1870 §6.3).
        r = c.cmd(f"MAIL FROM:<alice@example.test> SIZE={limit + 1}")
        assert (r.code, r.enhanced) == (552, "5.3.4"), str(r)
        assert c.cmd("NOOP").code == 250
        assert len(d.maildir_files("bob")) == 1
        assert c.cmd("QUIT").code == 221
        c.close()
        assert eventually(lambda: _held(d) == 0)
    finally:
        gen.close()


def test_server_closed_helper_tells_a_silent_server_from_a_closed_one() -> None:
    """The helper above must be able to fail: an open, silent peer is not 'closed'."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname(), timeout=0.3)
        peer, _ = listener.accept()
        assert not _server_closed(client)
        peer.close()
        assert _server_closed(client)
        client.close()
    finally:
        listener.close()


def test_payload_helper_fails_against_a_server_that_reads() -> None:
    """...and a peer that reads (and drops) everything does not 'refuse' the payload."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        peer, _ = listener.accept()
        peer.settimeout(TIMEOUT)

        def drain() -> None:
            with contextlib.suppress(OSError):
                while peer.recv(1 << 20):
                    pass

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        with pytest.raises(pytest.fail.Exception, match="took"):
            _payload_refused(client)
        client.close()
        reader.join(TIMEOUT)
        peer.close()
    finally:
        listener.close()
