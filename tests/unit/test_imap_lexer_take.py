"""Cursor.take() scans with a compiled character class (lexer._scanner): the same answer as
the plain loop over the octets it replaced, for every octet and every set the grammar uses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailkeep.proto.imap import lexer
from mailkeep.proto.imap.lexer import Cursor

SETS = [lexer.ATOM_CHARS, lexer.ASTRING_CHARS, lexer.LIST_CHARS, lexer.QUOTED_CHARS,
        lexer.DIGITS, frozenset(b"]-^\\"), frozenset()]


def by_loop(data: bytes, pos: int, chars: frozenset[int]) -> bytes:
    end = pos
    while end < len(data) and data[end] in chars:
        end += 1
    return data[pos:end]


@given(data=st.binary(max_size=40), start=st.integers(0, 45),
       which=st.integers(0, len(SETS) - 1))
def test_take_matches_the_octet_loop(data: bytes, start: int, which: int) -> None:
    chars = SETS[which]
    cur = Cursor(data)
    cur.pos = min(start, len(data))
    expected = by_loop(data, cur.pos, chars)
    before = cur.pos
    assert cur.take(chars) == expected
    assert cur.pos == before + len(expected)


@given(chars=st.frozensets(st.integers(0, 255), max_size=40), data=st.binary(max_size=30))
def test_take_with_any_set(chars: frozenset[int], data: bytes) -> None:
    assert Cursor(data).take(chars) == by_loop(data, 0, chars)
