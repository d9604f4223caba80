"""TLS session resumption (RFC 8446 §2.2: a TLS 1.3 ticket) on every door, implicit TLS and
STARTTLS alike, through the SNI-swapping front context; and a resumed TLS session resumes
nothing else: the client is not logged in (issue 10: resumed handshakes cost the daemon less).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import HOSTNAME, RunningDaemon, start_thread_daemon, write_config

TIMEOUT = 10.0
DOORS = ("submission", "submissions", "imaps", "imap", "pop3s", "pop3")


@pytest.fixture
def every_door(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True)
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        running.stop()


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def ask(self, text: bytes, last: bytes) -> bytes:
        """Send a line; the reply line that starts with `last` (earlier ones skipped)."""
        self.sock.sendall(text + b"\r\n")
        while not (line := self.line()).startswith(last):
            pass
        return line


def open_tls(daemon: RunningDaemon, door: str, ctx: ssl.SSLContext,
             session: ssl.SSLSession | None) -> tuple[ssl.SSLSocket, Conn]:
    """A TLS connection to `door`, its first exchange inside TLS done (which also reads the
    server's session tickets)."""
    raw = socket.create_connection(("127.0.0.1", daemon.ports[door]), timeout=TIMEOUT)
    plain = Conn(raw)
    if door == "submission":
        plain.line()
        plain.ask(b"EHLO client.test", b"250 ")
        assert plain.ask(b"STARTTLS", b"220").startswith(b"220 ")
    elif door == "imap":
        plain.line()
        assert plain.ask(b"s STARTTLS", b"s ").startswith(b"s OK")
    elif door == "pop3":
        plain.line()
        assert plain.ask(b"STLS", b"+OK").startswith(b"+OK")
    tls = ctx.wrap_socket(raw, server_hostname=HOSTNAME, session=session)
    c = Conn(tls)
    if door.startswith("submission"):
        if door == "submissions":
            assert c.line().startswith(b"220 ")
        c.ask(b"EHLO client.test", b"250 ")
    elif door.startswith("imap"):
        if door == "imaps":
            assert c.line().startswith(b"* OK")
        assert c.ask(b"c CAPABILITY", b"c ").startswith(b"c OK")
    else:
        if door == "pop3s":
            assert c.line().startswith(b"+OK")
        assert c.ask(b"CAPA", b".").startswith(b".")
    return tls, c


@pytest.mark.parametrize("door", DOORS)
def test_a_ticket_resumes_the_tls_session_and_nothing_else(every_door: RunningDaemon,
                                                           door: str) -> None:
    ctx = every_door.client_context()
    first, _ = open_tls(every_door, door, ctx, None)
    assert not first.session_reused
    assert first.version() == "TLSv1.3"
    ticket = first.session
    assert ticket is not None and ticket.has_ticket
    first.close()

    again, c = open_tls(every_door, door, ctx, ticket)
    try:
        assert again.session_reused  # the server accepted the ticket: no full handshake
        # The login was not part of what was resumed: the client must authenticate again.
        if door.startswith("submission"):
            assert c.ask(b"MAIL FROM:<alice@example.test>", b"5").startswith(b"530")
        elif door.startswith("imap"):
            reply = c.ask(b"x SELECT INBOX", b"x ")
            assert reply.startswith((b"x BAD", b"x NO"))
        else:
            assert c.ask(b"STAT", b"-ERR").startswith(b"-ERR")
    finally:
        again.close()

