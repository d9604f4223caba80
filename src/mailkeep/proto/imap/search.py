"""SEARCH criteria (RFC 3501 §6.4.4): the key tree, its parser, and a pure evaluator.

    charset, key = parse_search(cursor)           # grammar.py calls this for SEARCH
    hits = [m.seq for m in views if matches(key, m, messages=n, largest_uid=u)]

The evaluator needs only a MessageView: flags, sizes and dates come from the index; header
and body text are asked for lazily, and needs_headers()/needs_body() tell the server in
advance whether a search must open message files at all.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Sequence, Set
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from mailkeep.proto.imap.lexer import ATOM_CHARS, Cursor, ParseError
from mailkeep.proto.imap.sequence import SEQUENCE_CHARS, SequenceError, SequenceSet

# RFC 3501 §6.4.4: US-ASCII MUST be supported; we also take UTF-8 (RFC 3501 §6.4.4 lets
# servers add charsets). Others get NO [BADCHARSET (...)].
CHARSETS = ("UTF-8", "US-ASCII")
# Our choice: NOT/OR/parentheses nest at most this deep, which bounds recursion (a real
# client nests a handful of levels; Thunderbird's quick filter uses about four).
MAX_SEARCH_DEPTH = 64
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
    """BCC, CC, FROM, SUBJECT, TO and HEADER: `value` in the named header field."""

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
    "All | Flag | Header | Body | Text | Date | Size | Uid | Seq | Not | Or | And")

_FLAG_KEYS = {"ANSWERED": (ANSWERED, True), "DELETED": (DELETED, True),
              "DRAFT": (DRAFT, True), "FLAGGED": (FLAGGED, True), "RECENT": (RECENT, True),
              "SEEN": (SEEN, True), "UNANSWERED": (ANSWERED, False),
              "UNDELETED": (DELETED, False), "UNDRAFT": (DRAFT, False),
              "UNFLAGGED": (FLAGGED, False), "UNSEEN": (SEEN, False),
              "OLD": (RECENT, False)}
_HEADER_KEYS = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}
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
    keys = [_key(cur, 0)]
    while not cur.at_end():
        cur.sp()
        keys.append(_key(cur, 0))
    return charset, keys[0] if len(keys) == 1 else And(tuple(keys))


def _text(cur: Cursor) -> str:
    # DEVIATION (RFC 3501 §6.4.4): without CHARSET the strings should be US-ASCII; clients
    # send UTF-8 anyway, so UTF-8 is accepted either way (still refused if invalid).
    return cur.astring("search string")


def _key(cur: Cursor, depth: int) -> SearchKey:
    if depth > MAX_SEARCH_DEPTH:
        raise cur.error("search keys nested too deeply")
    c = cur.peek()
    if c == ord("("):
        cur.pos += 1
        keys = [_key(cur, depth + 1)]
        while cur.peek() != ord(")"):
            cur.sp()
            keys.append(_key(cur, depth + 1))
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
    if name in _HEADER_KEYS:
        return Header(_HEADER_KEYS[name], _text(cur))
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
    if name == "NOT":
        return Not(_key(cur, depth + 1))
    if name == "OR":
        left = _key(cur, depth + 1)
        cur.sp()
        return Or(left, _key(cur, depth + 1))
    raise cur.error(f"unknown search key {name[:40]}")


def _sequence_set(cur: Cursor) -> SequenceSet:
    raw = cur.take(SEQUENCE_CHARS)
    try:
        return SequenceSet.parse(raw.decode("ascii"))
    except SequenceError as exc:
        raise cur.error(str(exc)) from None


# -- evaluation -------------------------------------------------------------------------

class MessageView(Protocol):
    """What SEARCH needs of one message. Plain attributes satisfy the properties."""

    @property
    def seq(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def flags(self) -> Set[str]: ...           # system flags, keywords, and \Recent
    @property
    def internaldate(self) -> dt.datetime: ...
    @property
    def size(self) -> int: ...                 # RFC822.SIZE

    def header(self, name: str) -> Sequence[str]:
        """Decoded values (RFC 2047 undone, unfolded) of every field called `name`
        (case-insensitive); empty if there is none."""
        ...

    def header_text(self) -> str:
        """The whole header section as text."""
        ...

    def body_text(self) -> str:
        """The body as text (transfer encodings undone where possible)."""
        ...


def _contains(haystack: str, needle: str) -> bool:
    # RFC 3501 §6.4.4: "case-insensitive" substring matches.
    return needle.casefold() in haystack.casefold()


def _compare(relation: str, day: dt.date, wanted: dt.date) -> bool:
    # RFC 3501 §6.4.4: dates compare by day, "disregarding time and timezone".
    if relation == "BEFORE":
        return day < wanted
    if relation == "ON":
        return day == wanted
    return day >= wanted


def sent_date(message: MessageView) -> dt.date:
    """The Date: header's day in its own zone; INTERNALDATE if it is missing or broken
    (as RFC 5256 §2.2 does for SORT)."""
    for value in message.header("Date"):
        try:
            return email.utils.parsedate_to_datetime(value).date()
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
    return message.internaldate.date()


def _cost(key: SearchKey) -> int:
    if isinstance(key, Body | Text):
        return 2
    if isinstance(key, Header) or (isinstance(key, Date) and key.sent):
        return 1
    if isinstance(key, Not):
        return _cost(key.key)
    if isinstance(key, Or):
        return max(_cost(key.left), _cost(key.right))
    if isinstance(key, And):
        return max((_cost(k) for k in key.keys), default=0)
    return 0


def needs_headers(key: SearchKey) -> bool:
    return _cost(key) >= 1


def needs_body(key: SearchKey) -> bool:
    return _cost(key) >= 2


def matches(key: SearchKey, message: MessageView, *, messages: int, largest_uid: int) -> bool:
    """Whether `message` satisfies `key`. `messages` is the mailbox size ("*" in sequence
    sets), `largest_uid` the largest UID in use ("*" in UID sets, RFC 3501 §6.4.8)."""
    if isinstance(key, All):
        return True
    if isinstance(key, Flag):
        wanted = key.flag.casefold()
        return any(f.casefold() == wanted for f in message.flags) == key.present
    if isinstance(key, Size):
        return message.size > key.octets if key.larger else message.size < key.octets
    if isinstance(key, Uid):
        return key.uids.contains(message.uid, largest_uid)
    if isinstance(key, Seq):
        return key.numbers.contains(message.seq, messages)
    if isinstance(key, Date):
        day = sent_date(message) if key.sent else message.internaldate.date()
        return _compare(key.relation, day, key.date)
    if isinstance(key, Header):
        values = message.header(key.field)
        # RFC 3501 §6.4.4: HEADER with "" matches every message that has the field.
        return any(_contains(v, key.value) for v in values)
    if isinstance(key, Body):
        return _contains(message.body_text(), key.value)
    if isinstance(key, Text):
        return (_contains(message.header_text(), key.value)
                or _contains(message.body_text(), key.value))
    if isinstance(key, Not):
        return not matches(key.key, message, messages=messages, largest_uid=largest_uid)
    if isinstance(key, Or):
        return (matches(key.left, message, messages=messages, largest_uid=largest_uid)
                or matches(key.right, message, messages=messages, largest_uid=largest_uid))
    return all(matches(k, message, messages=messages, largest_uid=largest_uid)
               for k in sorted(key.keys, key=_cost))
