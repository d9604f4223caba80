"""Tokens of the RFC 3501 §9 formal syntax over one framed command (see receiver.py).

A command arrives as bytes with its literals inline, exactly as on the wire: the text
"{5}" CRLF (or "{5+}" CRLF, RFC 7888) followed by 5 octets. The Cursor reads atoms,
numbers, quoted strings, literals and astrings from it and raises ParseError, the only
exception a parser here lets escape (DESIGN.md habit 5).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# RFC 3501 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards /
# quoted-specials / resp-specials. CHAR is 7-bit, CTL is 0x00-0x1F and 0x7F.
ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
ATOM_CHARS = frozenset(range(0x01, 0x80)) - ATOM_SPECIALS
# RFC 3501 §9: ASTRING-CHAR = ATOM-CHAR / resp-specials.
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
# RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">.
TAG_CHARS = ASTRING_CHARS - {ord("+")}
# RFC 3501 §9: list-char = ATOM-CHAR / list-wildcards / resp-specials.
LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}
# RFC 3501 §9 QUOTED-CHAR: any TEXT-CHAR (7-bit, not CR or LF) except quoted-specials,
# or "\" quoted-specials. NUL is not a CHAR either.
QUOTED_CHARS = frozenset(range(0x01, 0x80)) - {ord("\r"), ord("\n"), ord('"'), ord("\\")}
# RFC 3501 §4.2: numbers are 32-bit unsigned.
MAX_NUMBER = 4_294_967_295


DIGITS = frozenset(b"0123456789")
# Cursor.take() scans with a compiled character class per set of octets (a loop over the
# octets in Python was a tenth of parsing a command); the sets are a handful of constants.
_SCANNERS: dict[frozenset[int], Callable[[bytes, int], re.Match[bytes] | None]] = {}


def _scanner(chars: frozenset[int]) -> Callable[[bytes, int], re.Match[bytes] | None]:
    found = _SCANNERS.get(chars)
    if found is None:
        if len(_SCANNERS) > 64:  # only constants come here; a stray caller cannot grow it
            _SCANNERS.clear()
        members = b"".join(re.escape(bytes([c])) for c in sorted(chars))
        found = _SCANNERS[chars] = re.compile(b"[" + members + b"]*" if members
                                              else b"(?!)").match
    return found


class ParseError(Exception):
    """The command is malformed. `tag` is the command's tag if it was readable (reply
    "tag BAD ..."), else None (reply "* BAD ..."). `status` is "BAD" for syntax errors and
    "NO" for refusals found while parsing (RFC 3501 §6.4.4 BADCHARSET); `code` is the
    response code to send with it, if any."""

    def __init__(self, tag: str | None, message: str, *, status: str = "BAD",
                 code: str | None = None) -> None:
        super().__init__(message)
        self.tag = tag
        self.message = message
        self.status = status
        self.code = code


class Cursor:
    """A position in one command's bytes. Methods consume what they read."""

    __slots__ = ("data", "pos", "tag", "utf8")

    def __init__(self, data: bytes, tag: str | None = None, *, utf8: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.tag = tag
        # RFC 6855 §3: after ENABLE UTF8=ACCEPT, quoted strings and mailbox names are UTF-8.
        self.utf8 = utf8

    def error(self, message: str) -> ParseError:
        return ParseError(self.tag, message)

    # -- looking --------------------------------------------------------------------------

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int:
        """The next octet, or -1 at the end."""
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def peek_is(self, text: bytes) -> bool:
        return self.data.startswith(text, self.pos)

    # -- fixed text -----------------------------------------------------------------------

    def expect(self, text: bytes, what: str | None = None) -> None:
        if not self.data.startswith(text, self.pos):
            raise self.error(f"expected {what or repr(text.decode())}")
        self.pos += len(text)

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def skip_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise self.error("unexpected text at the end of the command")

    def take(self, chars: frozenset[int]) -> bytes:
        """The longest run of octets in `chars` from here (possibly empty)."""
        start = self.pos
        match = _scanner(chars)(self.data, start)
        end = self.pos = match.end() if match is not None else start
        return self.data[start:end]

    # -- tokens ---------------------------------------------------------------------------

    def atom(self, what: str = "an atom", chars: frozenset[int] = ATOM_CHARS) -> str:
        raw = self.take(chars)
        if not raw:
            raise self.error(f"expected {what}")
        return raw.decode("ascii")

    def keyword(self) -> str:
        """An atom compared case-insensitively (RFC 5234 §2.3): upper-cased."""
        return self.atom("a keyword").upper()

    def number(self, what: str = "a number") -> int:
        raw = self.take(DIGITS)
        if not raw:
            raise self.error(f"expected {what}")
        if len(raw) > 10 or int(raw) > MAX_NUMBER:
            raise self.error(f"{what} is above {MAX_NUMBER}")
        return int(raw)

    def nz_number(self, what: str = "a number") -> int:
        n = self.number(what)
        if n == 0:
            raise self.error(f"{what} must not be zero")
        return n

    def quoted(self, *, eight_bit: bool = False) -> bytes:
        """`eight_bit`: let octets 0x80-0xFF through (mailbox names, so that raw UTF-8 from
        clients such as mbsync is refused with NO rather than BAD; see grammar.mailbox)."""
        self.expect(b'"', "a quoted string")
        out = bytearray()
        data, n = self.data, len(self.data)
        while True:
            if self.pos >= n:
                raise self.error("unterminated quoted string")
            c = data[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= n or data[self.pos] not in b'"\\':
                    raise self.error('only \\" and \\\\ may be escaped in a quoted string')
                out.append(data[self.pos])
                self.pos += 1
            elif c in QUOTED_CHARS or ((eight_bit or self.utf8) and c >= 0x80):
                out.append(c)
            else:
                # RFC 3501 §4.3: 8-bit and CR/LF/NUL travel only in literals.
                raise self.error("8-bit or control character in a quoted string")

    def literal(self) -> bytes:
        """RFC 3501 §4.3 literal (or RFC 7888 "{n+}"): the octets, as bytes."""
        self.expect(b"{", "a literal")
        size = self.number("a literal size")
        self.skip_plus()
        self.expect(b"}\r\n", "'}' CRLF after a literal size")
        if self.pos + size > len(self.data):
            raise self.error("literal shorter than announced")
        raw = self.data[self.pos:self.pos + size]
        self.pos += size
        if 0 in raw:
            raise self.error("NUL in a literal")  # RFC 3501 §9: CHAR8 = %x01-ff
        return raw

    def skip_plus(self) -> None:
        if self.peek() == ord("+"):
            self.pos += 1

    def string(self, *, eight_bit: bool = False) -> bytes:
        """RFC 3501 §9 string = quoted / literal."""
        c = self.peek()
        if c == ord('"'):
            return self.quoted(eight_bit=eight_bit)
        if c == ord("{"):
            return self.literal()
        raise self.error("expected a string")

    def astring_bytes(self, chars: frozenset[int] = ASTRING_CHARS, *,
                      eight_bit: bool = False) -> bytes:
        """RFC 3501 §9 astring = 1*ASTRING-CHAR / string."""
        if self.peek() in (ord('"'), ord("{")):
            return self.string(eight_bit=eight_bit)
        raw = self.take(chars)
        if not raw:
            raise self.error("expected an atom or a string")
        return raw

    def astring(self, what: str = "string") -> str:
        return self.text(self.astring_bytes(), what)

    def nil(self) -> bool:
        """Consume the atom NIL if it comes next."""
        if self.data[self.pos:self.pos + 3].upper() == b"NIL" and \
                self.data[self.pos + 3:self.pos + 4] in (b"", b" ", b")"):
            self.pos += 3
            return True
        return False

    def nstring(self) -> bytes | None:
        if self.nil():
            return None
        return self.string()

    def text(self, raw: bytes, what: str) -> str:
        """Strings inside the server are text (habit 10): UTF-8, strictly."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8") from None

    def parenthesized(self) -> bool:
        """Consume "(" if present."""
        if self.peek() == ord("("):
            self.pos += 1
            return True
        return False
