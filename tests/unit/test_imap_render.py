"""Responses and the value tree as bytes (render.py), and the render/parse round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.proto.imap import render as r
from mailkeep.proto.imap.lexer import Cursor
from mailkeep.proto.imap.values import Atom, Value


@pytest.mark.parametrize(("value", "wire"), [
    (None, b"NIL"), (0, b"0"), (4294967295, b"4294967295"), (Atom("\\Seen"), b"\\Seen"),
    ("", b'""'), ("INBOX", b'"INBOX"'), ('a "b" \\c', b'"a \\"b\\" \\\\c"'),
    ("line\r\nbreak", b"{11}\r\nline\r\nbreak"), ("caf\u00e9", b"{5}\r\ncaf\xc3\xa9"),
    (b"", b"{0}\r\n"), (b"abc", b"{3}\r\nabc"),
    ([], b"()"), ([None, 1, "x", [Atom("A"), b"y"]], b'(NIL 1 "x" (A {1}\r\ny))'),
    (("a", None), b'("a" NIL)'),
    ("x" * 1024, b'"' + b"x" * 1024 + b'"'), ("x" * 1025, b"{1025}\r\n" + b"x" * 1025),
    ("nul\0", b'{6}\r\nnul\xef\xbf\xbd'),
])
def test_render_values(value: Value, wire: bytes) -> None:
    assert r.render(value) == wire


@pytest.mark.parametrize("bad", [True, -1, Atom(""), Atom("a b"), Atom("x\r\n"), 1.5])
def test_render_refuses_non_values(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        r.render(bad)  # type: ignore[arg-type]


def test_responses() -> None:
    assert r.tagged("a1", "OK", "SELECT completed", code="READ-WRITE") == \
        b"a1 OK [READ-WRITE] SELECT completed\r\n"
    assert r.tagged("a1", "NO", "bad\r\nname \u00e9") == b"a1 NO bad??name ?\r\n"
    assert r.untagged_status("OK", "Ready", r.response_code("UIDVALIDITY", 3857529045)) == \
        b"* OK [UIDVALIDITY 3857529045] Ready\r\n"
    assert r.untagged_status("BYE", "Logging out") == b"* BYE Logging out\r\n"
    assert r.untagged("5 EXISTS") == b"* 5 EXISTS\r\n"
    assert r.untagged("CAPABILITY", Atom("IMAP4rev1"), Atom("LITERAL+")) == \
        b"* CAPABILITY IMAP4rev1 LITERAL+\r\n"
    assert r.untagged("LIST", [Atom("\\Noselect")], ".", "Entw&APw-rfe") == \
        b'* LIST (\\Noselect) "." "Entw&APw-rfe"\r\n'
    assert r.response_code("PERMANENTFLAGS", [Atom("\\Seen"), Atom("\\*")]) == \
        "PERMANENTFLAGS (\\Seen \\*)"
    assert r.response_code("BADCHARSET", ["UTF-8"]) == 'BADCHARSET ("UTF-8")'
    assert r.continuation() == b"+ Ready\r\n"
    assert r.continuation_data(b"") == b"+ \r\n"
    assert r.continuation_data(b"Password:") == b"+ UGFzc3dvcmQ6\r\n"
    with pytest.raises(ValueError):
        r.tagged("a1", "BYE", "x")
    with pytest.raises(ValueError):
        r.response_code("X", b"literal")


def test_fetch_response() -> None:
    out = r.fetch_response(12, [("FLAGS", [Atom("\\Seen")]), (Atom("UID"), 4),
                                ("BODY[HEADER.FIELDS (FROM)]<0>", b"From: a\r\n\r\n"),
                                ("INTERNALDATE", "17-Jul-1996 02:44:25 -0700")])
    assert out == (b"* 12 FETCH (FLAGS (\\Seen) UID 4 BODY[HEADER.FIELDS (FROM)]<0> "
                   b'{11}\r\nFrom: a\r\n\r\n INTERNALDATE "17-Jul-1996 02:44:25 -0700")\r\n')


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))


@given(_TEXT)
def test_string_round_trip(text: str) -> None:
    wire = r.render(text)
    cur = Cursor(wire)
    assert cur.text(cur.astring_bytes(), "value") == text
    assert cur.at_end()
    if any(ord(c) > 0x7F for c in text):
        assert wire.startswith(b"{")  # the 8-bit rule


@given(st.binary().filter(lambda b: 0 not in b))
def test_bytes_round_trip(data: bytes) -> None:
    cur = Cursor(r.render(data))
    assert cur.string() == data and cur.at_end()


_values: st.SearchStrategy[Value] = st.recursive(
    st.one_of(st.none(), st.integers(0, 2**32 - 1), _TEXT, st.binary(max_size=20),
              st.sampled_from([Atom("\\Seen"), Atom("BODY[]")])),
    lambda inner: st.lists(inner, max_size=4), max_leaves=20)


@given(_values)
def test_nested_values_render(value: Value) -> None:
    wire = r.render(value)
    assert wire.count(b"(") >= 0 and isinstance(wire, bytes)
