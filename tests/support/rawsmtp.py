"""A tiny raw-socket SMTP client for tests that smtplib cannot express.

It sends exactly the bytes it is given (pipelined, malformed, smuggled) and reads replies line
by line, so a test can see every reply the server wrote, in order, and whether it hung up.
Every read is bounded by the socket timeout: a hanging server fails the test, never blocks it.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import weakref
from dataclasses import dataclass

from tests.support.daemon import HOSTNAME, USERS

_OPEN: weakref.WeakSet[RawSMTP] = weakref.WeakSet()


def close_all() -> None:
    """Close every client still open (a failed assertion skips a test's own close()).

    An open TLS client that never answers close_notify holds its session, and the daemon's
    stop() would wait out its whole shutdown grace for it."""
    for client in list(_OPEN):
        client.close()


class ServerClosed(Exception):
    """The server closed the connection before a complete reply arrived."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]   # each line without the code and separator

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 enhanced status code of the last line, or ""."""
        first = self.lines[-1].split(" ", 1)[0] if self.lines else ""
        parts = first.split(".")
        return first if len(parts) == 3 and all(p.isdigit() for p in parts) else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def plain_blob(user: str, password: str | None = None, authzid: str = "") -> str:
    pw = USERS[user][0] if password is None else password
    return base64.b64encode(f"{authzid}\0{user}\0{pw}".encode()).decode("ascii")


class RawSMTP:
    def __init__(self, port: int, *, host: str = "127.0.0.1", source: str | None = None,
                 implicit_tls: ssl.SSLContext | None = None, timeout: float = 10.0) -> None:
        self.timeout = timeout
        sock = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        if implicit_tls is not None:
            sock = implicit_tls.wrap_socket(sock, server_hostname=HOSTNAME)
        self.sock: socket.socket = sock
        self.buf = b""
        self.eof = False
        _OPEN.add(self)

    # -- bytes ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more bytes into the buffer; False at EOF (or a reset, which is an EOF too)."""
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            chunk = b""
        except ssl.SSLError as exc:  # e.g. an alert: the server ended TLS
            if "EOF" in str(exc) or "ALERT" in str(exc).upper():
                chunk = b""
            else:
                raise
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_line(self) -> bytes | None:
        """One line including its CRLF, or None at EOF."""
        while b"\n" not in self.buf:
            if not self._fill():
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    # -- replies -------------------------------------------------------------------------

    def reply(self) -> Reply:
        """One complete (possibly multi-line) reply; ServerClosed at EOF."""
        lines: list[str] = []
        code = 0
        while True:
            raw = self.read_line()
            if raw is None:
                raise ServerClosed(f"connection closed after {lines!r}")
            text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            assert len(text) >= 3 and text[:3].isdigit(), f"not a reply line: {raw!r}"
            code = int(text[:3])
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(code, tuple(lines))

    def replies_until_closed(self, limit: int = 10_000) -> list[Reply]:
        """Every reply up to the server's close. A timeout (socket.timeout) means it hung."""
        out: list[Reply] = []
        for _ in range(limit):
            try:
                out.append(self.reply())
            except ServerClosed:
                return out
        raise AssertionError("server kept talking without closing")

    def closed(self) -> bool:
        """True if the server has closed (EOF) and sent nothing more; waits up to the timeout."""
        if self.buf:
            return False
        return not self._fill()

    def cmd(self, line: str | bytes) -> Reply:
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply()

    # -- conversation helpers ------------------------------------------------------------

    def greeting(self) -> Reply:
        r = self.reply()
        assert r.code == 220, r
        return r

    def ehlo(self, name: str = "client.test") -> Reply:
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, r
        return r

    def starttls(self, context: ssl.SSLContext) -> None:
        r = self.cmd("STARTTLS")
        assert r.code == 220, r
        self.wrap(context)

    def wrap(self, context: ssl.SSLContext) -> None:
        assert not self.buf, f"plaintext left over before TLS: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=HOSTNAME)

    def login(self, user: str = "alice") -> None:
        r = self.cmd(f"AUTH PLAIN {plain_blob(user)}")
        assert r.code == 235, r

    def close(self) -> None:
        _OPEN.discard(self)
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawSMTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ready_session(port: int, context: ssl.SSLContext, *, user: str | None = "alice",
                  source: str | None = None, timeout: float = 10.0) -> RawSMTP:
    """587: greeting, EHLO, STARTTLS, EHLO again and (unless user is None) AUTH PLAIN."""
    c = RawSMTP(port, source=source, timeout=timeout)
    c.greeting()
    c.ehlo()
    c.starttls(context)
    c.ehlo()
    if user is not None:
        c.login(user)
    return c
