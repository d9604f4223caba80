"""A MIME part tree over the raw bytes of a stored message (RFC 2045, RFC 2046).

IMAP answers with exact octets and octet counts (RFC 3501 §6.4.5, §7.4.2), so this module
never re-serialises: every part records offsets into the one message buffer, which all
parts share. A 4 MB attachment is found with `bytes.find` and is never copied here; slices
are taken only when a caller asks for a section.

The walker is lenient on purpose (DESIGN: answer with what can be parsed): any bytes give a
tree. Missing or broken Content-Type falls back to the RFC 2045 §5.2 default, a multipart
without its close delimiter ends where its parent ends, and nesting and part counts are
bounded so a hostile message cannot make us recurse or allocate without limit.

Header values are kept as `str` decoded with surrogateescape, so 8-bit octets survive and
`str.encode("utf-8", "surrogateescape")` gives back exactly the bytes that were stored.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

# Limits, named with their provenance (DESIGN habit 4). Dovecot's message parser uses the
# same figures (MESSAGE_PARSER_DEFAULT_MAX_NESTED_MIME_PARTS, ..._MAX_TOTAL_MIME_PARTS).
MAX_DEPTH = 100  # multipart and message/rfc822 nesting; deeper content is one opaque leaf
MAX_PARTS = 10_000  # parts per message; the rest of a multipart is then left unsplit

LF = 0x0A
CR = 0x0D

# RFC 2045 §6.1: the identity encodings; only these may wrap a message/rfc822 or a
# multipart (RFC 2046 §5.1.1, §5.2.1), anything else is treated as an opaque body.
IDENTITY_ENCODINGS = frozenset({"", "7bit", "8bit", "binary"})


@dataclass(frozen=True, slots=True)
class RawField:
    """One header field exactly as stored: `start`..`end` covers its folded lines and CRLF."""

    name: str  # as written, white space before the colon removed
    value: str  # raw text after the colon, folding kept, surrogateescape-decoded
    start: int
    end: int

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def unfolded(self) -> str:
        """RFC 5322 §2.2.3: unfold by removing the CRLFs; outer white space stripped."""
        return self.value.replace("\r\n", "").replace("\n", "").replace("\r", "").strip()


Params = tuple[tuple[str, str], ...]


@dataclass(slots=True, eq=False)
class MimePart:
    """One entity: a whole message, a body part, or a message embedded in a message/rfc822.

    `start`..`body_start` is the header section including its terminating blank line (empty
    when the part has no header); `body_start`..`end` is the body. Offsets index `data`.
    """

    data: bytes
    start: int
    body_start: int
    end: int
    fields: tuple[RawField, ...]
    media_type: str = "text"  # as written in the header (case kept); defaults per RFC 2045
    media_subtype: str = "plain"
    params: Params = ()
    content_type_given: bool = False  # False: Content-Type missing or unusable
    content_id: str | None = None
    description: str | None = None
    encoding: str | None = None  # Content-Transfer-Encoding token as written
    disposition: tuple[str, Params] | None = None
    language: tuple[str, ...] | None = None
    location: str | None = None
    md5: str | None = None
    children: list[MimePart] = field(default_factory=list)  # multipart body parts
    message: MimePart | None = None  # the encapsulated message of a message/rfc822 part
    # FETCH values derived from this part (ENVELOPE, BODYSTRUCTURE, BODY) by fetch.py, kept
    # with the parsed message in the cache: a client refreshing its message list asks for
    # the same envelopes again and again.
    derived: dict[str, object] = field(default_factory=dict)

    # -- derived views -------------------------------------------------------------------

    @property
    def mime_type(self) -> str:
        return f"{self.media_type}/{self.media_subtype}".lower()

    @property
    def is_multipart(self) -> bool:
        return self.media_type.lower() == "multipart"

    @property
    def is_message(self) -> bool:
        """A message/rfc822 part whose embedded message was parsed."""
        return self.message is not None

    @property
    def size(self) -> int:
        """RFC 3501 §7.4.2 body-fld-octets: the body's size in its transfer encoding."""
        return self.end - self.body_start

    @property
    def lines(self) -> int:
        """RFC 3501 §7.4.2 body-fld-lines: the body's size in text lines.

        A last line without its line break still counts as a line."""
        if self.end <= self.body_start:
            return 0
        count = self.data.count(b"\n", self.body_start, self.end)
        if self.data[self.end - 1] != LF:
            count += 1
        return count

    @property
    def header(self) -> bytes:
        return self.data[self.start : self.body_start]

    @property
    def body(self) -> bytes:
        return self.data[self.body_start : self.end]

    def body_view(self) -> memoryview:
        """The body without a copy (for large attachments)."""
        return memoryview(self.data)[self.body_start : self.end]

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    def first(self, key: str) -> RawField | None:
        key = key.lower()
        for f in self.fields:
            if f.key == key:
                return f
        return None

    def field_values(self, key: str) -> list[str]:
        key = key.lower()
        return [f.unfolded for f in self.fields if f.key == key]

    def walk(self) -> list[MimePart]:
        """This part and every part below it, depth first, embedded messages included."""
        out: list[MimePart] = []
        stack: list[MimePart] = [self]
        while stack:
            part = stack.pop()
            out.append(part)
            below = list(part.children)
            if part.message is not None:
                below.append(part.message)
            stack.extend(reversed(below))
        return out


