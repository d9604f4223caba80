"""Sequence sets (RFC 3501 §9, §6.4.8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.proto.imap.sequence import MAX_NUMBER, SequenceError, SequenceSet, compress


def test_rfc3501_example() -> None:
    # RFC 3501 §9 sequence-set example: 2,4:7,9,12:* in a mailbox of 15 messages.
    s = SequenceSet.parse("2,4:7,9,12:*")
    assert list(s.iterate(15)) == [2, 4, 5, 6, 7, 9, 12, 13, 14, 15]
    assert str(s) == "2,4:7,9,12:*"


def test_ranges_in_any_order() -> None:
    assert list(SequenceSet.parse("5:2").iterate(10)) == [2, 3, 4, 5]
    assert list(SequenceSet.parse("*:4").iterate(6)) == [4, 5, 6]


def test_huge_range_is_cheap() -> None:
    s = SequenceSet.parse(f"1:{MAX_NUMBER}")
    assert s.contains(4_000_000_000, MAX_NUMBER)
    assert s.count(MAX_NUMBER) == MAX_NUMBER
    assert s.select_uids([3, 90, 4_000_000]) == [3, 90, 4_000_000]
    assert list(s.iterate(3)) == [1, 2, 3]


def test_uid_star_semantics() -> None:
    # RFC 3501 §6.4.8: "n:*" names the largest UID in use even if n is larger.
    assert SequenceSet.parse("500:*").select_uids([10, 20, 30]) == [30]
    assert SequenceSet.parse("*").select_uids([10, 20, 30]) == [30]
    assert SequenceSet.parse("15:25").select_uids([10, 20, 30]) == [20]
    assert SequenceSet.parse("1:*").select_uids([]) == []  # empty mailbox
    assert SequenceSet.parse("*").intervals(0) == []


def test_contains_and_bounds() -> None:
    s = SequenceSet.parse("3,7:*")
    assert s.contains(3, 10) and s.contains(10, 10) and not s.contains(11, 10)
    assert not s.contains(0, 10) and not s.contains(4, 10)
    assert s.highest_explicit == 7 and s.uses_star


@pytest.mark.parametrize("bad", ["", "0", "1:0", "01", "1,,2", ":", "1:", "a", "4294967296",
                                 "1:2:3", "*:*:*", ",1", "99999999999"])
def test_invalid(bad: str) -> None:
    with pytest.raises(SequenceError):
        SequenceSet.parse(bad)


def test_compress() -> None:
    assert compress([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert compress([]) == ""
    assert str(SequenceSet.of(4, 9)) == "4,9"


_end = st.one_of(st.none(), st.integers(1, 60))
_range = st.tuples(_end, _end)


@given(st.lists(_range, min_size=1, max_size=6), st.integers(0, 70))
def test_matches_naive_expansion(ranges: list[tuple[int | None, int | None]], largest: int) -> None:
    s = SequenceSet(tuple(ranges))
    naive: set[int] = set()
    for a, b in ranges:
        lo, hi = sorted((largest if a is None else a, largest if b is None else b))
        naive.update(n for n in range(lo, hi + 1) if 1 <= n <= largest)
    assert list(s.iterate(largest)) == sorted(naive)
    assert all(s.contains(n, largest) == (n in naive) for n in range(0, largest + 3))
    assert SequenceSet.parse(str(s)) == s
    uids = sorted({(n * 7) % 97 + 1 for n in range(largest)})
    if uids:
        expected = [u for u in uids if s.contains(u, uids[-1])]
        assert s.select_uids(uids) == expected


@given(st.text(alphabet="0123456789:,*", max_size=20))
def test_parse_is_total(text: str) -> None:
    try:
        s = SequenceSet.parse(text)
    except SequenceError:
        return
    assert SequenceSet.parse(str(s)) == s
