"""IMAP framing: lines, literals, limits and chunking invariance (receiver.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.imap.receiver import (
    MAX_LINE_OCTETS,
    NEED_DATA,
    PAUSED,
    Command,
    EndOfInput,
    Event,
    FramingError,
    FramingFault,
    Line,
    LiteralRequest,
    Receiver,
)


def drain(r: Receiver, *, accept: bool = True) -> list[Event]:
    """All events; literal requests are accepted (or refused) as they come."""
    out: list[Event] = []
    while True:
        ev = r.next_event()
        if ev is NEED_DATA:
            return out
        assert ev is not PAUSED
        out.append(ev)
        if isinstance(ev, LiteralRequest):
            if accept:
                r.accept_literal()
            else:
                r.refuse_literal()


def events(data: bytes, **kw: int | bool) -> list[Event]:
    r = Receiver(**kw)  # type: ignore[arg-type]
    r.feed(data)
    return drain(r)


def test_simple_and_pipelined_commands() -> None:
    assert events(b"a1 NOOP\r\na2 CAPABILITY\r\n") == [
        Command("a1", b"a1 NOOP"), Command("a2", b"a2 CAPABILITY")]


def test_partial_line_waits() -> None:
    r = Receiver()
    r.feed(b"a1 NO")
    assert r.next_event() is NEED_DATA
    assert r.pending_input == 5
    r.feed(b"OP\r\n")
    assert r.next_event() == Command("a1", b"a1 NOOP")


def test_bare_lf_tolerated() -> None:
    assert events(b"a1 NOOP\n") == [Command("a1", b"a1 NOOP")]


def test_synchronizing_literal() -> None:
    r = Receiver()
    r.feed(b"a1 LOGIN {3}\r\n")
    assert r.next_event() == LiteralRequest("a1", 3, b"a1 LOGIN {3}\r\n")
    assert r.next_event() is PAUSED
    r.accept_literal()
    r.feed(b"bob {4}\r\n")
    assert r.next_event() == LiteralRequest("a1", 4, b"a1 LOGIN {3}\r\nbob {4}\r\n")
    r.accept_literal()
    r.feed(b"pa s\r\n")
    assert r.next_event() == Command("a1", b"a1 LOGIN {3}\r\nbob {4}\r\npa s")
    assert r.next_event() is NEED_DATA


def test_refused_literal_ends_the_command() -> None:
    # RFC 3501 §7.5: after NO/BAD instead of "+", the client sends no literal data.
    r = Receiver()
    r.feed(b"a1 APPEND nosuch {30}\r\na2 NOOP\r\n")
    assert isinstance(r.next_event(), LiteralRequest)
    r.refuse_literal()
    assert r.next_event() == Command("a2", b"a2 NOOP")


def test_literal_plus_needs_no_continuation() -> None:
    assert events(b"a1 LOGIN {3+}\r\nbob {2+}\r\npw\r\n") == [
        Command("a1", b"a1 LOGIN {3+}\r\nbob {2+}\r\npw")]


def test_literal_data_may_hold_crlf_and_braces() -> None:
    assert events(b"a1 APPEND x {7+}\r\n{1}\r\n\r\n\r\n") == [
        Command("a1", b"a1 APPEND x {7+}\r\n{1}\r\n\r\n")]


def test_zero_length_literal() -> None:
    assert events(b'a1 LOGIN {0}\r\n "x"\r\n') == [
        LiteralRequest("a1", 0, b"a1 LOGIN {0}\r\n"), Command("a1", b'a1 LOGIN {0}\r\n "x"')]


def test_literal_plus_refused_when_not_advertised() -> None:
    evs = events(b"a1 LOGIN {3+}\r\nbob x\r\na2 NOOP\r\n", literal_plus=False)
    assert evs == [FramingError("a1", FramingFault.LITERAL_PLUS_UNSUPPORTED),
                   Command("a2", b"a2 NOOP")]


def test_line_at_limit_and_one_past() -> None:
    limit = 200
    line = b"a1 NOOP " + b"x" * (limit - 10) + b"\r\n"
    assert len(line) == limit
    assert events(line, max_line=limit) == [Command("a1", line[:-2])]
    long = b"a1 NOOP " + b"x" * (limit - 9) + b"\r\n"
    assert events(long + b"a2 NOOP\r\n", max_line=limit) == [
        FramingError("a1", FramingFault.LINE_TOO_LONG), Command("a2", b"a2 NOOP")]


def test_overlong_line_drained_in_chunks() -> None:
    r = Receiver(max_line=200)
    r.feed(b"tag7 SEARCH " + b"x" * 300)
    assert r.next_event() is NEED_DATA
    assert r.pending_input == 0  # dropped, not buffered
    for _ in range(100):
        r.feed(b"y" * 1000)
        assert r.next_event() is NEED_DATA
    r.feed(b"\r\na2 NOOP\r\n")
    assert drain(r) == [FramingError("tag7", FramingFault.LINE_TOO_LONG),
                        Command("a2", b"a2 NOOP")]


def test_overlong_line_without_tag() -> None:
    assert events(b"x" * 300 + b"\r\n", max_line=200) == [
        FramingError(None, FramingFault.LINE_TOO_LONG)]


def test_overlong_line_ending_in_literal_plus_drains_the_literal() -> None:
    data = b"a1 X " + b"x" * 300 + b" {5+}\r\nhello\r\na2 NOOP\r\n"
    assert events(data, max_line=200) == [FramingError("a1", FramingFault.LINE_TOO_LONG),
                                          Command("a2", b"a2 NOOP")]


def test_text_after_literals_counts_toward_the_limit() -> None:
    part = b"x" * 100
    data = b"a1 X {1+}\r\n1" + part + b" {1+}\r\n2" + part + b"\r\na2 NOOP\r\n"
    assert events(data, max_line=200) == [FramingError("a1", FramingFault.LINE_TOO_LONG),
                                          Command("a2", b"a2 NOOP")]


def test_synchronizing_literal_at_limit_and_one_past() -> None:
    r = Receiver(max_literal=10)
    r.feed(b"a1 APPEND x {10}\r\n")
    assert isinstance(r.next_event(), LiteralRequest)
    r.accept_literal()
    r.feed(b"0123456789\r\na2 APPEND x {11}\r\na3 NOOP\r\n")
    assert drain(r) == [Command("a1", b"a1 APPEND x {10}\r\n0123456789"),
                        FramingError("a2", FramingFault.LITERAL_TOO_LARGE),
                        Command("a3", b"a3 NOOP")]
    assert FramingError("a2", FramingFault.LITERAL_TOO_LARGE).code == "TOOBIG"


def test_oversized_literal_plus_is_fatal() -> None:
    r = Receiver(max_literal=10)
    r.feed(b"a1 APPEND x {11+}\r\n01234567890\r\na2 NOOP\r\n")
    assert drain(r) == [FramingError("a1", FramingFault.LITERAL_TOO_LARGE, fatal=True)]
    r.feed(b"a3 NOOP\r\n")
    assert r.next_event() is NEED_DATA


def test_literal_total_is_bounded() -> None:
    evs = events(b"a1 X {6+}\r\n123456 {6+}\r\n123456\r\na2 NOOP\r\n", max_literal=10)
    assert evs == [FramingError("a1", FramingFault.LITERAL_TOO_LARGE), Command("a2", b"a2 NOOP")]


def test_literal_count_at_limit_and_one_past() -> None:
    ok = b"a1 X" + b" {1+}\r\nx" * 3 + b"\r\n"
    assert events(ok, max_literals=3) == [Command("a1", ok[:-2])]
    bad = b"a1 X" + b" {1+}\r\nx" * 4 + b"\r\na2 NOOP\r\n"
    assert events(bad, max_literals=3) == [FramingError("a1", FramingFault.TOO_MANY_LITERALS),
                                           Command("a2", b"a2 NOOP")]
    sync = b"a1 X" + b" {1+}\r\nx" * 3 + b" {1}\r\na2 NOOP\r\n"
    assert events(sync, max_literals=3) == [FramingError("a1", FramingFault.TOO_MANY_LITERALS),
                                            Command("a2", b"a2 NOOP")]


def test_raw_line_for_authenticate() -> None:
    r = Receiver()
    r.feed(b"a1 AUTHENTICATE PLAIN\r\n")
    assert r.next_event() == Command("a1", b"a1 AUTHENTICATE PLAIN")
    r.expect_line()
    r.feed(b"AGJvYgBwdw==\r\na2 NOOP {3}\r\n")
    assert r.next_event() == Line(b"AGJvYgBwdw==")
    assert isinstance(r.next_event(), LiteralRequest)  # back to commands


def test_overlong_raw_line() -> None:
    r = Receiver(max_line=200)
    r.expect_line()
    r.feed(b"A" * 500 + b"\r\na2 NOOP\r\n")
    assert drain(r) == [FramingError(None, FramingFault.LINE_TOO_LONG), Command("a2", b"a2 NOOP")]


def test_machine_bugs_are_loud() -> None:
    r = Receiver()
    with pytest.raises(RuntimeError):
        r.accept_literal()
    r.feed(b"a1 X {3}\r\n")
    r.next_event()
    with pytest.raises(RuntimeError):
        r.expect_line()


def test_end_of_input() -> None:
    r = Receiver()
    r.feed(b"a1 NOOP\r\na2 NO")
    r.feed(b"")
    assert drain(r) == [Command("a1", b"a1 NOOP"), EndOfInput(incomplete=True)]
    r2 = Receiver()
    r2.feed(b"")
    assert drain(r2) == [EndOfInput(incomplete=False)]


def test_default_limits() -> None:
    assert MAX_LINE_OCTETS >= 8192  # RFC 7162 §4


# -- chunking invariance ------------------------------------------------------------------

_word = st.sampled_from([b"a1", b"tag", b"NOOP", b"x" * 90, b'"q"', b"(", b")", b"*", b"+",
                         b"\r", b"\xff", b"]"])


@st.composite
def _command(draw: st.DrawFn) -> bytes:
    out = b" ".join(draw(st.lists(_word, min_size=1, max_size=4)))
    for _ in range(draw(st.integers(0, 3))):
        n = draw(st.integers(0, 70))
        plus = draw(st.booleans())
        out += b" {%d%s}\r\n" % (n, b"+" if plus else b"") + draw(st.binary(min_size=n,
                                                                              max_size=n))
        out += b" ".join(draw(st.lists(_word, max_size=2)))
    return out + draw(st.sampled_from([b"\r\n", b"\n"]))


_stream = st.one_of(st.lists(_command(), max_size=6).map(b"".join), st.binary(max_size=600))


def _run(chunks: list[bytes], eof: bool) -> list[Event]:
    r = Receiver(max_line=160, max_literal=50, max_literals=2)
    out: list[Event] = []
    for chunk in chunks:
        if not chunk:
            continue  # b"" would mean end of input
        r.feed(chunk)
        out += drain(r)
    if eof:
        r.feed(b"")
        out += drain(r)
    return out


@settings(max_examples=300)
@given(_stream, st.lists(st.integers(0, 600), max_size=8), st.booleans())
def test_chunking_invariance(data: bytes, cuts: list[int], eof: bool) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _run(chunks, eof) == _run([data], eof)
    assert _run([data[i:i + 1] for i in range(len(data))], eof) == _run([data], eof)