def param_value(params: Params, name: str) -> str | None:
    name = name.lower()
    for key, value in params:
        if key.lower() == name:
            return value
    return None


# -- entry point -----------------------------------------------------------------------------


def parse_message(data: bytes) -> MimePart:
    """Parse a whole stored message. Total: any bytes give a tree, never an exception."""
    budget = _Budget()
    return _parse_entity(data, 0, len(data), 0, budget, digest_child=False)


@dataclass(slots=True)
class _Budget:
    parts: int = 0


def _parse_entity(
    data: bytes, start: int, end: int, depth: int, budget: _Budget, *, digest_child: bool
) -> MimePart:
    budget.parts += 1
    fields, body_start = parse_header(data, start, end)
    part = MimePart(data=data, start=start, body_start=body_start, end=end, fields=fields)
    _apply_headers(part, digest_child=digest_child)

    kind = part.mime_type
    encoding = (part.encoding or "").lower()
    if part.is_multipart:
        boundary = part.param("boundary")
        if not boundary or encoding not in IDENTITY_ENCODINGS:
            # RFC 2045 §5.2: an unusable Content-Type is treated as text/plain us-ascii.
            _default_type(part)
        elif depth >= MAX_DEPTH or budget.parts >= MAX_PARTS:
            _opaque(part)
        else:
            digest = part.media_subtype.lower() == "digest"
            boundary_b = boundary.encode("utf-8", "surrogateescape")
            for p_start, p_end in split_multipart(data, body_start, end, boundary_b):
                if budget.parts >= MAX_PARTS:
                    break
                part.children.append(
                    _parse_entity(data, p_start, p_end, depth + 1, budget, digest_child=digest)
                )
    elif kind == "message/rfc822":
        if encoding not in IDENTITY_ENCODINGS or depth >= MAX_DEPTH or budget.parts >= MAX_PARTS:
            _opaque(part)
        else:
            part.message = _parse_entity(
                data, body_start, end, depth + 1, budget, digest_child=False
            )
    return part


def _default_type(part: MimePart) -> None:
    part.media_type, part.media_subtype = "text", "plain"
    part.params = (("charset", "us-ascii"),)
    part.content_type_given = False


def _opaque(part: MimePart) -> None:
    # DEVIATION (RFC 2046): past MAX_DEPTH / MAX_PARTS, or a message/rfc822 in a transfer
    # encoding RFC 2046 §5.2.1 forbids, a container is reported as an opaque
    # application/octet-stream leaf: clients read "MESSAGE" "RFC822" as body-type-msg and
    # would expect an envelope we cannot give, and BODYSTRUCTURE stays bounded.
    part.media_type, part.media_subtype, part.params = "application", "octet-stream", ()


# -- header section --------------------------------------------------------------------------


