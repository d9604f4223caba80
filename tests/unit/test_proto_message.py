"""proto/message.py: raw RFC 5322 header handling on bytes, never re-serialising the message."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.message import (
    CRLF,
    HeaderField,
    addresses_of,
    has_bare_cr_or_lf,
    has_field,
    parse_header_fields,
    splice_headers,
    split_message,
)

# -- split_message ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "header", "rest"),
    [
        (b"Subject: hi\r\n\r\nbody\r\n", b"Subject: hi\r\n", b"\r\nbody\r\n"),
        (b"A: 1\r\nB: 2\r\n\r\n", b"A: 1\r\nB: 2\r\n", b"\r\n"),
        (b"A: 1\r\n", b"A: 1\r\n", b""),
        (b"A: 1", b"A: 1", b""),
        (b"\r\nonly body\r\n", b"", b"\r\nonly body\r\n"),
        (b"", b"", b""),
        # the first blank line ends the header section; later ones belong to the body
        (b"A: 1\r\n\r\nx\r\n\r\nB: 2\r\n", b"A: 1\r\n", b"\r\nx\r\n\r\nB: 2\r\n"),
    ],
)
def test_split_message(data: bytes, header: bytes, rest: bytes) -> None:
    assert split_message(data) == (header, rest)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_split_message_is_a_partition(data: bytes) -> None:
    header, rest = split_message(data)
    assert header + rest == data
    assert b"\r\n\r\n" not in header
    if rest:
        assert rest.startswith(CRLF)


# -- parse_header_fields --------------------------------------------------------------------------


def test_simple_fields() -> None:
    fields = parse_header_fields(b"From: a@example.test\r\nSubject: hello\r\n")
    assert fields == [HeaderField("From", "a@example.test"), HeaderField("Subject", "hello")]
    assert [f.key for f in fields] == ["from", "subject"]


def test_folding_is_unfolded() -> None:
    # RFC 5322 §2.2.3: unfolding removes the CRLF, keeps the white space after it.
    fields = parse_header_fields(b"Subject: a long\r\n\tsubject line\r\n  and more\r\nX: y\r\n")
    assert fields[0] == HeaderField("Subject", "a long\tsubject line  and more")
    assert fields[1] == HeaderField("X", "y")
    assert len(fields) == 2


def test_folded_from_is_one_field() -> None:
    fields = parse_header_fields(b"From: Alice\r\n <alice@example.test>\r\n")
    assert fields == [HeaderField("From", "Alice <alice@example.test>")]


def test_obsolete_white_space_before_colon() -> None:
    # RFC 5322 §4.5.1: "From : x" (obs-optional) is a From field.
    fields = parse_header_fields(b"From : a@example.test\r\nTo\t: b@example.test\r\n")
    assert [f.key for f in fields] == ["from", "to"]
    assert fields[0].value == "a@example.test"
    assert has_field(fields, "from")


def test_line_without_colon_kept_with_empty_name() -> None:
    fields = parse_header_fields(b"Subject: x\r\nthis is not a header\r\nTo: y\r\n")
    assert [f.name for f in fields] == ["Subject", "", "To"]
    assert fields[1].value == "this is not a header"


def test_colon_in_value_and_empty_value() -> None:
    fields = parse_header_fields(b"Subject: re: re: x\r\nX-Empty:\r\n")
    assert fields == [HeaderField("Subject", "re: re: x"), HeaderField("X-Empty", "")]


def test_continuation_before_any_field_is_not_lost() -> None:
    fields = parse_header_fields(b" leading: x\r\nA: b\r\n")
    assert len(fields) == 2
    assert fields[1] == HeaderField("A", "b")


def test_utf8_and_invalid_bytes_survive() -> None:
    fields = parse_header_fields("Subject: grüße\r\n".encode() + b"X: \xff\r\n")
    assert fields[0].value == "grüße"
    assert fields[1].value.encode("utf-8", "surrogateescape") == b"\xff"


def test_only_crlf_ends_a_line() -> None:
    # A bare LF does not start a new field here (such messages are refused before this).
    fields = parse_header_fields(b"Subject: a\nFrom: b@example.test\r\n")
    assert [f.key for f in fields] == ["subject"]


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_parse_header_fields_total_on_any_bytes(data: bytes) -> None:
    fields = parse_header_fields(data)
    assert all(isinstance(f, HeaderField) for f in fields)
    assert all(":" not in f.name for f in fields)
    # one field per line that starts a field (not a continuation, not empty)
    lines = [ln for ln in data.split(CRLF) if ln]
    starts = sum(1 for i, ln in enumerate(lines) if i == 0 or ln[:1] not in (b" ", b"\t"))
    assert len(fields) == starts


# -- addresses_of ---------------------------------------------------------------------------------


def _fields(text: str) -> list[HeaderField]:
    return parse_header_fields(text.encode())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("From: alice@example.test\r\n", ["alice@example.test"]),
        ("From: Alice <ALICE@Example.Test>\r\n", ["alice@example.test"]),
        ('From: "Smith, Alice" <alice@example.test>\r\n', ["alice@example.test"]),
        ("From: a@example.test, b@example.test\r\n", ["a@example.test", "b@example.test"]),
        ("From: a@example.test\r\nFrom: b@example.test\r\n", ["a@example.test", "b@example.test"]),
        ("Subject: none\r\n", []),
        ("From: Alice\r\n", None),
        ("From: <>\r\n", None),
        ("From: undisclosed-recipients:;\r\n", None),
        ("From: alice@example.test, nobody\r\n", None),
    ],
)
def test_addresses_of(header: str, expected: list[str] | None) -> None:
    assert addresses_of(_fields(header), "from") == expected


# -- has_bare_cr_or_lf ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "bare"),
    [
        (b"", False),
        (b"a\r\nb\r\n", False),
        (b"\r\n\r\n.\r\n", False),
        (b"a\nb", True),
        (b"a\rb", True),
        (b"a\r\nb\n.\r\n", True),   # the SMTP smuggling shape
        (b"a\r\nb\n.\n", True),
        (b"\r\r\n", True),
        (b"\r\n\n", True),
        (b"\n\r", True),
        (b"x\r", True),
        (b"\nx", True),
    ],
)
def test_has_bare_cr_or_lf(data: bytes, bare: bool) -> None:
    assert has_bare_cr_or_lf(data) is bare


_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b" "]), max_size=30).map(
    b"".join))
def test_has_bare_cr_or_lf_matches_a_regex_oracle(data: bytes) -> None:
    assert has_bare_cr_or_lf(data) == bool(_BARE.search(data))


# -- splice_headers -------------------------------------------------------------------------------

PREPEND = [b"Received: from x\r\n\tby y; Thu, 1 Jan 2026 00:00:00 +0000\r\n"]
APPEND = [b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n", b"Message-ID: <1@y>\r\n"]


def test_splice_places_trace_first_and_missing_fields_at_header_end() -> None:
    msg = b"From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n"
    out = splice_headers(msg, PREPEND, APPEND)
    assert out == (PREPEND[0] + b"From: a@example.test\r\nSubject: x\r\n" + b"".join(APPEND)
                   + b"\r\nbody\r\n")


def test_splice_header_without_final_crlf() -> None:
    out = splice_headers(b"Subject: x", [], APPEND)
    assert out == b"Subject: x\r\n" + b"".join(APPEND) + b"\r\n"


def test_splice_message_without_header_section() -> None:
    out = splice_headers(b"\r\nbody", PREPEND, APPEND)
    assert out == PREPEND[0] + b"".join(APPEND) + b"\r\nbody"


def test_splice_empty_message() -> None:
    assert splice_headers(b"", [], APPEND) == b"".join(APPEND) + b"\r\n"


def _independent_split(m: bytes) -> tuple[bytes, bytes]:
    """RFC 5322 §2.1: the header section ends at the first empty line."""
    if m.startswith(b"\r\n"):
        return b"", m
    end = m.find(b"\r\n\r\n")
    return (m, b"") if end < 0 else (m[: end + 2], m[end + 2 :])


_line = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_message = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda hs, body: b"".join(h + CRLF for h in hs) + CRLF + body,
              st.lists(_line, max_size=6), st.binary(max_size=100)),
)


@settings(max_examples=400)
@given(_message, st.lists(_line.map(lambda b: b + CRLF), max_size=3),
       st.lists(_line.map(lambda b: b + CRLF), max_size=3))
def test_splice_keeps_original_bytes_intact_and_in_order(
    m: bytes, prepend: list[bytes], append: list[bytes]
) -> None:
    out = splice_headers(m, prepend, append)
    head, body = _independent_split(m)
    pre = b"".join(prepend)
    assert out.startswith(pre + head)
    after = out[len(pre) + len(head):]
    if head and not head.endswith(CRLF):
        assert after.startswith(CRLF)
        after = after[2:]
    assert after.startswith(b"".join(append))
    after = after[len(b"".join(append)):]
    assert after == (body or CRLF)
    # the original is a subsequence: head, then body, nothing of it dropped or reordered
    assert out.find(head) <= len(pre) and out.endswith(body)
