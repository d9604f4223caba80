"""MessageEncoder: CRLF, byte-stuffing, TOP, streaming in chunks (RFC 1939 §3, §7)."""

from __future__ import annotations

import poplib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.pop3 import MessageEncoder
from mailkeep.proto.pop3.transfer import normalise_crlf


def encode(data: bytes, lines: int | None = None, chunk: int = 65536) -> bytes:
    enc = MessageEncoder(lines)
    out = b"".join(enc.feed(data[i:i + chunk]) for i in range(0, len(data), chunk))
    return out + enc.finish()


def unstuff(wire: bytes) -> bytes:
    """What a client does (poplib._getlongresp): split lines, drop one leading dot."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[:-3]
    lines = body.split(b"\r\n")[:-1] if body else []
    return b"".join((ln[1:] if ln.startswith(b"..") else ln) + b"\r\n" for ln in lines)


def test_dot_stuffing() -> None:
    assert encode(b".a\r\nb\r\n.\r\n..\r\n") == b"..a\r\nb\r\n..\r\n...\r\n.\r\n"


def test_empty_message() -> None:
    assert encode(b"") == b".\r\n"


def test_missing_final_crlf_is_added() -> None:
    assert encode(b"a\r\nb") == b"a\r\nb\r\n.\r\n"


def test_bare_lf_and_lone_final_cr() -> None:
    assert encode(b"a\nb\r\n.c\n") == b"a\r\nb\r\n..c\r\n.\r\n"
    assert encode(b"a\r") == b"a\r\n.\r\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_crlf_split_across_chunks(chunk: int) -> None:
    msg = b"H: v\r\n\r\n.x\r\ny\r\n.\r\n"
    assert encode(msg, chunk=chunk) == encode(msg)


def test_top_header_blank_and_lines() -> None:
    msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n"
    assert encode(msg, 0) == b"A: 1\r\nB: 2\r\n\r\n.\r\n"
    assert encode(msg, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n"
    assert encode(msg, 99) == encode(msg)


def test_top_stops_reading_early() -> None:
    enc = MessageEncoder(1)
    enc.feed(b"A: 1\r\n\r\nl1\r\nl2\r\n")
    assert enc.done


def test_top_of_message_without_body() -> None:
    assert encode(b"A: 1\r\nB: 2", 5) == b"A: 1\r\nB: 2\r\n.\r\n"


_messages = st.lists(st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"a", b"From x",
                                      b"\r\n.\r\n", b" "]), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(_messages, st.integers(1, 17), st.none() | st.integers(0, 5))
def test_chunking_invariance(msg: bytes, chunk: int, lines: int | None) -> None:
    assert encode(msg, lines, chunk) == encode(msg, lines)


@settings(max_examples=300, deadline=None)
@given(_messages, st.integers(1, 17))
def test_round_trip(msg: bytes, chunk: int) -> None:
    """A client un-stuffing the body gets the stored message back (in CRLF form)."""
    wire = encode(msg, None, chunk)
    assert re.search(rb"(?<!\r)\n", wire) is None  # only CRLF on the wire
    expected = normalise_crlf(msg)
    if expected.endswith(b"\r"):
        expected += b"\n"
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(wire) == expected


def test_poplib_agrees() -> None:
    """poplib's own reading of our bytes (via its line reader) gives the lines back."""
    msg = b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend\r\n"
    wire = b"+OK\r\n" + encode(msg)

    class Fake(poplib.POP3):
        def __init__(self, data: bytes) -> None:
            import io  # noqa: PLC0415
            self.file = io.BytesIO(data)
            self._debugging = 0

    _resp, lines, _ = Fake(wire)._getlongresp()
    assert lines == [b"Subject: x", b"", b".hidden", b"..two", b"end"]