def parse_header(data: bytes, start: int, end: int) -> tuple[tuple[RawField, ...], int]:
    """Split the header section at `start` into raw fields; return them and the body offset.

    The section ends after the first empty line (RFC 5322 §2.1); without one, everything is
    header and the body is empty. Lines end in CRLF, but a bare LF is accepted too. A line
    that is neither a field nor a continuation is kept as a field with that whole line as
    its name and no value, so nothing is lost and offsets stay exact."""
    fields: list[RawField] = []
    pos = start
    name = value = ""
    f_start = -1
    while pos < end:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        first = data[pos]
        if first == LF or (first == CR and line_end - pos == 2 and nl >= 0):
            if f_start >= 0:
                fields.append(RawField(name, value, f_start, pos))
            return tuple(fields), line_end
        line = data[pos:line_end].decode("utf-8", "surrogateescape")
        if first in (0x20, 0x09) and f_start >= 0:
            value += line
        else:
            if f_start >= 0:
                fields.append(RawField(name, value, f_start, pos))
            f_start = pos
            head, colon, rest = line.partition(":")
            if colon:
                name, value = head.rstrip(" \t"), rest
            else:
                name, value = line.rstrip("\r\n"), ""
        pos = line_end
    if f_start >= 0:
        fields.append(RawField(name, value, f_start, end))
    return tuple(fields), end


def _apply_headers(part: MimePart, *, digest_child: bool) -> None:
    ctype = part.first("content-type")
    parsed = parse_content_type(ctype.unfolded) if ctype is not None else None
    if parsed is not None:
        part.media_type, part.media_subtype, part.params = parsed
        part.content_type_given = True
    elif digest_child:
        # RFC 2046 §5.1.5: in a multipart/digest the default is message/rfc822.
        part.media_type, part.media_subtype, part.params = "message", "rfc822", ()
    else:
        _default_type(part)
    for f in part.fields:
        key = f.key
        if key == "content-transfer-encoding" and part.encoding is None:
            token = _tokens(f.unfolded)
            part.encoding = token[0] if token and token[0] else None
        elif key == "content-id" and part.content_id is None:
            part.content_id = f.unfolded
        elif key == "content-description" and part.description is None:
            part.description = f.unfolded
        elif key == "content-disposition" and part.disposition is None:
            part.disposition = parse_disposition(f.unfolded)
        elif key == "content-language" and part.language is None:
            langs = tuple(t for t in _tokens(f.unfolded) if t and t != ",")
            part.language = langs or None
        elif key == "content-location" and part.location is None:
            # RFC 2557 §4.4.1: a folded URI; the folding white space is not part of it.
            part.location = re.sub(r"\s+", "", f.unfolded) or None
        elif key == "content-md5" and part.md5 is None:
            part.md5 = f.unfolded or None


# -- multipart delimiters (RFC 2046 §5.1.1) --------------------------------------------------


def split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """Offsets of the body parts between `--boundary` delimiter lines in data[start:end].

    RFC 2046 §5.1.1: a delimiter starts a line; the CRLF before it belongs to the delimiter,
    so it is not part of the preceding body part; "--boundary--" closes; white space may
    follow the boundary. The preamble and epilogue are dropped. Without a close delimiter
    the last part runs to `end`."""
    delim = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while pos < end:
        i = data.find(delim, pos, end)
        if i < 0:
            break
        if i > start and data[i - 1] != LF:
            pos = i + 1
            continue
        nl = data.find(b"\n", i, end)
        line_end = end if nl < 0 else nl + 1
        rest = data[i + len(delim) : line_end]
        close = rest.startswith(b"--")
        if not close and rest.strip(b" \t\r\n"):
            pos = i + 1  # a longer boundary sharing our prefix
            continue
        if part_start >= 0:
            p_end = i
            if p_end > part_start and data[p_end - 1] == LF:
                p_end -= 1
                if p_end > part_start and data[p_end - 1] == CR:
                    p_end -= 1
            ranges.append((part_start, p_end))
        if close:
            return ranges
        part_start = line_end
        pos = line_end
    if part_start >= 0:
        ranges.append((part_start, end))
    return ranges


# -- structured header values (RFC 2045 §5.1, RFC 2183, RFC 2231) ----------------------------

