"""Decoded text of a message for SEARCH (RFC 3501 §6.4.4).

SEARCH's FROM, TO, CC, BCC, SUBJECT, HEADER, BODY and TEXT keys match a substring, case
insensitively, in the text a human would read: so header values have their encoded words
decoded (RFC 2047) and bodies have their transfer encoding (RFC 2045 §6) and charset undone.
Everything here is total: a broken base64 run, an unknown charset or a stray 8-bit octet
degrades to the best text available, never to an exception.
"""

from __future__ import annotations

import binascii
import codecs
import re
from collections.abc import Callable, Iterable, Iterator
from typing import cast

from mailkeep.proto.imap.envelope import MISSING_DOMAIN, MISSING_MAILBOX, parse_address_list
from mailkeep.proto.imap.mime import MimePart

# Header values kept decoded (and casefolded, and addresses) on a cached message
# (MimePart.derived, with FETCH's ENVELOPE and BODYSTRUCTURE) are not kept beyond this many
# entries there: a client SEARCHing many different header names gets no more memory.
MAX_DERIVED = 24

# RFC 2047 §2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
# RFC 2047 §6.2: white space between adjacent encoded words is not displayed.
_BETWEEN_WORDS = re.compile(rb"(\?=)[ \t\r\n]+(=\?[^?\s]+\?[bBqQ]\?)")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")
_PADDING = re.compile(rb"=+")


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Octets in a declared charset -> text. Unknown or lying charsets fall back to UTF-8,
    then to replacement characters (RFC 2046 §4.1.2 says us-ascii by default, but 8-bit
    UTF-8 under no or a wrong label is what real mail carries)."""
    # RFC 2231 §5: a charset may carry "*language"
    name = (charset or "us-ascii").strip().strip('"').split("*", 1)[0]
    codec: str | None = None
    try:
        info = codecs.lookup(name)
        if getattr(info, "_is_text_encoding", True):  # not "rot13", "base64", ...
            codec = info.name
    except (LookupError, ValueError):
        codec = None
    for candidate in (codec, "utf-8"):
        if candidate is None:
            continue
        try:
            return data.decode(candidate)
        except (UnicodeError, LookupError, ValueError, TypeError):
            continue
    return data.decode("utf-8", "replace")


def decode_base64(data: bytes) -> bytes:
    """RFC 2045 §6.8, leniently: characters outside the alphabet are ignored (as the RFC
    says), padding is repaired, a truncated last quantum gives what octets it holds, and
    base64 runs glued together after "=" padding are each decoded."""
    # Well-formed base64 (nearly all of it) at C speed: SEARCH decodes every body it reads.
    try:
        return binascii.a2b_base64(data.translate(None, b" \t\r\n"), strict_mode=True)
    except binascii.Error:
        pass
    out: list[bytes] = []
    for run in _PADDING.split(_NOT_BASE64.sub(b"", data)):
        rest = len(run) % 4
        # a lone sextet carries no whole octet; otherwise put the padding back
        chunk = run[:-1] if rest == 1 else run + b"=" * ((4 - rest) % 4)
        try:
            out.append(binascii.a2b_base64(chunk))
        except binascii.Error:
            continue
    return b"".join(out)


def decode_transfer(data: bytes, encoding: str | None) -> bytes:
    """Undo Content-Transfer-Encoding; unknown encodings are returned as they are."""
    kind = (encoding or "").lower()
    if kind == "base64":
        return decode_base64(data)
    if kind == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


def _decode_word(match: re.Match[bytes]) -> str:
    charset = match.group(1).decode("ascii", "replace")
    text = match.group(3)
    if match.group(2) in (b"b", b"B"):
        raw = decode_base64(text)
    else:
        raw = binascii.a2b_qp(text, header=True)  # RFC 2047 §4.2: "_" is a space
    return decode_bytes(raw, charset)


def _decode_plain(raw: bytes) -> str:
    # RFC 6532 allows UTF-8 in headers; anything else 8-bit is read as Latin-1.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode_header_value(value: str) -> str:
    """An unfolded raw header value (surrogateescape str, as mime.py keeps it) -> text,
    encoded words decoded, raw 8-bit octets read as UTF-8 (RFC 6532) or Latin-1."""
    raw = value.encode("utf-8", "surrogateescape")
    if b"=?" not in raw:
        return _decode_plain(raw)
    raw = _BETWEEN_WORDS.sub(rb"\1\2", raw)
    out: list[str] = []
    pos = 0
    for match in _ENCODED_WORD.finditer(raw):
        out.append(_decode_plain(raw[pos : match.start()]))
        out.append(_decode_word(match))
        pos = match.end()
    out.append(_decode_plain(raw[pos:]))
    return "".join(out)


def _kept(part: MimePart, memo: str, make: Callable[[], Iterable[str]]) -> tuple[str, ...]:
    """Texts derived from a message, kept with the parsed message under `memo`
    (MimePart.derived: a client SEARCHes the same headers again and again)."""
    found = part.derived.get(memo)
    if found is None:
        found = tuple(make())
        if len(part.derived) < MAX_DERIVED:  # a bound on what a cached message carries
            part.derived[memo] = found
    return cast(tuple[str, ...], found)


def header_values(part: MimePart, name: str) -> list[str]:
    """Decoded values of every `name` field of a message, in order (kept)."""
    key = name.lower()
    return list(_kept(part, "header:" + key, lambda: (
        decode_header_value(f.unfolded) for f in part.fields if f.key == key)))


def folded_header_values(part: MimePart, key: str) -> tuple[str, ...]:
    """header_values() casefolded, for SEARCH's case-insensitive matching (RFC 3501
    §6.4.4), kept too (`key`: the field name in lower case)."""
    return _kept(part, "fold:" + key,
                 lambda: (v.casefold() for v in header_values(part, key)))


def folded_address_texts(part: MimePart, key: str) -> tuple[str, ...]:
    """address_texts() casefolded, kept (`key` in lower case): a FROM or TO search misses
    in most messages' header text and comes here for each."""
    return _kept(part, "fold-addresses:" + key,
                 lambda: (a.casefold() for a in address_texts(part, key)))


