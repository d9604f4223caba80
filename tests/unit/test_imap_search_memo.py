"""Kept SEARCH answers (server/imap_search.py SEARCH_MEMO_*): a search that looks only at what
a message holds is answered again by looking at the messages that came since; the answer
stays right through new messages, expunges, flag changes and sequence numbers, and searches
that depend on flags or numbers are never kept."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, Sequence

import pytest

from mailkeep.proto.imap import search as s
from mailkeep.proto.imap.lexer import Cursor
from mailkeep.proto.imap.mailboxview import MailboxView
from mailkeep.proto.imap.mime import MimePart, parse_message
from mailkeep.server import imap_search
from mailkeep.store.base import MessageRecord

WHEN = dt.datetime(2024, 3, 10, 12, 0, tzinfo=dt.UTC)


def key(text: str) -> s.SearchKey:
    return s.parse_search(Cursor(text.encode(), "t"))[1]


class Folder:
    """A selected mailbox: the view, the messages' texts, and which UIDs were read."""

    def __init__(self, subjects: Sequence[str]) -> None:
        self.texts: dict[int, bytes] = {}
        self.read: list[int] = []
        records = [self._add(uid, subject) for uid, subject in enumerate(subjects, 1)]
        self.view = MailboxView("INBOX", readonly=False, uidvalidity=7,
                                uidnext=len(subjects) + 1, records=records, recent=())

    def _add(self, uid: int, subject: str, flags: frozenset[str] = frozenset()
             ) -> MessageRecord:
        self.texts[uid] = f"Subject: {subject}\r\nFrom: a@b.test\r\n\r\nbody\r\n".encode()
        return MessageRecord(uid, f"k{uid}", flags, WHEN, len(self.texts[uid]))

    def append(self, subject: str) -> None:
        uid = self.view.largest_uid + 1
        records = [*self.view.records.values(), self._add(uid, subject)]
        list(self.view.update(records, allow_expunge=True))

    def expunge(self, uid: int) -> None:
        records = [r for r in self.view.records.values() if r.uid != uid]
        list(self.view.update(records, allow_expunge=True))

    def parts(self, uids: Sequence[int]) -> AsyncGenerator[list[MimePart | None], None]:
        async def gen() -> AsyncGenerator[list[MimePart | None], None]:
            self.read.extend(uids)
            yield [parse_message(self.texts[u]) for u in uids]
        return gen()

    async def search(self, text: str, *, uid: bool = True) -> list[int]:
        return await imap_search.search(self.view, key(text), uid=uid, parts=self.parts)


async def test_a_repeated_search_reads_only_what_came_since() -> None:
    f = Folder(["alpha", "beta", "alpha two", "gamma"])
    assert await f.search('SUBJECT "alpha"') == [1, 3]
    assert f.read == [1, 2, 3, 4]
    f.read.clear()
    assert await f.search('SUBJECT "alpha"') == [1, 3]
    assert f.read == []  # nothing new: nothing read
    f.append("alpha three")
    f.append("delta")
    assert await f.search('SUBJECT "alpha"') == [1, 3, 5]
    assert f.read == [5, 6]


async def test_expunges_and_sequence_numbers_stay_right() -> None:
    f = Folder(["alpha", "beta", "alpha two", "gamma", "alpha four"])
    assert await f.search('SUBJECT "alpha"', uid=False) == [1, 3, 5]
    f.expunge(1)
    f.expunge(4)
    # UIDs 2 3 5 are now sequence numbers 1 2 3.
    assert await f.search('SUBJECT "alpha"', uid=False) == [2, 3]
    assert await f.search('SUBJECT "alpha"') == [3, 5]
    f.read.clear()
    f.append("alpha six")
    assert await f.search('SUBJECT "alpha"', uid=False) == [2, 3, 4]
    assert f.read == [6]


async def test_searches_on_flags_or_numbers_are_not_kept() -> None:
    f = Folder(["alpha", "alpha", "beta"])
    assert await f.search('UNSEEN SUBJECT "alpha"') == [1, 2]
    f.view.set_flags(1, frozenset({"\\Seen"}))
    assert await f.search('UNSEEN SUBJECT "alpha"') == [2]  # looked at again
    assert await f.search('1:2 SUBJECT "alpha"') == [1, 2]
    f.expunge(1)
    assert await f.search('1:2 SUBJECT "alpha"') == [2]  # sequence numbers moved
    assert list(f.view.search_memo) == []


async def test_kept_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imap_search, "SEARCH_MEMO_KEYS", 2)
    monkeypatch.setattr(imap_search, "SEARCH_MEMO_UIDS", 3)
    f = Folder(["alpha", "alpha", "alpha", "alpha", "beta"])
    assert await f.search('SUBJECT "alpha"') == [1, 2, 3, 4]  # four hits: not kept
    assert list(f.view.search_memo) == []
    await f.search('SUBJECT "beta"')
    await f.search('SUBJECT "gamma"')
    await f.search('FROM "z@y"')  # the third key pushes out the oldest, "beta"
    assert list(f.view.search_memo) == [key('SUBJECT "gamma"'), key('FROM "z@y"')]
    f.read.clear()
    assert await f.search('SUBJECT "beta"') == [5]
    assert f.read == [1, 2, 3, 4, 5]  # looked at again


def test_leaves_are_the_keys_under_not_or_and() -> None:
    k = key('OR (SUBJECT "a" NOT UNSEEN) (FROM "b" 1:2) LARGER 5')
    assert [type(x).__name__ for x in s.leaves(k)] == [
        "Header", "Flag", "Envelope", "Seq", "Size"]
    assert not imap_search._content_only(k)
    assert imap_search._content_only(key('OR SUBJECT "a" NOT (FROM "b" LARGER 5)'))