_TSPECIALS = frozenset('()<>@,;:\\"/[]?=')


def _lex(text: str) -> list[str]:
    """RFC 2045 lexical tokens: tokens, quoted strings and single tspecials.

    A quoted string comes back as '"' + its unescaped content, so it can be told from a
    tspecial ('"' itself is never a tspecial token). Comments and white space are dropped
    (RFC 822 CFWS). Never fails: an unterminated quoted string or comment runs to the end."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
        elif c == '"':
            i += 1
            chars: list[str] = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(text[i])
                i += 1
            i += 1
            out.append('"' + "".join(chars))
        elif c in _TSPECIALS:
            out.append(c)
            i += 1
        else:
            j = i
            while j < n and text[j] not in _TSPECIALS and text[j] not in " \t\r\n(":
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _tokens(text: str) -> list[str]:
    """_lex with the quoted-string markers removed."""
    return [t[1:] if t.startswith('"') else t for t in _lex(text)]


def _plain(tok: str) -> bool:
    return tok not in _TSPECIALS and not tok.startswith('"')


def _params(toks: list[str]) -> Params:
    """`;`-separated attribute=value pairs (tokens from _lex); junk up to the next `;` skipped.

    Lenient: a value written unquoted with tspecials in it ("type=text/html", against
    RFC 2045 §5.1) is glued back together up to the next `;`."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(toks)
    while i < n:
        if toks[i] != ";":
            i += 1
            continue
        i += 1
        if i + 1 < n and toks[i + 1] == "=" and _plain(toks[i]):
            attr = toks[i]
            j = i + 2
            value = ""
            if j < n and toks[j].startswith('"'):
                value = toks[j][1:]
                j += 1
            while j < n and toks[j] != ";":
                tok = toks[j]
                value += tok[1:] if tok.startswith('"') else tok
                j += 1
            pairs.append((attr, value))
            i = j
    return merge_rfc2231(tuple(pairs))


_CONTINUATION = re.compile(r"^(.+?)\*(\d{1,3})(\*?)$")


def merge_rfc2231(params: Params) -> Params:
    """RFC 2231 §3: glue `name*0`, `name*1*`, ... into one parameter, left encoded.

    Like Dovecot, the result is `name*` = "charset'lang'%XX..." when any segment is
    extended (plain segments are percent-encoded to match), else `name` = the joined text;
    clients decode RFC 2231 themselves, and the octets they see are the ones sent."""
    groups: dict[str, list[tuple[int, bool, str]]] = {}
    order: list[tuple[str, str] | str] = []
    for name, value in params:
        m = _CONTINUATION.match(name)
        if m is None:
            order.append((name, value))
            continue
        base = m.group(1)
        if base.lower() not in groups:
            groups[base.lower()] = []
            order.append(base)
        groups[base.lower()].append((int(m.group(2)), bool(m.group(3)), value))
    if not groups:
        return params
    out: list[tuple[str, str]] = []
    for item in order:
        if isinstance(item, tuple):
            out.append(item)
            continue
        segments = sorted(groups[item.lower()], key=lambda s: s[0])
        extended = segments[0][1]
        if extended:
            text = "".join(
                v if ext else urllib.parse.quote(v, safe="", encoding="utf-8",
                                                 errors="surrogateescape")
                for _n, ext, v in segments
            )
            out.append((item + "*", text))
        else:
            out.append((item, "".join(v for _n, _ext, v in segments)))
    return tuple(out)


def parse_content_type(value: str) -> tuple[str, str, Params] | None:
    """RFC 2045 §5.1: type "/" subtype *(";" parameter); None when it cannot be read."""
    toks = _lex(value)
    if len(toks) < 3 or toks[1] != "/" or not _plain(toks[0]) or not _plain(toks[2]):
        return None
    return toks[0], toks[2], _params(toks[3:])


def parse_disposition(value: str) -> tuple[str, Params] | None:
    """RFC 2183 §2: disposition-type *(";" disposition-parm)."""
    toks = _lex(value)
    if not toks or not _plain(toks[0]):
        return None
    return toks[0], _params(toks[1:])
