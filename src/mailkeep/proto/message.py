"""Raw RFC 5322 header handling on bytes, without re-serialising the message.

We never rewrite what the user sent: trace and missing headers are spliced in around it, so the
stored message is the submitted one byte for byte plus what RFC 6409 §8 lets an MSA add.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

CRLF = b"\r\n"


@dataclass(frozen=True, slots=True)
class HeaderField:
    name: str      # as written, without trailing white space
    value: str     # unfolded, decoded as UTF-8 with surrogateescape (RFC 6532 allows UTF-8)

    @property
    def key(self) -> str:
        return self.name.lower()


def split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header section including its final CRLF, rest starting at the blank line or b"")."""
    if data.startswith(CRLF):
        return b"", data
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b""
    return data[: end + 2], data[end + 2 :]


def parse_header_fields(header: bytes) -> list[HeaderField]:
    """Unfold a header section into fields (RFC 5322 §2.2.3).

    Lenient on purpose (habit: answer with what can be parsed): a line without a colon is kept
    as a field with an empty name, so policy code can still see and refuse it."""
    fields: list[tuple[str, list[str]]] = []
    for raw_line in header.split(CRLF):
        if not raw_line:
            continue
        line = raw_line.decode("utf-8", "surrogateescape")
        if line[:1] in (" ", "\t") and fields:
            fields[-1][1].append(line)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            fields.append(("", [line]))
        else:
            # RFC 5322 §4.5.1 (obsolete syntax) allows white space before the colon:
            # "From : x" is a From field to most readers, so it is one to us too.
            fields.append((name.rstrip(" \t"), [value]))
    return [HeaderField(name, "".join(parts).strip()) for name, parts in fields]


def addresses_of(fields: list[HeaderField], key: str) -> list[str] | None:
    """Lower-cased addr-specs of every `key` field; None if any of them cannot be parsed."""
    values = [f.value for f in fields if f.key == key]
    if not values:
        return []
    pairs = _getaddresses(values)
    if not pairs:
        return None  # the field is there but names nobody (RFC 5322 §3.6.2 wants an author)
    result: list[str] = []
    for _display, addr in pairs:
        if not addr or "@" not in addr:
            return None
        result.append(addr.lower())
    return result


def _getaddresses(values: list[str]) -> list[tuple[str, str]]:
    """email.utils.getaddresses, the same on every Python 3.11+ patch level.

    The CVE-2023-27043 fix (3.11.10, 3.12.6, 3.13) made it return ("", "") for inputs such as
    'a@x <b@y>' unless strict=False is given; older releases have no `strict` and behave as
    strict=False does. We ask for that lenient reading everywhere: for sender checks it is the
    cautious one, since every address it finds must belong to the account."""
    try:
        return email.utils.getaddresses(values, strict=False)  # type: ignore[call-arg,unused-ignore]
    except TypeError:  # Python without the `strict` parameter
        return email.utils.getaddresses(values)


def has_field(fields: list[HeaderField], key: str) -> bool:
    return any(f.key == key for f in fields)


def has_bare_cr_or_lf(data: bytes) -> bool:
    """RFC 5321 §2.3.8: CR and LF only ever travel together as CRLF.

    A bare LF or CR is how SMTP smuggling hides a second message ("\\n.\\r\\n"); we refuse it."""
    crlf = data.count(CRLF)
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


def longest_line_exceeds(data: bytes, limit: int) -> bool:
    """RFC 5321 §4.5.3.1.6: is any line longer than `limit` octets including its CRLF?

    Call after has_bare_cr_or_lf() said no: then lines are exactly the runs between CRLFs.
    A regular expression keeps the scan in C even for a 25 MiB message."""
    if limit < 3:
        return bool(data)
    # Anchored at line starts (MULTILINE ^): each line is scanned once. Unanchored, the search
    # restarted at every byte and cost 1.7 ms per 10 KB message instead of 0.1 ms.
    return re.search(rb"^[^\r\n]{%d}" % (limit - 1), data, re.MULTILINE) is not None


def remove_fields(data: bytes, key: str) -> bytes:
    """The message without any header field named `key` (case-insensitive), folded
    continuation lines included; everything else byte for byte as it was."""
    header, rest = split_message(data)
    if not header:
        return data
    kept: list[bytes] = []
    dropping = False
    wanted = key.lower().encode()
    for line in header.split(CRLF)[:-1]:  # the header ends with CRLF: last piece is b""
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.partition(b":")[0].rstrip(b" \t").lower()
        dropping = name == wanted and b":" in line
        if not dropping:
            kept.append(line)
    out = CRLF.join(kept)
    return (out + CRLF if out else b"") + rest


def splice_headers(data: bytes, prepend: list[bytes], append: list[bytes]) -> bytes:
    """Put trace fields before the header section and missing fields at its end."""
    header, rest = split_message(data)
    if header and not header.endswith(CRLF):
        header += CRLF
    if not rest:
        rest = CRLF
    return b"".join(prepend) + header + b"".join(append) + rest
