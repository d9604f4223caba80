"""SEARCH keys (RFC 3501 §6.4.4): parsing and the evaluator over a MessageView."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from mailkeep.proto.imap import search as s
from mailkeep.proto.imap import searchprogram as sp
from mailkeep.proto.imap.lexer import Cursor, ParseError
from mailkeep.proto.imap.sequence import SequenceSet

UTC = dt.UTC


@dataclass
class View:
    seq: int
    uid: int
    flags: frozenset[str] = frozenset()
    internaldate: dt.datetime = dt.datetime(2024, 3, 10, 23, 30, tzinfo=UTC)
    size: int = 1000
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    addrs: dict[str, list[str]] = field(default_factory=dict)
    body_reads: int = 0

    def header(self, name: str) -> Sequence[str]:
        for key, values in self.headers.items():
            if key.lower() == name.lower():
                return values
        return []

    def addresses(self, name: str) -> Sequence[str]:
        return self.addrs.get(name.lower(), [])

    def header_text(self) -> str:
        return "\r\n".join(f"{k}: {v}" for k, vs in self.headers.items() for v in vs)

    def body_text(self) -> str:
        self.body_reads += 1
        return self.body


def parse(text: str) -> tuple[str | None, s.SearchKey]:
    return s.parse_search(Cursor(text.encode(), "t"))


def key(text: str) -> s.SearchKey:
    return parse(text)[1]


M1 = View(1, 10, frozenset({"\\Seen", "\\Answered", "$Work"}), size=500,
          headers={"From": ["Joe Smith <joe@example.org>"], "Subject": ["Afternoon MEETING"],
                   "Date": ["Mon, 11 Mar 2024 01:00:00 +0100"], "X-Spam": [""]},
          body="Hello Joe, do you think we can meet at 3:30?")
M2 = View(2, 20, frozenset({"\\Recent", "\\Deleted", "\\Flagged"}), size=5000,
          internaldate=dt.datetime(2024, 3, 12, 8, 0, tzinfo=UTC),
          headers={"To": ["Ann <ann@example.org>"], "Subject": ["Grüße aus Köln"]},
          body="nothing here")
M3 = View(3, 35, frozenset({"\\Draft", "\\Recent", "\\Seen"}), size=1000,
          internaldate=dt.datetime(2024, 3, 9, 12, 0, tzinfo=UTC),
          headers={"Cc": ["Bob <bob@example.net>"], "Date": ["garbage"]})
MAILBOX = [M1, M2, M3]


def hits(text: str) -> list[int]:
    k = key(text)
    return [m.seq for m in MAILBOX if sp.matches(k, m, messages=3, largest_uid=35)]


@pytest.mark.parametrize(("criteria", "expected"), [
    ("ALL", [1, 2, 3]),
    ("ANSWERED", [1]), ("UNANSWERED", [2, 3]),
    ("DELETED", [2]), ("UNDELETED", [1, 3]),
    ("DRAFT", [3]), ("UNDRAFT", [1, 2]),
    ("FLAGGED", [2]), ("UNFLAGGED", [1, 3]),
    ("SEEN", [1, 3]), ("UNSEEN", [2]),
    ("RECENT", [2, 3]), ("NEW", [2]), ("OLD", [1]),
    ("KEYWORD $work", [1]), ("UNKEYWORD $Work", [2, 3]),
    ("FROM smith", [1]), ("TO ANN", [2]), ("CC bob@", [3]), ("BCC x", []),
    ("SUBJECT meeting", [1]), ("SUBJECT {7}\r\nGRÜSSE", [2]), ("SUBJECT {7}\r\ngrüße", [2]),
    ("HEADER X-Spam \"\"", [1]), ("HEADER subject {5}\r\nköln", [2]),
    ("BODY MEET", [1]), ("TEXT joe", [1]), ("TEXT example.net", [3]),
    ("LARGER 999", [2, 3]), ("SMALLER 1000", [1]), ("LARGER 1000", [2]),
    ("BEFORE 10-Mar-2024", [3]), ("ON 10-Mar-2024", [1]), ("SINCE 10-Mar-2024", [1, 2]),
    ('ON "12-mar-2024"', [2]),
    # SENT* use the Date: header in its own zone (M1: 11 Mar), INTERNALDATE when it is broken.
    ("SENTON 11-Mar-2024", [1]), ("SENTBEFORE 11-Mar-2024", [3]),
    ("SENTSINCE 12-Mar-2024", [2]),
    ("UID 20:*", [2, 3]), ("UID 36:*", [3]), ("UID 1:15", [1]),
    ("2:*", [2, 3]), ("*", [3]), ("1,3", [1, 3]),
    ("NOT SEEN", [2]), ("OR ANSWERED DRAFT", [1, 3]), ("OR (SEEN FLAGGED) DELETED", [2]),
    ("SEEN NOT DRAFT", [1]), ("(SEEN) (RECENT)", [3]),
    ("OR OR ANSWERED FLAGGED DRAFT", [1, 2, 3]),
])
def test_evaluation(criteria: str, expected: list[int]) -> None:
    assert hits(criteria) == expected


def test_charset() -> None:
    assert parse("CHARSET utf-8 ALL") == ("UTF-8", s.All())
    assert parse("CHARSET US-ASCII SEEN") == ("US-ASCII", s.Flag("\\Seen"))
    with pytest.raises(ParseError) as info:
        parse("CHARSET ISO-2022-JP ALL")
    assert info.value.status == "NO" and info.value.code == "BADCHARSET (UTF-8 US-ASCII)"


def test_tree_shapes() -> None:
    assert key("SEEN UNSEEN") == s.And((s.Flag("\\Seen"), s.Flag("\\Seen", False)))
    assert key("uid 1:3") == s.Uid(SequenceSet.parse("1:3"))
    assert key("OR 1 2") == s.Or(s.Seq(SequenceSet.parse("1")), s.Seq(SequenceSet.parse("2")))
    assert key("SENTSINCE 1-Feb-1994") == s.Date("SINCE", dt.date(1994, 2, 1), sent=True)
    assert key("LARGER 0") == s.Size(True, 0)


@pytest.mark.parametrize("bad", ["", "FOO", "BEFORE", "BEFORE 1-Foo-2000", "BEFORE 30-Feb-2000",
                                 "BEFORE 1-Feb-94", "BEFORE 123-Feb-1994", "OR SEEN", "NOT",
                                 "(SEEN", "()", "SEEN)", "LARGER -1", "UID 0", "UID", "KEYWORD",
                                 "HEADER Subject", "SEEN  DRAFT", "CHARSET", "TEXT {3}\r\n\xff"])
def test_errors(bad: str) -> None:
    with pytest.raises(ParseError):
        parse(bad)


def test_needs_body_and_lazy_bodies() -> None:
    assert not sp.needs_headers(key("SEEN UID 1:* LARGER 3 SINCE 1-Jan-2020"))
    assert sp.needs_headers(key("SENTON 1-Jan-2020")) and not sp.needs_body(key("FROM x"))
    assert sp.needs_body(key("OR SEEN TEXT x")) and sp.needs_body(key("NOT BODY x"))
    view = View(1, 1, frozenset(), body="x")
    # Cheap keys run first in a conjunction: a failing flag test never reads the body.
    assert not sp.matches(key("BODY x SEEN"), view, messages=1, largest_uid=1)
    assert view.body_reads == 0
