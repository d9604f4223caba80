"""Helpers for POP3 integration tests: a daemon with POP3 listeners, raw TLS lines, mail."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trustme

from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config


def running_pop3_daemon(root: Path, ca: trustme.CA, loop_kind: str = "asyncio",
                        **kwargs: Any) -> Iterator[RunningDaemon]:
    config = write_config(root, ca, pop3_listeners=True, **kwargs)
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        running.stop()


def submit(d: RunningDaemon, body: bytes, rcpt: str = "bob@example.test",
           sender: str = "alice@example.test") -> None:
    """Submit on 587 (STARTTLS + AUTH) as alice."""
    with d.smtp() as s:
        s.login("alice", "alice-secret-pw")
        s.sendmail(sender, [rcpt], body)


def message(subject: str, body: bytes = b"hello\r\n") -> bytes:
    return (f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\n"
            .encode() + body)


class RawPop3:
    """A line-level POP3 client over a socket (TLS or not) for byte-exact tests."""

    def __init__(self, d: RunningDaemon, *, tls: bool, port: int | None = None,
                 timeout: float = 10) -> None:
        port = port or (d.pop3s_port if tls else d.pop3_port)
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock: socket.socket = (d.client_context().wrap_socket(sock,
                                    server_hostname="127.0.0.1") if tls else sock)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def multiline(self) -> list[bytes]:
        lines = []
        while (ln := self.line()) != b".":
            lines.append(ln)
        return lines

    def closed(self) -> bool:
        """True once the server closed the connection (no more bytes)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()
