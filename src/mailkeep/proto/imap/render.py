"""The value tree (values.py) and server responses as bytes (RFC 3501 §4, §7).

    tagged("a1", "OK", "FETCH completed", code="READ-WRITE")   b"a1 OK [READ-WRITE] FETCH..."
    untagged("5 EXISTS")                                       b"* 5 EXISTS\r\n"
    untagged("LIST", [Atom("\\Noselect")], ".", "A")  b'* LIST (\\Noselect) "." "A"\r\n'
    fetch_response(12, [("UID", 4), ("FLAGS", [Atom("\\Seen")])])
    continuation("Ready")                                      b"+ Ready\r\n"

This is the only place where response bytes are made (habit 10). Strings are quoted when
that is safe and short, else sent as literals; 8-bit data is always a literal
(RFC 3501 §4.3: "8-bit ... MUST be sent as a literal").
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from mailkeep.proto.imap.values import Atom, Rendered, Value

# Our choice: RFC 3501 §4.3 sets no bound on quoted strings; longer strings go as literals
# so response lines stay short and no quoting is needed for big header values.
MAX_QUOTED_OCTETS = 1024
STATUSES = frozenset({"OK", "NO", "BAD", "PREAUTH", "BYE"})  # RFC 3501 §7.1
_QUOTABLE = frozenset(range(0x01, 0x80)) - {0x0A, 0x0D}


def _encode(text: str) -> bytes:
    # NUL is not a CHAR8 (RFC 3501 §9): text values never carry it on the wire.
    text = text.replace("\0", "\ufffd")
    try:
        return text.encode("utf-8", "surrogateescape")  # undecodable octets go back as they came
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def quoted_or_none(text: str) -> bytes | None:
    """The RFC 3501 quoted form of `text`, or None when it must be a literal."""
    if len(text) > MAX_QUOTED_OCTETS or not text.isascii():
        return None
    raw = text.encode("ascii")
    if any(c not in _QUOTABLE for c in raw):
        return None
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def render(value: Value) -> bytes:
    """One value: None -> NIL, int -> number, Atom as is, str quoted or literal, bytes
    literal (Rendered bytes: as they are), list/tuple parenthesized with single spaces."""
    out: list[bytes] = []
    _render(value, out)
    return b"".join(out)


def _render(value: Value, out: list[bytes]) -> None:
    if type(value) is Rendered:
        out.append(value)
    elif value is None:
        out.append(b"NIL")
    elif isinstance(value, bool):
        raise TypeError("bool is not an IMAP value")  # a producer bug
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"IMAP numbers are unsigned, not {value}")
        out.append(b"%d" % value)
    elif isinstance(value, Atom):
        out.append(_atom(value.text))
    elif isinstance(value, str):
        quoted = quoted_or_none(value)
        out.append(quoted if quoted is not None else literal(_encode(value)))
    elif isinstance(value, bytes):
        out.append(literal(value))
    elif isinstance(value, list | tuple):
        out.append(b"(")
        for i, item in enumerate(value):
            if i:
                out.append(b" ")
            _render(item, out)
        out.append(b")")
    else:
        raise TypeError(f"not an IMAP value: {type(value).__name__}")


def _atom(text: str) -> bytes:
    raw = text.encode("ascii", "strict") if text.isascii() else b""
    if not raw or any(c in b"\r\n\0 " for c in raw):
        raise ValueError(f"not an atom: {text!r}")  # a producer bug
    return raw


def render_all(values: Sequence[Value]) -> bytes:
    """Values separated by single spaces (no parentheses)."""
    return b" ".join(render(v) for v in values)


def _text(text: str) -> bytes:
    """RFC 3501 §9 text = 1*TEXT-CHAR: 7-bit, no CR/LF/NUL; anything else becomes "?"."""
    cleaned = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)
    return cleaned.encode("ascii") or b"."


def response_code(name: str, *values: Value) -> str:
    """A resp-text-code with arguments, e.g. response_code("UIDVALIDITY", 3857529045) or
    response_code("PERMANENTFLAGS", [Atom("\\Seen"), Atom("\\*")])."""
    rendered = render_all(values)
    if b"\r\n" in rendered:
        raise ValueError("response code values must be short text")  # a producer bug
    return f"{name} {rendered.decode('ascii')}" if values else name


def _resp_text(text: str, code: str | None) -> bytes:
    if code is None:
        return _text(text)
    return b"[" + _text(code) + b"] " + _text(text)


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """RFC 3501 §7.1 response-tagged: tag SP ("OK" / "NO" / "BAD") SP resp-text CRLF."""
    if status not in ("OK", "NO", "BAD"):
        raise ValueError(f"not a tagged status: {status}")
    return _atom(tag) + b" " + status.encode() + b" " + _resp_text(text, code) + b"\r\n"


def untagged_status(status: str, text: str, code: str | None = None) -> bytes:
    """RFC 3501 §7.1: "* OK/NO/BAD/PREAUTH/BYE [code] text"."""
    if status not in STATUSES:
        raise ValueError(f"not a status: {status}")
    return b"* " + status.encode() + b" " + _resp_text(text, code) + b"\r\n"


def untagged(head: str, *values: Value) -> bytes:
    """RFC 3501 §7.2-7.4 data: "* " head [SP values] CRLF. `head` is written as is
    ("CAPABILITY", "5 EXISTS", "LIST"); `values` are rendered."""
    out = b"* " + _text(head)
    if values:
        out += b" " + render_all(values)
    return out + b"\r\n"


def fetch_response(seq: int, items: Sequence[tuple[Atom | str, Value]]) -> bytes:
    """RFC 3501 §7.4.2: "* seq FETCH (name value ...)". Item names are written as is
    ("BODY[HEADER.FIELDS (FROM)]<0>", from grammar.FetchItem.response_name())."""
    body = b" ".join(_text(str(name)) + b" " + render(value) for name, value in items)
    return b"* %d FETCH (" % seq + body + b")\r\n"


def continuation(text: str = "Ready") -> bytes:
    """RFC 3501 §7.5: "+ text" (literal go-ahead, IDLE)."""
    return b"+ " + _text(text) + b"\r\n"


def continuation_data(challenge: bytes) -> bytes:
    """RFC 3501 §6.2.2: a base64 SASL challenge ("+ " alone when empty, RFC 4959)."""
    return b"+ " + base64.b64encode(challenge) + b"\r\n"
