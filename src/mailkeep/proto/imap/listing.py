"""LIST and LSUB name matching (RFC 3501 §6.3.8, §6.3.9) with "." as hierarchy delimiter.

"*" matches anything, "%" anything but the delimiter. The reference is joined to the
pattern as RFC 3501 §6.3.8 describes (reference "" or ending in "."); Maildir++ names are
all relative to the account root, so the joined name is matched against folder names.
"INBOX" matches case-insensitively (RFC 3501 §5.1).
"""

from __future__ import annotations

DELIMITER = "."


def canonical_pattern(reference: str, pattern: str) -> str:
    if not reference:
        return pattern
    if pattern.startswith(DELIMITER) and reference.endswith(DELIMITER):
        return reference + pattern[1:]
    return reference + pattern


class ListPattern:
    """A LIST pattern matched without backtracking: a bit-parallel simulation of its NFA
    (one bit per pattern token, a few integer operations per character of the name), so the
    time is linear in the name's length whatever the pattern. A regex (".*a.*a.*a...b") takes
    exponential time on a folder called "aaaa...": 21 s for ten stars and a 40-letter name,
    with the event loop held, and any user may create such a folder."""

    __slots__ = ("_accept", "_literals", "_masks", "_percent", "_star", "_wild")

    def __init__(self, pattern: str) -> None:
        tokens: list[str] = []
        for ch in pattern:
            if ch in "*%" and tokens and tokens[-1] in ("*", "%"):
                # "**" and "*%" and "%*" are "*", "%%" is "%": adjacent wildcards merge, so
                # one step of epsilon closure below suffices.
                tokens[-1] = "*" if "*" in (ch, tokens[-1]) else "%"
                continue
            tokens.append(ch)
        self._star = sum(1 << i for i, t in enumerate(tokens) if t == "*")
        self._percent = sum(1 << i for i, t in enumerate(tokens) if t == "%")
        self._wild = self._star | self._percent
        self._accept = 1 << len(tokens)
        self._literals = [(i, t) for i, t in enumerate(tokens) if t not in ("*", "%")]
        self._masks: dict[tuple[str, bool], int] = {}

    def _mask(self, ch: str, fold: bool) -> int:
        """The literal tokens that `ch` matches (case-insensitively if `fold`)."""
        key = (ch, fold)
        mask = self._masks.get(key)
        if mask is None:
            if fold:
                mask = sum(1 << i for i, t in self._literals if t.upper() == ch.upper())
            else:
                mask = sum(1 << i for i, t in self._literals if t == ch)
            if len(self._masks) < 4096:  # names draw on few characters; bound it anyway
                self._masks[key] = mask
        return mask

    def _close(self, active: int) -> int:
        # a wildcard may match nothing: from it, the next token is reachable at once
        return active | ((active & self._wild) << 1)

    def fullmatch(self, name: str, *, fold: bool = False) -> bool:
        if len(self._literals) > len(name):
            return False  # every literal consumes one character
        active = self._close(1)
        for ch in name:
            active = ((active & self._mask(ch, fold)) << 1) | (active & self._star) \
                | (0 if ch == DELIMITER else active & self._percent)
            active = self._close(active)
            if not active:
                return False
        return bool(active & self._accept)


def compile_pattern(pattern: str) -> ListPattern:
    return ListPattern(pattern)


def matches(pattern: ListPattern, name: str) -> bool:
    if pattern.fullmatch(name):
        return True
    # RFC 3501 §5.1: INBOX is case-insensitive ("list "" inbox" finds it).
    return name == "INBOX" and pattern.fullmatch(name, fold=True)
