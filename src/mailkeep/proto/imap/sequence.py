"""Sequence sets (RFC 3501 §9 sequence-set) for message sequence numbers and UIDs.

    s = SequenceSet.parse("2,4:7,9,12:*")
    s.contains(5, largest=20)      # True, no expansion
    list(s.iterate(largest=20))    # [2, 4, 5, 6, 7, 9, 12, ..., 20]
    s.select_uids(uids)            # the UIDs in use that the set names (bisect, no expansion)

"*" stands for `largest`: the number of messages (sequence numbers) or the largest UID in
use. RFC 3501 §9 seq-range: "2:4" and "4:2" are the same range. RFC 3501 §6.4.8: "n:*"
always names the largest UID in use, even if n is larger. Nothing here materializes a
range: "1:4294967295" costs the same as "1".
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# RFC 3501 §4.2 / §9 nz-number: 1 .. 4294967295 (32-bit unsigned).
MAX_NUMBER = 4_294_967_295
# RFC 3501 §9 sequence-set: digits, ":", ",", "*".
SEQUENCE_CHARS = frozenset(b"0123456789:,*")

STAR = None
"""The "*" end of a range."""


class SequenceError(ValueError):
    """Not an RFC 3501 sequence-set: the client's syntax error."""


def _number(text: str) -> int | None:
    if text == "*":
        return STAR
    # RFC 3501 §9: nz-number = digit-nz *DIGIT (no leading zeros, no zero).
    if not text or not text.isascii() or not text.isdigit() or text[0] == "0":
        raise SequenceError(f"bad sequence number {text!r}")
    if len(text) > 10 or int(text) > MAX_NUMBER:
        raise SequenceError(f"sequence number {text} is above {MAX_NUMBER}")
    return int(text)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges as written: (first, last) with None for "*"; single numbers are (n, n)."""

    ranges: tuple[tuple[int | None, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        if not text:
            raise SequenceError("empty sequence set")
        ranges: list[tuple[int | None, int | None]] = []
        for item in text.split(","):
            first, colon, last = item.partition(":")
            a = _number(first)
            b = _number(last) if colon else a
            ranges.append((a, b))
        return cls(tuple(ranges))

    @classmethod
    def of(cls, *numbers: int) -> SequenceSet:
        """A set naming exactly these numbers (e.g. for COPYUID / SEARCH round trips)."""
        if not numbers:
            raise SequenceError("empty sequence set")
        return cls(tuple((n, n) for n in numbers))

    def __str__(self) -> str:
        def one(n: int | None) -> str:
            return "*" if n is None else str(n)
        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)

    @property
    def uses_star(self) -> bool:
        return any(a is None or b is None for a, b in self.ranges)

    @property
    def highest_explicit(self) -> int:
        """The largest number written out (0 if only "*"): sequence numbers above the
        mailbox size are the client's error (RFC 3501 §9 seq-number)."""
        return max((n for r in self.ranges for n in r if n is not None), default=0)

    def intervals(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, disjoint, inclusive intervals with "*" as `largest`, clipped to
        1..largest. `largest` 0 (empty mailbox) gives []."""
        spans: list[tuple[int, int]] = []
        for a, b in self.ranges:
            lo_hi = sorted((largest if a is None else a, largest if b is None else b))
            lo, hi = max(lo_hi[0], 1), min(lo_hi[1], largest)
            if lo <= hi:
                spans.append((lo, hi))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        """Whether the set names `n` when "*" is `largest` (no expansion)."""
        if not 1 <= n <= largest:
            return False
        for a, b in self.ranges:
            lo, hi = sorted((largest if a is None else a, largest if b is None else b))
            if lo <= n <= hi:
                return True
        return False

    def iterate(self, largest: int) -> Iterator[int]:
        """Ascending, without duplicates, never beyond `largest`."""
        for lo, hi in self.intervals(largest):
            yield from range(lo, hi + 1)

    def count(self, largest: int) -> int:
        return sum(hi - lo + 1 for lo, hi in self.intervals(largest))

    def select_uids(self, uids: Sequence[int]) -> list[int]:
        """The UIDs in use (ascending `uids`) that this UID set names. "*" is the largest
        UID in use (RFC 3501 §6.4.8); with no messages the result is empty."""
        if not uids:
            return []
        out: list[int] = []
        for lo, hi in self.intervals(uids[-1]):
            out.extend(uids[bisect.bisect_left(uids, lo):bisect.bisect_right(uids, hi)])
        return out


def compress(numbers: Sequence[int]) -> str:
    """Ascending numbers as a compact set ("1:3,7"): for SEARCH-like responses and codes."""
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts)


def uid_set(uids: Sequence[int]) -> str:
    """A uid-set for COPYUID: ranges only where the numbers ascend (the two sets of RFC 4315
    §3 must correspond element by element)."""
    if all(a < b for a, b in itertools.pairwise(uids)):
        return compress(uids)
    return ",".join(str(u) for u in uids)
