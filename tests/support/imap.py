"""Helpers for IMAP integration tests: a daemon with IMAP listeners, a raw IMAP client, mail.

RawImap sends exactly the bytes it is given (pipelined, malformed, smuggled) and reads whole
responses: a line that ends in a literal announcement "{n}" CRLF is read on through the n
octets and the rest of the line, so one response is one bytes value. Every read is bounded by
the socket timeout: a server that hangs fails the test, it never blocks it.

parse() turns response data into Python values (atoms str, numbers int, NIL None, quoted
strings and literals bytes, parenthesized lists list), enough to check FETCH, LIST, STATUS,
ENVELOPE and BODYSTRUCTURE without trusting imaplib's own parsing.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import re
import socket
import ssl
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from tests.support.daemon import HOSTNAME, USERS, RunningDaemon, start_thread_daemon, write_config

_OPEN: weakref.WeakSet[RawImap] = weakref.WeakSet()
# [imap] for a daemon whose accounts get no default folders at their first LIST (RFC 6154
# provisioning off), for tests that count folders.
BARE_ACCOUNT = {"special_use": {"create": False}}

# -- the daemon -------------------------------------------------------------------------------


def running_imap_daemon(root: Path, ca: trustme.CA, loop_kind: str = "asyncio",
                        **kwargs: Any) -> Iterator[RunningDaemon]:
    """The real daemon with its "imaps" (implicit TLS) and "imap" (STARTTLS) listeners."""
    config = write_config(root, ca, imap_listeners=True, **kwargs)
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        close_all()
        running.stop()


def imaps_port(d: RunningDaemon) -> int:
    return d.ports["imaps"]


def imap_port(d: RunningDaemon) -> int:
    return d.ports["imap"]


def imaps(d: RunningDaemon, timeout: float = 10) -> imaplib.IMAP4_SSL:
    """imaplib on the implicit-TLS listener, certificate verified (SAN 127.0.0.1)."""
    return imaplib.IMAP4_SSL("127.0.0.1", imaps_port(d), ssl_context=d.client_context(),
                             timeout=timeout)


def login(d: RunningDaemon, user: str = "bob") -> imaplib.IMAP4_SSL:
    im = imaps(d)
    typ, _ = im.login(user, USERS[user][0])
    assert typ == "OK"
    return im


def password(user: str) -> str:
    return USERS[user][0]


def plain_b64(user: str, pw: str | None = None, authzid: str = "") -> str:
    secret = USERS[user][0] if pw is None else pw
    return base64.b64encode(f"{authzid}\0{user}\0{secret}".encode()).decode("ascii")


def ca_file(d: RunningDaemon) -> str:
    path = d.root / "ca.pem"
    if not path.exists():
        d.ca.cert_pem.write_to_path(str(path))
    return str(path)


# -- mail -------------------------------------------------------------------------------------


def submit(d: RunningDaemon, body: bytes, rcpt: str = "bob@example.test",
           sender: str = "alice@example.test") -> None:
    """Submit on 587 (STARTTLS + AUTH PLAIN) as alice; the daemon adds its Received line."""
    with d.smtp() as s:
        s.login("alice", password("alice"))
        s.sendmail(sender, [rcpt], body)


def message(subject: str, body: bytes = b"hello\r\n", *, extra: str = "") -> bytes:
    return (f"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"{extra}\r\n").encode() + body


# A real-world shaped message: mixed( alternative(text/plain QP, text/html), attachment ).
PLAIN_BODY = b"Hello Bob, caf=C3=A9 plain part.\r\nSecond line.\r\n"
HTML_BODY = b"<p>Hello Bob</p>\r\n"
ATTACHMENT_BODY = b"AAECAwQFBgcICQ==\r\n"
MULTIPART = (
    b"From: Alice Smith <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>, \"Carol C.\" <carol@example.test>\r\n"
    b"Cc: dave@example.test\r\n"
    b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= multipart\r\n"
    b"Date: Mon, 02 Feb 2026 10:00:00 +0000\r\n"
    b"Message-ID: <mp1@example.test>\r\n"
    b"X-Tag: integration\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"OUTER\"\r\n"
    b"\r\n"
    b"preamble\r\n"
    b"--OUTER\r\n"
    b"Content-Type: multipart/alternative; boundary=\"INNER\"\r\n"
    b"\r\n"
    b"--INNER\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n" + PLAIN_BODY + b"\r\n"
    b"--INNER\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n" + HTML_BODY + b"\r\n"
    b"--INNER--\r\n"
    b"--OUTER\r\n"
    b"Content-Type: application/octet-stream; name=\"data.bin\"\r\n"
    b"Content-Disposition: attachment; filename=\"data.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + ATTACHMENT_BODY + b"\r\n"
    b"--OUTER--\r\n"
)


# -- parsing responses ------------------------------------------------------------------------

_LITERAL_END = re.compile(rb"\{(\d+)\}\r\n\Z")


class ParseError(Exception):
    pass


def parse(data: bytes) -> list[Any]:
    """Response data (after "* " or a tag) as a list of values."""
    values, _pos = _parse_seq(data, 0, top=True)
    return values


def _parse_seq(data: bytes, pos: int, *, top: bool) -> tuple[list[Any], int]:
    out: list[Any] = []
    n = len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            sub, pos = _parse_seq(data, pos + 1, top=False)
            out.append(sub)
        elif c == b")":
            if top:
                raise ParseError(f"unbalanced ) at {pos} in {data!r}")
            return out, pos + 1
        elif c == b'"':
            buf = bytearray()
            pos += 1
            while True:
                if pos >= n:
                    raise ParseError(f"unterminated quoted string in {data!r}")
                ch = data[pos]
                if ch == 0x5C:
                    buf.append(data[pos + 1])
                    pos += 2
                elif ch == 0x22:
                    pos += 1
                    break
                else:
                    buf.append(ch)
                    pos += 1
            out.append(bytes(buf))
        elif c == b"{":
            m = re.compile(rb"\{(\d+)\+?\}\r\n").match(data, pos)
            if not m:
                raise ParseError(f"bad literal at {pos} in {data!r}")
            size = int(m.group(1))
            out.append(data[m.end():m.end() + size])
            pos = m.end() + size
        else:
            start = pos
            depth = 0
            while pos < n:
                ch = data[pos:pos + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth == 0 and ch in (b" ", b"(", b")", b"\r", b"\n"):
                    break
                pos += 1
            atom = data[start:pos].decode("utf-8", "surrogateescape")
            if atom.upper() == "NIL":
                out.append(None)
            elif atom.isdigit():
                out.append(int(atom))
            else:
                out.append(atom)
    if not top:
        raise ParseError(f"unterminated list in {data!r}")
    return out, pos


def pairs(items: list[Any]) -> dict[str, Any]:
    """A FETCH attribute list as {NAME: value}, names upper-cased."""
    if len(items) % 2:
        raise ParseError(f"odd FETCH attribute list {items!r}")
    return {str(items[i]).upper(): items[i + 1] for i in range(0, len(items), 2)}


def fetch_map(untagged: list[bytes]) -> dict[int, dict[str, Any]]:
    """Every "* n FETCH (...)" among untagged responses, merged per sequence number."""
    out: dict[int, dict[str, Any]] = {}
    for line in untagged:
        v = parse(line)
        if len(v) >= 3 and isinstance(v[0], int) and str(v[1]).upper() == "FETCH":
            out.setdefault(v[0], {}).update(pairs(v[2]))
    return out


def upper(value: Any) -> Any:
    """Case-fold atoms and strings (deeply) for comparisons where case is not significant."""
    if isinstance(value, list):
        return [upper(v) for v in value]
    if isinstance(value, bytes):
        return value.upper()
    if isinstance(value, str):
        return value.upper()
    return value


# -- the raw client ---------------------------------------------------------------------------


def close_all() -> None:
    """Close every raw client still open (a failed assertion skips a test's own close())."""
    for client in list(_OPEN):
        client.close()


class ServerClosed(Exception):
    """The server closed the connection before a complete response arrived."""


@dataclass
class Result:
    tag: str
    status: str            # OK, NO, BAD (or BYE if the server hung up with a BYE)
    text: bytes            # the tagged line after the status, CRLF stripped
    untagged: list[bytes] = field(default_factory=list)   # without "* " and CRLF
    continuations: list[bytes] = field(default_factory=list)
    other_tags: list[bytes] = field(default_factory=list)  # answers to earlier commands

    @property
    def code(self) -> str:
        """The response code's atom ("TRYCREATE", "READ-WRITE", ...) or ""."""
        m = re.match(rb"\[([^\] ]+)", self.text)
        return m.group(1).decode().upper() if m else ""

    def untagged_named(self, name: str) -> list[bytes]:
        """Untagged responses "* NAME ..." or "* n NAME ...", whole."""
        out = []
        for line in self.untagged:
            words = line.split(b" ", 2)
            if (words[0].upper() == name.encode().upper()
                    or (len(words) > 1 and words[0].isdigit()
                        and words[1].upper().rstrip(b"\r\n") == name.encode().upper())):
                out.append(line)
        return out

    def number(self, name: str) -> int | None:
        """n of "* n NAME" (EXISTS, RECENT), or None."""
        for line in self.untagged:
            words = line.split(b" ")
            if len(words) == 2 and words[0].isdigit() and words[1].upper() == name.encode():
                return int(words[0])
        return None

    def ok_code(self, name: str) -> bytes | None:
        """The data of "* OK [NAME data]" (UIDVALIDITY, UIDNEXT, PERMANENTFLAGS, UNSEEN)."""
        for line in self.untagged:
            m = re.match(rb"OK \[" + re.escape(name.encode()) + rb"(?: ([^\]]*))?\]", line,
                         re.IGNORECASE)
            if m:
                return m.group(1) or b""
        return None

    def fetches(self) -> dict[int, dict[str, Any]]:
        return fetch_map(self.untagged)

    def search(self) -> list[int]:
        for line in self.untagged:
            if line.upper().startswith(b"SEARCH"):
                return [int(x) for x in line.split()[1:]]
        raise AssertionError(f"no SEARCH response in {self.untagged!r}")


class RawImap:
    def __init__(self, port: int, *, context: ssl.SSLContext | None = None,
                 source: str | None = None, timeout: float = 10.0) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                        source_address=(source, 0) if source else None)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=HOSTNAME)
        self.sock: socket.socket = sock
        self.buf = b""
        self.eof = False
        self.seen: list[bytes] = []     # every response read, in order
        self._tags = 0
        _OPEN.add(self)

    @classmethod
    def tls(cls, d: RunningDaemon, **kw: Any) -> RawImap:
        return cls(imaps_port(d), context=d.client_context(), **kw)

    @classmethod
    def plain(cls, d: RunningDaemon, **kw: Any) -> RawImap:
        return cls(imap_port(d), **kw)

    # -- bytes -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
                BrokenPipeError):
            chunk = b""
        except ssl.SSLError as exc:
            if "EOF" in str(exc) or "ALERT" in str(exc).upper():
                chunk = b""
            else:
                raise
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_response(self) -> bytes | None:
        """One response line with its literals inline, CRLF kept; None at EOF."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                if not self._fill():
                    return None
            line, _, self.buf = self.buf.partition(b"\r\n")
            out += line + b"\r\n"
            m = _LITERAL_END.search(out)
            if not m:
                self.seen.append(out)
                return out
            size = int(m.group(1))
            while len(self.buf) < size:
                if not self._fill():
                    return None
            out += self.buf[:size]
            self.buf = self.buf[size:]

    def next_tag(self) -> str:
        self._tags += 1
        return f"t{self._tags:03d}"

    # -- responses -------------------------------------------------------------------------

    def greeting(self) -> bytes:
        line = self.read_response()
        if line is None:
            raise ServerClosed("no greeting")
        assert line.startswith((b"* OK", b"* PREAUTH")), line
        return line

    def until_tagged(self, tag: str) -> Result:
        untagged: list[bytes] = []
        conts: list[bytes] = []
        others: list[bytes] = []
        while True:
            line = self.read_response()
            if line is None:
                raise ServerClosed(f"closed before {tag} completed; got {untagged!r}")
            body = line[:-2] if line.endswith(b"\r\n") else line
            if body.startswith(b"* "):
                untagged.append(body[2:])
            elif body.startswith(b"+"):
                conts.append(body)
            elif body.startswith(tag.encode() + b" "):
                rest = body[len(tag) + 1:]
                status, _, text = rest.partition(b" ")
                return Result(tag, status.decode().upper(), text, untagged, conts, others)
            else:
                others.append(body)

    def command(self, cmd: str | bytes, tag: str | None = None) -> Result:
        tag = tag or self.next_tag()
        data = cmd.encode() if isinstance(cmd, str) else cmd
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.until_tagged(tag)

    def ok(self, cmd: str | bytes) -> Result:
        r = self.command(cmd)
        assert r.status == "OK", (cmd, r)
        return r

    def continuation(self) -> bytes:
        line = self.read_response()
        if line is None:
            raise ServerClosed("closed while waiting for a continuation")
        assert line.startswith(b"+"), line
        return line

    def with_literal(self, head: str | bytes, literal: bytes, tail: bytes = b"") -> Result:
        """head "{n}" CRLF, wait for "+", then the literal and tail: a synchronizing literal."""
        tag = self.next_tag()
        h = head.encode() if isinstance(head, str) else head
        self.send(tag.encode() + b" " + h + b" {" + str(len(literal)).encode() + b"}\r\n")
        line = self.read_response()
        if line is None:
            raise ServerClosed("closed after literal announcement")
        if not line.startswith(b"+"):
            # refused: the tagged answer (or untagged lines then the tagged answer)
            if line.startswith(tag.encode() + b" "):
                rest = line[len(tag) + 1:-2]
                status, _, text = rest.partition(b" ")
                return Result(tag, status.decode().upper(), text)
            rest_result = self.until_tagged(tag)
            rest_result.untagged.insert(0, line[2:-2])
            return rest_result
        self.send(literal + tail + b"\r\n")
        return self.until_tagged(tag)

    def starttls(self, context: ssl.SSLContext) -> None:
        r = self.command("STARTTLS")
        assert r.status == "OK", r
        self.wrap(context)

    def wrap(self, context: ssl.SSLContext) -> None:
        assert not self.buf, f"plaintext left over before TLS: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=HOSTNAME)

    def login(self, user: str = "bob") -> Result:
        r = self.command(f'LOGIN {user} "{password(user)}"')
        assert r.status == "OK", r
        return r

    def closed(self) -> bool:
        """True once the server has closed (EOF), reading (and keeping) whatever came first."""
        while True:
            try:
                if not self._fill():
                    return True
            except (ConnectionError, OSError):
                return True

    def close(self) -> None:
        _OPEN.discard(self)
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawImap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def session(d: RunningDaemon, user: str = "bob", select: str | None = "INBOX",
            **kw: Any) -> RawImap:
    """A raw IMAPS session: greeting, LOGIN and (unless select is None) SELECT."""
    c = RawImap.tls(d, **kw)
    c.greeting()
    c.login(user)
    if select is not None:
        c.ok(f"SELECT {select}")
    return c


def append(c: RawImap, mailbox: str, data: bytes, flags: str = "",
           date: str | None = None) -> Result:
    head = f"APPEND {mailbox}"
    if flags:
        head += f" ({flags})"
    if date:
        head += f' "{date}"'
    r = c.with_literal(head, data)
    assert r.status == "OK", r
    return r


def mutf7(name: str) -> str:
    """RFC 3501 §5.1.3 modified UTF-7, for building mailbox names in tests."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)
