"""proto/imap/mime.py: the part tree over raw bytes (RFC 2045, RFC 2046)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailkeep.proto.imap.mime import (
    MAX_DEPTH,
    MAX_PARTS,
    merge_rfc2231,
    parse_content_type,
    parse_disposition,
    parse_header,
    parse_message,
    split_multipart,
)

MESSAGES = Path(__file__).parent / "messages"


def load(name: str) -> bytes:
    return (MESSAGES / name).read_bytes().replace(b"\n", b"\r\n")


def test_offsets_are_exact_slices_of_the_message() -> None:
    data = load("alternative.eml")
    msg = parse_message(data)
    assert msg.header == data[: data.index(b"\r\n\r\n") + 4]
    assert msg.header + msg.body == data
    plain, html = msg.children
    assert plain.header.startswith(b"Content-Type: text/plain")
    assert plain.header.endswith(b"quoted-printable\r\n\r\n")
    assert plain.body.startswith(b"Hi Bob,") and plain.body.endswith(b"Alice")
    assert html.body.endswith(b"</p>")
    assert bytes(html.body_view()) == html.body
    assert plain.param("CHARSET") == "utf-8"
    assert plain.encoding == "quoted-printable"


def test_nested_message_parsed_recursively() -> None:
    msg = parse_message(load("nested_rfc822.eml"))
    forwarded = msg.children[1]
    assert forwarded.mime_type == "message/rfc822"
    inner = forwarded.message
    assert inner is not None
    assert inner.start == forwarded.body_start and inner.end == forwarded.end
    assert inner.mime_type == "multipart/alternative"
    assert [c.body for c in inner.children] == [
        b"Step one.\r\nStep two.", b"<ol><li>Step one.</li><li>Step two.</li></ol>"]
    assert [p.mime_type for p in msg.walk()] == [
        "multipart/mixed", "text/plain", "message/rfc822", "multipart/alternative",
        "text/plain", "text/html"]


def test_header_fields_and_folding() -> None:
    data = b"A: 1\r\nB : two\r\n  folded\r\nno colon here\r\n\r\nbody"
    fields, body_start = parse_header(data, 0, len(data))
    assert [(f.name, f.unfolded) for f in fields] == [
        ("A", "1"), ("B", "two  folded"), ("no colon here", "")]
    assert data[fields[1].start : fields[1].end] == b"B : two\r\n  folded\r\n"
    assert data[body_start:] == b"body"


def test_no_blank_line_means_no_body() -> None:
    data = load("no_blank_line.eml")
    msg = parse_message(data)
    assert msg.body_start == msg.end == len(data)
    assert msg.size == 0 and msg.lines == 0
    assert msg.field_values("to") == ["b@example.com"]


def test_body_only_message() -> None:
    msg = parse_message(b"\r\njust a body\r\n")
    assert msg.fields == () and msg.body == b"just a body\r\n" and msg.lines == 1


def test_bare_lf_is_tolerated() -> None:
    data = (b"Content-Type: multipart/mixed; boundary=x\n\n"
            b"--x\nContent-Type: text/html\n\nhi\n--x--\n")
    msg = parse_message(data)
    assert [c.mime_type for c in msg.children] == ["text/html"]
    assert msg.children[0].body == b"hi"


def test_split_multipart_rules() -> None:
    body = (b"preamble\r\n--b\r\nA\r\n--bb\r\n--b  \r\n\r\nB\r\n"
            b"--b--trailing\r\nepilogue\r\n--b\r\nC")
    ranges = split_multipart(body, 0, len(body), b"b")
    assert [body[s:e] for s, e in ranges] == [b"A\r\n--bb", b"\r\nB"]
    # a delimiter must start a line, and the first line of the body counts as one
    body = b"--b\r\nx --b\r\n--b\r\ny"
    assert [body[s:e] for s, e in split_multipart(body, 0, len(body), b"b")] == [
        b"x --b", b"y"]
    # an empty part and a missing close delimiter
    body = b"--b\r\n--b\r\n"
    assert [body[s:e] for s, e in split_multipart(body, 0, len(body), b"b")] == [b"", b""]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/plain", ("text", "plain", ())),
        ('text/plain ; charset = "utf-8" (c)', ("text", "plain", (("charset", "utf-8"),))),
        ("text/plain; charset=", ("text", "plain", (("charset", ""),))),
        ('multipart/related; type=text/html; start="<a@b>"',
         ("multipart", "related", (("type", "text/html"), ("start", "<a@b>")))),
        ("text/plain;;; junk; x=y", ("text", "plain", (("x", "y"),))),
        ("text", None),
        ("/plain", None),
        ('"text"/plain', None),
        ("", None),
    ],
)
def test_parse_content_type(value: str, expected: object) -> None:
    assert parse_content_type(value) == expected


def test_parse_disposition() -> None:
    assert parse_disposition('inline; filename="a; b.txt"') == (
        "inline", (("filename", "a; b.txt"),))
    assert parse_disposition("; filename=x") is None


def test_rfc2231_merge() -> None:
    # RFC 2231 §3 and §4.1 examples
    assert merge_rfc2231((("URL*0", "ftp://"), ("URL*1", "cs.utk.edu/pub/moore/bulk-mailer"))) \
        == (("URL", "ftp://cs.utk.edu/pub/moore/bulk-mailer"),)
    assert merge_rfc2231((("title*1*", "b"), ("x", "1"), ("title*0*", "us-ascii'en'a"))) == (
        ("title*", "us-ascii'en'ab"), ("x", "1"))
    assert merge_rfc2231((("title*", "us-ascii'en-us'This%20is"),)) == (
        ("title*", "us-ascii'en-us'This%20is"),)


def test_mime_fields() -> None:
    msg = parse_message(load("mixed_attachments.eml"))
    pdf, png = msg.children[1:]
    assert pdf.disposition == ("attachment", (("filename", "report.pdf"), ("size", "24")))
    assert pdf.description == "The report" and pdf.md5 == "Q2hlY2sgSW50ZWdyaXR5IQ=="
    assert png.content_id == "<logo@example.com>"
    assert png.language == ("en", "de") and png.location == "http://example.com/logo.png"
    assert msg.language == ("en",)


def nested(depth: int) -> bytes:
    """`depth` multiparts, each inside the previous one, around one text part."""
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth))
    tail = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth)))
    return head + b"Content-Type: text/plain\r\n\r\nleaf" + tail


def depth_of(data: bytes) -> tuple[int, str]:
    part = parse_message(data)
    depth = 0
    while part.children:
        part = part.children[0]
        depth += 1
    return depth, part.mime_type


def test_nesting_at_the_limit_and_one_past() -> None:
    assert depth_of(nested(MAX_DEPTH)) == (MAX_DEPTH, "text/plain")
    # one past: the innermost multipart becomes an opaque leaf
    assert depth_of(nested(MAX_DEPTH + 1)) == (MAX_DEPTH, "application/octet-stream")


def test_deeply_nested_rfc822_is_bounded() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\n" * (MAX_DEPTH * 3) + b"x"
    parts = parse_message(data).walk()
    assert len(parts) == MAX_DEPTH + 1
    assert parts[-1].mime_type == "application/octet-stream"


def test_part_count_limit() -> None:
    data = b"Content-Type: multipart/mixed; boundary=z\r\n\r\n" + b"--z\r\n\r\nx\r\n" * (
        MAX_PARTS + 10) + b"--z--\r\n"
    msg = parse_message(data)
    assert len(msg.walk()) == MAX_PARTS
    assert len(msg.children) == MAX_PARTS - 1


def test_large_attachment_is_not_copied_into_the_tree() -> None:
    blob = b"QUJD" * (1024 * 1024)  # 4 MiB of base64
    data = (b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + blob + b"\r\n--q--\r\n")
    msg = parse_message(data)
    (part,) = msg.children
    assert part.data is data  # offsets into the one buffer
    assert part.size == len(blob)
    assert part.body_view().obj is data
