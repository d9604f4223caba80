"""SEARCH criteria (RFC 3501 §6.4.4): the key tree and its parser.

    charset, key = parse_search(cursor)           # grammar.py calls this for SEARCH

searchprogram.py evaluates the tree. The parser bounds what one SEARCH may ask: at most
MAX_SEARCH_KEYS keys (more: NO [LIMIT]) nested at most MAX_SEARCH_DEPTH deep (deeper: BAD).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TypeAlias

from mailkeep.proto.imap.lexer import ATOM_CHARS, DIGITS, Cursor, ParseError
from mailkeep.proto.imap.sequence import SEQUENCE_CHARS, SequenceError, SequenceSet

# RFC 3501 §6.4.4: US-ASCII MUST be supported; we also take UTF-8 (RFC 3501 §6.4.4 lets
# servers add charsets). Others get NO [BADCHARSET (...)].
CHARSETS = ("UTF-8", "US-ASCII")
# Our choice: NOT/OR/parentheses nest at most this deep, which bounds recursion (a real
# client nests a handful of levels; Thunderbird's quick filter uses about four).
MAX_SEARCH_DEPTH = 64
# Our choice: at most this many search keys (every search-key of the RFC 3501 §9 grammar,
# NOT, OR and parenthesized lists included) in one SEARCH. Real clients send a handful to a
# few dozen (Thunderbird's quick filter about ten; a generated "OR FROM a OR FROM b ..." over
# a few hundred senders stays below this); the 64 KB command line alone would admit about
# 16,000. Over the limit: NO [LIMIT] (RFC 5530 §3), the session goes on.
MAX_SEARCH_KEYS = 1000
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

SEEN, ANSWERED, FLAGGED = "\\Seen", "\\Answered", "\\Flagged"
DELETED, DRAFT, RECENT = "\\Deleted", "\\Draft", "\\Recent"
SYSTEM_FLAGS = {f.upper(): f for f in (SEEN, ANSWERED, FLAGGED, DELETED, DRAFT, RECENT)}


@dataclass(frozen=True, slots=True)
class All:
    pass


@dataclass(frozen=True, slots=True)
class Flag:
    """ANSWERED, DELETED, DRAFT, FLAGGED, RECENT, SEEN, KEYWORD (present=True) and their
    UN- forms (present=False). NEW is (RECENT UNSEEN), OLD is UNRECENT (RFC 3501 §6.4.4)."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class Header:
    """SUBJECT and HEADER: `value` in the named header field."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """BCC, CC, FROM, TO: `value` in the envelope's address field (RFC 3501 §6.4.4), that is
    in the decoded header text or in one of its addresses (display name, mailbox@host)."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Body:
    value: str


@dataclass(frozen=True, slots=True)
class Text:
    """In the header or the body."""

    value: str


@dataclass(frozen=True, slots=True)
class Date:
    """BEFORE/ON/SINCE (INTERNALDATE) and SENTBEFORE/SENTON/SENTSINCE (Date: header)."""

    relation: Literal["BEFORE", "ON", "SINCE"]
    date: dt.date
    sent: bool = False


@dataclass(frozen=True, slots=True)
class Size:
    """LARGER n (larger=True) and SMALLER n, on RFC822.SIZE."""

    larger: bool
    octets: int


@dataclass(frozen=True, slots=True)
class Uid:
    uids: SequenceSet


@dataclass(frozen=True, slots=True)
class Seq:
    numbers: SequenceSet


@dataclass(frozen=True, slots=True)
class Modseq:
    """RFC 7162 §3.1.5 MODSEQ [entry-name entry-type-req] mod-sequence-valzer: messages whose
    mod-sequence is at least `modseq`. Metadata entries are accepted and not told apart
    (one mod-sequence per message here: §3.1.5 lets a server without per-flag ones use it)."""

    modseq: int


@dataclass(frozen=True, slots=True)
class Not:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class Or:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class And:
    keys: tuple[SearchKey, ...]


SearchKey: TypeAlias = (
    "All | Flag | Header | Envelope | Body | Text | Date | Size | Uid | Seq | Modseq | Not | Or"
    " | And")


def leaves(key: SearchKey) -> Iterator[SearchKey]:
    """The keys under NOT, OR and AND (each of those is only a way to combine them)."""
    stack = [key]
    while stack:
        k = stack.pop()
        if isinstance(k, Not):
            stack.append(k.key)
        elif isinstance(k, Or):
            stack += (k.right, k.left)
        elif isinstance(k, And):
            stack += reversed(k.keys)
        else:
            yield k

_FLAG_KEYS = {"ANSWERED": (ANSWERED, True), "DELETED": (DELETED, True),
              "DRAFT": (DRAFT, True), "FLAGGED": (FLAGGED, True), "RECENT": (RECENT, True),
              "SEEN": (SEEN, True), "UNANSWERED": (ANSWERED, False),
              "UNDELETED": (DELETED, False), "UNDRAFT": (DRAFT, False),
              "UNFLAGGED": (FLAGGED, False), "UNSEEN": (SEEN, False),
              "OLD": (RECENT, False)}
_ENVELOPE_KEYS = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "TO": "To"}
_DATE_KEYS: dict[str, tuple[Literal["BEFORE", "ON", "SINCE"], bool]] = {
    "BEFORE": ("BEFORE", False), "ON": ("ON", False), "SINCE": ("SINCE", False),
    "SENTBEFORE": ("BEFORE", True), "SENTON": ("ON", True), "SENTSINCE": ("SINCE", True)}


# -- parsing ----------------------------------------------------------------------------

