"""BODY[section]<partial> extraction as raw octets (RFC 3501 §6.4.5).

A section names a part by numbers ("1.2.3") and optionally what of it is wanted: HEADER,
HEADER.FIELDS (names), HEADER.FIELDS.NOT (names), TEXT or MIME. Everything is cut from the
stored message by offset; only HEADER.FIELDS(.NOT) builds new bytes (a few header lines).
A partial is applied to the offsets before the one slice, so BODY[]<0.100> of a 4 MB message
copies 100 octets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailkeep.proto.imap.mime import MimePart

HEADER = "HEADER"
HEADER_FIELDS = "HEADER.FIELDS"
HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
TEXT = "TEXT"
MIME = "MIME"
SECTION_TEXTS = frozenset({HEADER, HEADER_FIELDS, HEADER_FIELDS_NOT, TEXT, MIME})


@dataclass(frozen=True, slots=True)
class Section:
    """section-spec (RFC 3501 §9): `part` numbers, then an optional section-text."""

    part: tuple[int, ...] = ()
    text: str | None = None  # one of SECTION_TEXTS (upper case), or None
    fields: tuple[str, ...] = ()  # header-list for HEADER.FIELDS / HEADER.FIELDS.NOT


def find_part(root: MimePart, numbers: Sequence[int]) -> MimePart | None:
    """The part that `numbers` names, or None when there is no such part.

    RFC 3501 §6.4.5: parts of a multipart are numbered from 1; a non-multipart message (or
    part) has only part 1, itself; after a message/rfc822 part, numbers continue inside the
    encapsulated message ("4.2.2.1" in the RFC's example)."""
    current = root
    for depth, number in enumerate(numbers):
        if number < 1:
            return None
        if depth > 0:
            if current.message is not None:
                current = current.message
            elif not current.children:
                return None  # a leaf has no sub-parts
        if current.children:
            if number > len(current.children):
                return None
            current = current.children[number - 1]
        elif number != 1:
            return None
    return current


def _header_lines(part: MimePart, names: Sequence[str], *, keep: bool) -> bytes:
    """RFC 3501 §6.4.5 HEADER.FIELDS(.NOT): the matching fields as written, in their
    original order, then the blank line that ends a header."""
    wanted = {n.lower() for n in names}
    data = part.data
    chunks: list[bytes] = []
    for f in part.fields:
        if (f.key in wanted) != keep:
            continue
        line = data[f.start : f.end]
        chunks.append(line)
        if not line.endswith(b"\n"):
            chunks.append(b"\r\n")  # the header ran to the end of the message
    chunks.append(b"\r\n")
    return b"".join(chunks)


def section_span(root: MimePart, section: Section) -> tuple[int, int] | bytes | None:
    """Where the section lies: (start, end) offsets into root.data, or built bytes for
    HEADER.FIELDS(.NOT), or None when the part does not exist."""
    part = find_part(root, section.part)
    if part is None:
        return None
    text = section.text
    if text is None:
        if not section.part:
            return (root.start, root.end)  # BODY[]: the whole message
        return (part.body_start, part.end)
    if text == MIME:
        # RFC 3501 §6.4.5: the MIME header of the part; needs part numbers, but for the
        # bare MIME we answer with the message header rather than fail.
        return (part.start, part.body_start)
    # HEADER, HEADER.FIELDS(.NOT) and TEXT are about a message: the top-level one, or the
    # one encapsulated in a message/rfc822 part.
    # Lenient: for a part that is not message/rfc822 the RFC says nothing; its own MIME
    # header and body are the nearest meaning.
    target = part.message if section.part and part.message is not None else part
    if text == HEADER:
        return (target.start, target.body_start)
    if text == TEXT:
        return (target.body_start, target.end)
    if text == HEADER_FIELDS:
        return _header_lines(target, section.fields, keep=True)
    if text == HEADER_FIELDS_NOT:
        return _header_lines(target, section.fields, keep=False)
    return None


def section_bytes(
    root: MimePart, section: Section, partial: tuple[int, int | None] | None = None
) -> bytes | None:
    """BODY[section]<offset.length> octets; None when the part does not exist.

    `partial` is (offset, length), length None meaning "to the end". RFC 3501 §6.4.5: an
    offset past the end gives the empty string."""
    span = section_span(root, section)
    if span is None:
        return None
    if isinstance(span, bytes):
        return span if partial is None else apply_partial(span, *partial)
    start, end = span
    if partial is not None:
        offset, length = partial
        start = min(end, start + max(0, offset))
        if length is not None:
            end = min(end, start + max(0, length))
    return root.data[start:end]


def apply_partial(data: bytes, offset: int, length: int | None) -> bytes:
    """RFC 3501 §6.4.5 <origin.octets> on bytes already cut."""
    offset = max(0, offset)
    if length is None:
        return data[offset:]
    return data[offset : offset + max(0, length)]


# RFC 3501 §6.4.5: the RFC822 items are the same octets as these BODY sections.


def rfc822(root: MimePart) -> bytes:
    """RFC822 = BODY[]."""
    return root.data[root.start : root.end]


def rfc822_header(root: MimePart) -> bytes:
    """RFC822.HEADER = BODY.PEEK[HEADER]."""
    return root.data[root.start : root.body_start]


def rfc822_text(root: MimePart) -> bytes:
    """RFC822.TEXT = BODY[TEXT]."""
    return root.data[root.body_start : root.end]
