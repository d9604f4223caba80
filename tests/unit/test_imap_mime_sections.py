"""proto/imap/sections.py: BODY[section]<partial> (RFC 3501 §6.4.5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailkeep.proto.imap.mime import parse_message
from mailkeep.proto.imap.sections import (
    HEADER,
    HEADER_FIELDS,
    HEADER_FIELDS_NOT,
    MIME,
    TEXT,
    Section,
    apply_partial,
    find_part,
    rfc822,
    rfc822_header,
    rfc822_text,
    section_bytes,
)

MESSAGES = Path(__file__).parent / "messages"


def load(name: str) -> bytes:
    return (MESSAGES / name).read_bytes().replace(b"\n", b"\r\n")


NESTED = load("nested_rfc822.eml")
HEAD, _, REST = NESTED.partition(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (Section(), NESTED),
        (Section(text=HEADER), HEAD + b"\r\n\r\n"),
        (Section(text=TEXT), REST),
        (Section((1,)), b"See below."),
        (Section((1,), MIME), b"Content-Type: text/plain\r\n\r\n"),
        (Section((2,), MIME),
         b"Content-Type: message/rfc822\r\nContent-Description: forwarded message\r\n\r\n"),
        (Section((2,), HEADER_FIELDS, ("SUBJECT", "from", "x-absent")),
         b"From: Frank <frank@example.org>\r\nSubject: the plan\r\n\r\n"),
        (Section((2, 1)), b"Step one.\r\nStep two."),
        (Section((2, 2), MIME), b"Content-Type: text/html; charset=us-ascii\r\n\r\n"),
        (Section(text=HEADER_FIELDS, fields=("x-absent",)), b"\r\n"),
        (Section(text=HEADER_FIELDS_NOT,
                 fields=("date", "from", "to", "message-id", "mime-version", "content-type")),
         b"Subject: Fwd: the plan\r\n\r\n"),
        (Section((3,)), None),
        (Section((1, 1)), None),  # a leaf has no sub-parts
        (Section((0,)), None),
    ],
)
def test_sections_of_nested_message(section: Section, expected: bytes | None) -> None:
    assert section_bytes(parse_message(NESTED), section) == expected


def test_part_of_encapsulated_message() -> None:
    msg = parse_message(NESTED)
    whole = section_bytes(msg, Section((2,)))
    assert whole is not None and whole.startswith(b"Date: Mon") and whole.endswith(b"--inner--")
    assert section_bytes(msg, Section((2,), HEADER)) == whole[: whole.index(b"\r\n\r\n") + 4]
    assert section_bytes(msg, Section((2,), TEXT)) == whole[whole.index(b"\r\n\r\n") + 4 :]
    assert find_part(msg, (2, 2)) is msg.children[1].message.children[1]  # type: ignore[union-attr]


def test_non_multipart_part_one_is_the_body() -> None:
    # RFC 3501 §6.4.5: part 1 of a non-multipart message is its body
    data = load("no_content_type.eml")
    msg = parse_message(data)
    assert section_bytes(msg, Section((1,))) == b"Just text.\r\nTwo lines.\r\n"
    assert section_bytes(msg, Section((2,))) is None
    assert section_bytes(msg, Section((1,), MIME)) == rfc822_header(msg)


def test_single_part_encapsulated_message() -> None:
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner body\r\n--b--")
    msg = parse_message(data)
    assert section_bytes(msg, Section((1, 1))) == b"inner body"
    assert section_bytes(msg, Section((1,), HEADER)) == b"Subject: in\r\n\r\n"
    assert section_bytes(msg, Section((1, 2))) is None


def test_partial() -> None:
    msg = parse_message(NESTED)
    assert section_bytes(msg, Section(), (0, 4)) == NESTED[:4]
    assert section_bytes(msg, Section(), (10, None)) == NESTED[10:]
    assert section_bytes(msg, Section(), (len(NESTED) + 5, 10)) == b""
    assert section_bytes(msg, Section((1,)), (4, 100)) == b"below."
    assert section_bytes(msg, Section((2,), HEADER_FIELDS, ("subject",)), (0, 7)) == b"Subject"
    assert apply_partial(b"abcdef", 2, 3) == b"cde"
    assert apply_partial(b"abcdef", -1, None) == b"abcdef"


def test_rfc822_items() -> None:
    msg = parse_message(NESTED)
    assert rfc822(msg) == NESTED
    assert rfc822_header(msg) + rfc822_text(msg) == NESTED


def test_header_fields_without_final_crlf() -> None:
    msg = parse_message(b"Subject: x\r\nTo: y")
    assert section_bytes(msg, Section(text=HEADER_FIELDS, fields=("to",))) == b"To: y\r\n\r\n"
    assert section_bytes(msg, Section(text=HEADER)) == b"Subject: x\r\nTo: y"
    assert section_bytes(msg, Section(text=TEXT)) == b""
