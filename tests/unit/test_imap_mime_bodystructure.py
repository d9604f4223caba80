"""proto/imap/bodystructure.py: BODY and BODYSTRUCTURE (RFC 3501 §7.4.2, §9).

Expected trees are written by hand from the formal syntax; sizes are counted from the
corpus files (stored with CRLF, so every line break is two octets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailkeep.proto.imap.bodystructure import body, bodystructure
from mailkeep.proto.imap.mime import parse_message
from mailkeep.proto.imap.values import Value

MESSAGES = Path(__file__).parent / "messages"


def load(name: str) -> bytes:
    """Corpus files are kept with LF in git; messages are stored with CRLF."""
    return (MESSAGES / name).read_bytes().replace(b"\n", b"\r\n")


NIL = None
EXT_NONE = [NIL, NIL, NIL, NIL]


def test_alternative() -> None:
    # body-type-text: "Hi Bob,\r\n\r\nShall we meet at the caf=C3=A9 at noon?\r\n\r\nAlice" is
    # 59 octets in 5 lines; the CRLF before "--b1_alt" belongs to the delimiter.
    plain = ["text", "plain", ["charset", "utf-8", "format", "flowed"], NIL, NIL,
             "quoted-printable", 59, 5, *EXT_NONE]
    html = ["text", "html", ["charset", "utf-8"], NIL, NIL, "quoted-printable", 60, 1,
            *EXT_NONE]
    expected = [plain, html, "alternative", ["boundary", "b1_alt"], NIL, NIL, NIL]
    assert bodystructure(parse_message(load("alternative.eml"))) == expected
    # BODY: the same without extension data
    assert body(parse_message(load("alternative.eml"))) == [
        plain[:8], html[:8], "alternative"]


def test_mixed_with_attachments() -> None:
    text = ["text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 32, 1, *EXT_NONE]
    pdf = ["application", "pdf", ["name", "report.pdf"], NIL, "The report", "base64", 48,
           # body-ext-1part: md5, dsp, lang, loc
           "Q2hlY2sgSW50ZWdyaXR5IQ==",
           ["attachment", ["filename", "report.pdf", "size", "24"]], NIL, NIL]
    png = ["image", "png", NIL, "<logo@example.com>", NIL, "base64", 12,
           NIL, ["inline", NIL], ["en", "de"], "http://example.com/logo.png"]
    expected = [text, pdf, png, "mixed", ["boundary", "==outer=="], NIL, "en", NIL]
    assert bodystructure(parse_message(load("mixed_attachments.eml"))) == expected


def test_nested_message_rfc822() -> None:
    inner_env = ["Mon, 2 Mar 2026 09:00:00 +0000", "the plan",
                 [["Frank", NIL, "frank", "example.org"]],
                 [["Frank", NIL, "frank", "example.org"]],
                 [["Frank", NIL, "frank", "example.org"]],
                 [[NIL, NIL, "dave", "example.org"]], NIL, NIL, NIL, "<plan@example.org>"]
    inner_body = [
        ["text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 20, 2, *EXT_NONE],
        ["text", "html", ["charset", "us-ascii"], NIL, NIL, "7bit", 45, 1, *EXT_NONE],
        "alternative", ["boundary", "inner"], NIL, NIL, NIL]
    data = load("nested_rfc822.eml")
    start = data.index(b"Date: Mon")
    end = data.index(b"\r\n--outer--")
    # body-type-msg: media-message body-fields envelope body body-fld-lines
    message = ["message", "rfc822", NIL, NIL, "forwarded message", "7bit", end - start,
               inner_env, inner_body, 17, *EXT_NONE]
    text = ["text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 10, 1, *EXT_NONE]
    assert end - start == 388
    assert bodystructure(parse_message(data)) == [
        text, message, "mixed", ["boundary", "outer"], NIL, NIL, NIL]
    # BODY carries the encapsulated message's BODY, again without extension data
    short = body(parse_message(data))
    assert isinstance(short, list)
    assert short[1] == ["message", "rfc822", NIL, NIL, "forwarded message", "7bit", 388,
                        inner_env, [inner_body[0][:8], inner_body[1][:8], "alternative"], 17]


@pytest.mark.parametrize("name", ["empty.eml", "no_blank_line.eml"])
def test_defaults_without_body(name: str) -> None:
    # RFC 2045 §5.2 / §6.1: text/plain; charset=us-ascii, 7bit
    assert bodystructure(parse_message(load(name))) == [
        "text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 0, 0, *EXT_NONE]


def test_missing_content_type() -> None:
    assert body(parse_message(load("no_content_type.eml"))) == [
        "text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 24, 2]


def test_rfc2231_parameters_left_encoded_and_merged() -> None:
    tree = bodystructure(parse_message(load("rfc2231.eml")))
    assert isinstance(tree, list)
    assert tree[0] == [
        "application", "x-stuff",
        ["title*", "us-ascii'en'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn%27t%20it%21"],
        NIL, NIL, "7bit", 4,
        NIL, ["attachment", ["filename*", "utf-8''%C3%A9t%C3%A9.txt"]], NIL, NIL]


def test_broken_boundaries() -> None:
    tree = bodystructure(parse_message(load("broken_boundary.eml")))
    assert isinstance(tree, list)
    sizes = [(part[0], part[1], part[6], part[7]) for part in tree[:-5]]  # type: ignore[index]
    # "--XXnot-a-delimiter" is not our delimiter; the multipart without a boundary is
    # text/plain (RFC 2045 §5.2); the unclosed last part runs to the end.
    assert sizes == [("text", "plain", 39, 3), ("text", "plain", 22, 1),
                     ("text", "plain", 25, 1)]


def test_digest_defaults_to_message_rfc822() -> None:
    tree = bodystructure(parse_message(load("digest.eml")))
    assert isinstance(tree, list)
    first = tree[0]
    assert isinstance(first, list)
    assert first[:7] == ["message", "rfc822", NIL, NIL, NIL, "7bit", 44]
    assert first[8] == ["text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 3, 1,
                        *EXT_NONE]
    assert tree[1] == ["text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 13, 1,
                       *EXT_NONE]


def test_eight_bit_values_are_bytes() -> None:
    data = (b"Content-Type: text/plain; name=\"caf\xc3\xa9.txt\"\r\n"
            b"Content-Description: d\xc3\xa9j\xc3\xa0\r\n\r\nx")
    tree = bodystructure(parse_message(data))
    assert tree == ["text", "plain", ["name", b"caf\xc3\xa9.txt", "charset", "us-ascii"], NIL,
                    b"d\xc3\xa9j\xc3\xa0", "7bit", 1, 1, *EXT_NONE]


def test_multipart_without_parts_gets_one_empty_text_part() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\nno delimiters at all\r\n"
    assert body(parse_message(data)) == [
        ["text", "plain", ["charset", "us-ascii"], NIL, NIL, "7bit", 0, 0], "mixed"]


def test_base64_message_rfc822_is_opaque() -> None:
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"U3ViamVjdDogeA0KDQp5\r\n--b--\r\n")
    tree: Value = body(parse_message(data))
    assert tree == [["application", "octet-stream", NIL, NIL, NIL, "base64", 20], "mixed"]


def test_rfc3501_style_uppercase_kept_as_written() -> None:
    data = (b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
            b"Content-Transfer-Encoding: 7BIT\r\n\r\n" + b"line\r\n" * 92)
    assert body(parse_message(data)) == [
        "TEXT", "PLAIN", ["CHARSET", "US-ASCII"], NIL, NIL, "7BIT", 6 * 92, 92]
