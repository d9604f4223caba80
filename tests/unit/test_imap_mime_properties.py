"""Hypothesis properties for the MIME layer: any bytes give a structure, never an exception,
and every offset stays inside the message."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.proto.imap.bodystructure import body, bodystructure
from mailkeep.proto.imap.envelope import envelope
from mailkeep.proto.imap.mime import MimePart, parse_message
from mailkeep.proto.imap.sections import (
    HEADER,
    HEADER_FIELDS,
    HEADER_FIELDS_NOT,
    MIME,
    TEXT,
    Section,
    section_bytes,
)
from mailkeep.proto.imap.textsearch import body_contains, header_contains, text_contains
from mailkeep.proto.imap.values import Atom, Value

# Pieces that steer random messages into the interesting paths.
FRAGMENTS = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b": ", b" ", b"\t", b";", b"=", b'"', b"(", b")",
    b"<", b">", b"@", b",", b":", b"--", b"--b", b"--b--", b"--c", b"=?utf-8?q?", b"?=",
    b"=?x?b?", b"\xc3\xa9", b"\xff", b"\x00",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/alternative; boundary=\"c\"\r\n",
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset*0*=utf-8''%C3; charset*1*=%A9\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*=utf-8''a%20b\r\n",
    b"Content-Language: en, de\r\n", b"Content-Location: x\r\n", b"Content-MD5: y\r\n",
    b"From: A <a@b>, G: x@y;\r\n", b"To: \"q\\\"\" <@r:a@b>\r\n", b"Subject: =?utf-8?b?w6k=?=\r\n",
]

messages = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)), max_size=40
).map(b"".join)


def well_formed(value: Value) -> bool:
    if value is None or isinstance(value, (int, str, bytes, Atom)):
        return True
    return isinstance(value, (list, tuple)) and all(well_formed(v) for v in value)


def check_offsets(root: MimePart) -> None:
    n = len(root.data)
    for part in root.walk():
        assert 0 <= part.start <= part.body_start <= part.end <= n
        assert part.size >= 0 and part.lines >= 0
        for child in part.children:
            assert part.body_start <= child.start and child.end <= part.end
        if part.message is not None:
            assert part.message.start == part.body_start and part.message.end == part.end


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_structured_garbage_always_parses(data: bytes) -> None:
    msg = parse_message(data)
    check_offsets(msg)
    assert msg.start == 0 and msg.end == len(data)
    assert well_formed(bodystructure(msg))
    assert well_formed(body(msg))
    env = envelope(msg)
    assert well_formed(env) and isinstance(env, list) and len(env) == 10
    for section in (Section(), Section(text=HEADER), Section(text=TEXT), Section((1,)),
                    Section((1,), MIME), Section((1, 1)), Section((2, 1), HEADER),
                    Section(text=HEADER_FIELDS, fields=("from", "subject")),
                    Section((1,), HEADER_FIELDS_NOT, ("content-type",))):
        out = section_bytes(msg, section, (1, 5))
        assert out is None or len(out) <= 5
    assert section_bytes(msg, Section()) == data
    header_contains(msg, "subject", "é")
    body_contains(msg, "x")
    text_contains(msg, "")


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_parse(data: bytes) -> None:
    msg = parse_message(data)
    check_offsets(msg)
    assert well_formed(bodystructure(msg))
    assert well_formed(envelope(msg))
    body_contains(msg, "a")


@settings(max_examples=100)
@given(st.lists(st.sampled_from(["text/plain", "text/html", "image/png", "message/rfc822"]),
                min_size=1, max_size=6),
       st.text(alphabet="abc \r\n", max_size=30))
def test_generated_multipart_round_trips_bodies(types: list[str], text: str) -> None:
    # The bodies we put in are the bodies we get out, byte for byte.
    content = text.replace("\r", "").replace("\n", "\r\n").replace("--", "")
    parts = [b"Content-Type: " + t.encode() + b"\r\n\r\n" + content.encode() for t in types]
    data = (b"Content-Type: multipart/mixed; boundary=\"=_B\"\r\n\r\n--=_B\r\n"
            + b"\r\n--=_B\r\n".join(parts) + b"\r\n--=_B--\r\n")
    msg = parse_message(data)
    assert [c.body for c in msg.children] == [content.encode()] * len(types)
    for i in range(len(types)):
        assert section_bytes(msg, Section((i + 1,))) == content.encode()