def search_date(cur: Cursor) -> dt.date:
    """RFC 3501 §9 date = date-text / DQUOTE date-text DQUOTE; date-text = date-day "-"
    date-month "-" date-year, date-day 1*2DIGIT."""
    quoted = cur.peek() == ord('"')
    if quoted:
        cur.pos += 1
    raw = cur.take(ATOM_CHARS)
    if quoted:
        cur.expect(b'"', "a closing quote after the date")
    parts = raw.decode("ascii").split("-")
    if (len(parts) != 3 or not parts[0].isdigit() or not 1 <= len(parts[0]) <= 2
            or parts[1].upper() not in MONTHS or not parts[2].isdigit() or len(parts[2]) != 4):
        raise cur.error("expected a date like 1-Feb-1994")
    try:
        return dt.date(int(parts[2]), MONTHS.index(parts[1].upper()) + 1, int(parts[0]))
    except ValueError:
        raise cur.error("no such date") from None


def parse_search(cur: Cursor) -> tuple[str | None, SearchKey]:
    """After "SEARCH" SP: [CHARSET astring SP] 1*search-key, to the end of the command."""
    charset: str | None = None
    start = cur.pos
    if cur.take(ATOM_CHARS).upper() == b"CHARSET":
        cur.sp()
        charset = cur.astring("charset").upper()
        if charset not in CHARSETS:
            raise ParseError(cur.tag, f"Unsupported charset {charset[:40]}", status="NO",
                             code="BADCHARSET (" + " ".join(CHARSETS) + ")")
        cur.sp()
    else:
        cur.pos = start
    count = _KeyCount(cur)
    keys = [_key(cur, 0, count)]
    while not cur.at_end():
        cur.sp()
        keys.append(_key(cur, 0, count))
    return charset, keys[0] if len(keys) == 1 else And(tuple(keys))


class _KeyCount:
    __slots__ = ("cur", "n")

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.n = 0

    def add(self) -> None:
        self.n += 1
        if self.n > MAX_SEARCH_KEYS:
            # RFC 5530 §3 LIMIT: an implementation limit, not a syntax error.
            raise ParseError(self.cur.tag, f"SEARCH has more than {MAX_SEARCH_KEYS} keys",
                             status="NO", code="LIMIT")


def _text(cur: Cursor) -> str:
    # DEVIATION (RFC 3501 §6.4.4): without CHARSET the strings should be US-ASCII; clients
    # send UTF-8 anyway, so UTF-8 is accepted either way (still refused if invalid).
    return cur.astring("search string")


def _key(cur: Cursor, depth: int, count: _KeyCount) -> SearchKey:
    if depth > MAX_SEARCH_DEPTH:
        raise cur.error("search keys nested too deeply")
    count.add()
    c = cur.peek()
    if c == ord("("):
        cur.pos += 1
        keys = [_key(cur, depth + 1, count)]
        while cur.peek() != ord(")"):
            cur.sp()
            keys.append(_key(cur, depth + 1, count))
        cur.pos += 1
        return keys[0] if len(keys) == 1 else And(tuple(keys))
    if c == ord("*") or ord("0") <= c <= ord("9"):
        return Seq(_sequence_set(cur))
    name = cur.keyword()
    if name == "ALL":
        return All()
    if name == "NEW":
        return And((Flag(RECENT), Flag(SEEN, False)))
    if name in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[name]
        return Flag(flag, present)
    cur.sp()
    if name in ("KEYWORD", "UNKEYWORD"):
        return Flag(cur.atom("a keyword"), name == "KEYWORD")
    if name in _ENVELOPE_KEYS:
        return Envelope(_ENVELOPE_KEYS[name], _text(cur))
    if name == "SUBJECT":
        return Header("Subject", _text(cur))
    if name == "HEADER":
        field = cur.astring("header field name")
        cur.sp()
        return Header(field, _text(cur))
    if name == "BODY":
        return Body(_text(cur))
    if name == "TEXT":
        return Text(_text(cur))
    if name in _DATE_KEYS:
        relation, sent = _DATE_KEYS[name]
        return Date(relation, search_date(cur), sent)
    if name in ("LARGER", "SMALLER"):
        return Size(name == "LARGER", cur.number("a size"))
    if name == "UID":
        return Uid(_sequence_set(cur))
    if name == "MODSEQ":
        return _modseq(cur)
    if name == "NOT":
        return Not(_key(cur, depth + 1, count))
    if name == "OR":
        left = _key(cur, depth + 1, count)
        cur.sp()
        return Or(left, _key(cur, depth + 1, count))
    raise cur.error(f"unknown search key {name[:40]}")


def _sequence_set(cur: Cursor) -> SequenceSet:
    raw = cur.take(SEQUENCE_CHARS)
    try:
        return SequenceSet.parse(raw.decode("ascii"))
    except SequenceError as exc:
        raise cur.error(str(exc)) from None


# RFC 7162 §7 entry-type-req.
_ENTRY_TYPES = frozenset({"PRIV", "SHARED", "ALL"})


def _modseq(cur: Cursor) -> Modseq:
    """After "MODSEQ" SP: [entry-name SP entry-type-req SP] mod-sequence-valzer."""
    if cur.peek() == ord('"'):
        cur.quoted()  # entry-name = entry-flag-name: "/flags/" attr-flag, as a quoted string
        cur.sp()
        if cur.keyword() not in _ENTRY_TYPES:
            raise cur.error("expected priv, shared or all after the MODSEQ entry name")
        cur.sp()
    digits = cur.take(DIGITS)
    if not digits or len(digits) > 19 or int(digits) > 2**63 - 1:
        raise cur.error("expected a mod-sequence after MODSEQ")
    return Modseq(int(digits))
