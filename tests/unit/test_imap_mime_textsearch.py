"""proto/imap/textsearch.py: decoded text for SEARCH (RFC 3501 §6.4.4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailkeep.proto.imap.mime import parse_message
from mailkeep.proto.imap.textsearch import (
    MAX_DERIVED,
    body_contains,
    body_texts,
    decode_base64,
    decode_bytes,
    decode_header_value,
    header_contains,
    header_values,
    text_contains,
)

MESSAGES = Path(__file__).parent / "messages"


def load(name: str) -> bytes:
    return (MESSAGES / name).read_bytes().replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        # RFC 2047 §8 examples
        ("=?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>",
         "André Pirard <PIRARD@vm1.ulg.ac.be>"),
        ("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)"),
        ("(=?ISO-8859-1?Q?a_b?=)", "(a b)"),
        ("=?ISO-8859-1?Q?a?=  b", "a  b"),
        ("=?utf-8?B?R3LDvMOfZQ==?= =?utf-8?q?_aus_M=C3=BCnchen?=", "Grüße aus München"),
        ("=?x-unknown?q?caf=C3=A9?=", "café"),  # unknown charset: UTF-8 is tried
        ("=?utf-8*en?q?hi?=", "hi"),  # RFC 2231 §5 language in an encoded word
        ("=?utf-8?b?!!!?=", ""),
        ("Gr\udcc3\udcbc\udcc3\udc9fe", "Grüße"),  # raw UTF-8 (RFC 6532)
        ("caf\udce9", "café"),  # raw Latin-1
        ("=?broken", "=?broken"),
    ],
)
def test_decode_header_value(raw: str, text: str) -> None:
    assert decode_header_value(raw) == text


def test_decode_helpers() -> None:
    assert decode_base64(b"SGVsbG8") == b"Hello"
    assert decode_base64(b"SGVs\r\nbG8=\r\nIHdvcmxk") == b"Hello world"
    assert decode_bytes(b"caf\xe9", "iso-8859-1") == "café"
    assert decode_bytes(b"caf\xc3\xa9", "us-ascii") == "café"  # lying label
    assert decode_bytes(b"\xff", "rot13") == "\ufffd"  # not a text encoding
    assert decode_bytes(b"x", None) == "x"


def test_decoded_header_values_kept_with_the_message_are_bounded() -> None:
    # The values are kept on the cached message (a second SEARCH decodes nothing), but a
    # client asking for ever new header names adds nothing past MAX_DERIVED entries.
    msg = parse_message(b"Subject: =?utf-8?q?caf=C3=A9?=\r\nX-A: 1\r\n\r\nbody\r\n")
    first = header_values(msg, "subject")
    assert first == ["café"] and msg.derived["header:subject"] == ("café",)
    first.clear()  # the caller's list: the kept values are untouched
    assert header_values(msg, "Subject") == ["café"]
    for n in range(3 * MAX_DERIVED):
        assert header_values(msg, f"x-none-{n}") == []
    assert len(msg.derived) == MAX_DERIVED
    assert header_values(msg, "x-a") == ["1"]  # past the bound: decoded, not kept
    assert "header:x-a" not in msg.derived


def test_header_search() -> None:
    msg = parse_message(load("encoded_words.eml"))
    assert header_values(msg, "subject") == ["Grüße aus München"]
    assert header_contains(msg, "Subject", "GRÜSSE")  # full case folding: ß matches SS
    assert header_contains(msg, "Subject", "grüße AUS")
    assert header_contains(msg, "from", "jörg müller")
    assert header_contains(msg, "to", "andré")
    assert header_contains(msg, "cc", "")
    assert not header_contains(msg, "bcc", "")


def test_body_search_decodes_transfer_encoding_and_charset() -> None:
    assert body_contains(parse_message(load("encoded_words.eml")), "münchen!")
    alt = parse_message(load("alternative.eml"))
    assert body_contains(alt, "CAFÉ at noon")
    assert not body_contains(alt, "Lunch")  # subject is header, not body
    assert text_contains(alt, "lunch on friday")
    eight = parse_message(load("eight_bit_headers.eml"))
    assert body_contains(eight, "café")


def test_body_search_skips_attachments_but_reads_embedded_headers() -> None:
    mixed = parse_message(load("mixed_attachments.eml"))
    assert body_contains(mixed, "report attached")
    assert not body_contains(mixed, "JVBERi")
    nested = parse_message(load("nested_rfc822.eml"))
    assert body_contains(nested, "frank@example.org")
    assert body_contains(nested, "step two")
    assert len(list(body_texts(nested))) == 4