def address_texts(part: MimePart, name: str) -> list[str]:
    """What SEARCH FROM / TO / CC / BCC match besides the decoded header text (RFC 3501
    §6.4.4 names "the envelope structure's FROM field"): for every address of every `name`
    field, its display name (encoded words decoded) and its "mailbox@host" form as ENVELOPE
    parses it, so comments and white space inside the address are gone
    ("<user (comment)@ (comment) domain.org>" gives "user@domain.org")."""
    key = name.lower()
    out: list[str] = []
    for f in part.fields:
        if f.key != key:
            continue
        for address in parse_address_list(f.unfolded):
            if address.name:
                out.append(decode_header_value(address.name))
            if address.host is None:  # group syntax: its name (in `mailbox`) or its end
                if address.mailbox:
                    out.append(decode_header_value(address.mailbox))
                continue
            mailbox = "" if address.mailbox == MISSING_MAILBOX else address.mailbox or ""
            host = "" if address.host == MISSING_DOMAIN else address.host
            out.append(decode_header_value(f"{mailbox}@{host}"))
    return out


def header_text(part: MimePart) -> str:
    """The whole header, decoded, one "Name: value" per line (for SEARCH TEXT)."""
    return "\n".join(f"{f.name}: {decode_header_value(f.unfolded)}" for f in part.fields)


def part_text(part: MimePart) -> str:
    """The decoded body of one leaf part."""
    raw = decode_transfer(part.body, part.encoding)
    return decode_bytes(raw, part.param("charset"))


def body_texts(root: MimePart) -> Iterator[str]:
    """Decoded text of the message body: every text/* leaf (a missing Content-Type counts
    as text/plain, RFC 2045 §5.2) and the headers of encapsulated messages. Attachments
    of other types are not searched (they are not text)."""
    embedded = {id(p.message) for p in root.walk() if p.message is not None}
    for part in root.walk():
        if id(part) in embedded:
            yield header_text(part)
        if part.children or part.message is not None:
            continue
        if part.media_type.lower() == "text":
            yield part_text(part)


def _fold(text: str) -> str:
    return text.casefold()


def contains(haystack: str, needle: str) -> bool:
    """RFC 3501 §6.4.4: case-insensitive substring match."""
    return _fold(needle) in _fold(haystack)


def header_contains(root: MimePart, name: str, needle: str) -> bool:
    """SEARCH HEADER / FROM / TO / CC / BCC / SUBJECT.

    RFC 3501 §6.4.4: with an empty string, HEADER matches every message that has the field."""
    values = header_values(root, name)
    if not needle:
        return bool(values)
    folded = _fold(needle)
    return any(folded in _fold(v) for v in values)


def body_contains(root: MimePart, needle: str) -> bool:
    """SEARCH BODY: the string in the body of the message."""
    folded = _fold(needle)
    return any(folded in _fold(t) for t in body_texts(root))


def text_contains(root: MimePart, needle: str) -> bool:
    """SEARCH TEXT: the string in the header or the body of the message."""
    folded = _fold(needle)
    return folded in _fold(header_text(root)) or body_contains(root, needle)
