"""SEARCH against the selected mailbox (RFC 3501 §6.4.4), for the executor.

proto/imap/searchprogram.py decides what matches; this module feeds it the messages and
keeps it from holding the event loop (issue: one SEARCH of 400 BODY keys once froze every
session for 19 s):
- the program is compiled once; each message's text is decoded and casefolded once;
- evaluation runs in slices (server/slices.py) and pauses between any two text scans, so
  other sessions get a turn every few milliseconds even inside one big message;
- a big message (PARSE_OFF_LOOP_OCTETS and up) is decoded in a worker thread;
- the CPU time spent deciding is charged to SEARCH_CPU_SECONDS; past it the SEARCH stops
  (slices.TooExpensive: the executor answers NO [LIMIT]) and the session goes on.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncGenerator, Callable, Sequence, Set
from dataclasses import dataclass
from datetime import datetime

from mailkeep.proto.imap import textsearch
from mailkeep.proto.imap.mailboxview import MailboxView
from mailkeep.proto.imap.mime import MimePart
from mailkeep.proto.imap.search import (
    Body,
    Date,
    Envelope,
    Header,
    SearchKey,
    Size,
    Text,
    Uid,
    leaves,
)
from mailkeep.proto.imap.searchprogram import SearchProgram
from mailkeep.server.slices import Slices, cpu_seconds

# CPU time one SEARCH may spend deciding which messages match (decoding and scanning text,
# on the loop and in worker threads; reading and parsing the files is not counted). Our
# choice, from figures on this machine: a body is decoded and casefolded at 65 to 450 MB per
# CPU second (base64 or non-ASCII text is the slow end), then scanned at 1.6 GB/s per key;
# so an honest TEXT search of 2 GB of mail fits, and since the search runs in slices it
# delays nobody else meanwhile. A hostile one stops here: NO [LIMIT].
SEARCH_CPU_SECONDS = 30.0
# Messages at least this large are decoded in a worker thread (as they are parsed there).
DECODE_OFF_LOOP_OCTETS = 256 * 1024
# Smaller messages are scanned whole between two looks at the slice clock (a 64 KiB message
# decodes in well under a millisecond at the slow end above): no pause inside one, and no
# coroutine per message, which cost more than the scan of a typical header.
SCAN_WHOLE_OCTETS = 64 * 1024
# What a message holds never changes under its UID, so the answer of a SEARCH that looks
# only at that (SUBJECT, FROM, HEADER, BODY, ...) is kept with the selected mailbox, and the
# same SEARCH again looks only at the messages that came since: clients repeat searches
# (a quick filter, a saved search, a poll for a Message-ID). Kept per selected mailbox: the
# last SEARCH_MEMO_KEYS keys, SEARCH_MEMO_UIDS matching UIDs in all (an answer with more
# is not kept); our choice, about 100 KB at most per session.
SEARCH_MEMO_KEYS = 8
SEARCH_MEMO_UIDS = 4096
# A flags-only SEARCH looks at the slice clock once per this many messages (a look costs
# about what deciding a few messages does; 1,024 of them take well under a millisecond).
FLAG_CHECKS_PER_LOOK = 1024

Parts = Callable[[Sequence[int]], AsyncGenerator[list[MimePart | None], None]]


@dataclass(slots=True)
class SearchMessage:
    """searchprogram.MessageView over a view entry and (when needed) its parsed message."""

    seq: int
    uid: int
    flags: Set[str]
    internaldate: datetime
    size: int
    part: MimePart | None
    modseq: int = 0  # RFC 7162 §3.1.5 SEARCH MODSEQ

    def header(self, name: str) -> Sequence[str]:
        return [] if self.part is None else textsearch.header_values(self.part, name)

    def folded_header(self, key: str) -> Sequence[str]:
        """header() casefolded (`key` in lower case), kept with the cached message: the
        same headers are searched again and again (searchprogram.MessageText)."""
        return () if self.part is None else textsearch.folded_header_values(self.part, key)

    def folded_addresses(self, key: str) -> Sequence[str]:
        """addresses() casefolded (`key` in lower case), kept with the cached message."""
        return () if self.part is None else textsearch.folded_address_texts(self.part, key)

    def addresses(self, name: str) -> Sequence[str]:
        return [] if self.part is None else textsearch.address_texts(self.part, name)

    def header_text(self) -> str:
        return "" if self.part is None else textsearch.header_text(self.part)

    def body_text(self) -> str:
        return "" if self.part is None else "\n".join(textsearch.body_texts(self.part))


async def search(view: MailboxView, key: SearchKey, *, uid: bool, parts: Parts) -> list[int]:
    """The sequence numbers (UIDs if `uid`) of the messages that match, in order.
    slices.TooExpensive past SEARCH_CPU_SECONDS. `parts` reads parsed messages a batch at
    a time (None: expunged meanwhile), as ImapExecutor.part_batches does."""
    program = SearchProgram(key, messages=len(view), largest_uid=view.largest_uid)
    uids = list(view.uids)
    clock = Slices(SEARCH_CPU_SECONDS)
    hits: list[int] = []
    records, flags_of, modseqs = view.records, view.flags_of, view.modseqs
    on_flags = program.on_flags
    if on_flags is not None:
        # Flags only (UNSEEN, DELETED, NOT SEEN FLAGGED, ...): one answer per distinct set
        # of flags (a folder has few), a dict lookup per message.
        answers: dict[frozenset[str], bool] = {}
        clock.start()
        for seq, u in enumerate(uids, 1):
            flags = flags_of(u)
            hit = answers.get(flags)
            if hit is None:
                hit = answers[flags] = on_flags(flags)
            if hit:
                hits.append(u if uid else seq)
            if not seq % FLAG_CHECKS_PER_LOOK and clock.due():
                await clock.pause()
        clock.stop()
        return hits
    if not program.needs_headers:
        # Flags, sizes, dates and numbers only: no message is read.
        clock.start()
        for seq, u in enumerate(uids, 1):
            record = records[u]
            if program.matches(SearchMessage(seq, u, flags_of(u), record.internaldate,
                                             record.size, None, modseqs.get(u, 0))):
                hits.append(u if uid else seq)
            if clock.due():
                await clock.pause()
        clock.stop()
        return hits
    memo = _memo(view, key)
    start = 0 if memo is None else bisect.bisect_right(uids, memo.upto)
    found = await _scan(program, view, uids, start=start, parts=parts, clock=clock)
    if memo is not None or _content_only(key):
        return _remembered(view, key, memo, found, uid=uid)
    if uid:
        return found
    wanted = set(found)
    return [seq for seq, u in enumerate(uids, 1) if u in wanted]


async def _scan(program: SearchProgram, view: MailboxView, uids: Sequence[int], *,
                start: int, parts: Parts, clock: Slices) -> list[int]:
    """The UIDs from uids[start:] that match, in order."""
    hits: list[int] = []
    records, flags_of, modseqs = view.records, view.flags_of, view.modseqs
    reader = parts(uids[start:])
    seq = start
    try:
        clock.start()
        while True:
            clock.stop()
            batch = await anext(reader, None)
            clock.start()
            if batch is None:
                break
            for part in batch:
                seq += 1
                if part is None:
                    continue
                u = uids[seq - 1]
                record = records[u]
                message = SearchMessage(seq, u, flags_of(u), record.internaldate,
                                        record.size, part, modseqs.get(u, 0))
                if record.size < SCAN_WHOLE_OCTETS:
                    hit = program.matches(message)  # a small one: no pause inside
                else:
                    hit = await _evaluate(program, message, clock)
                if hit:
                    hits.append(u)
                if clock.due():
                    await clock.pause()
        clock.stop()
    finally:
        await reader.aclose()
    return hits


@dataclass(slots=True)
class Remembered:
    """A content-only SEARCH's answer on the selected mailbox: the UIDs up to `upto` were
    looked at, and these of them matched (some may be expunged since)."""

    upto: int
    matched: frozenset[int]


def _content_only(key: SearchKey) -> bool:
    """Does the key look only at what never changes under a UID -- the message's text
    (SUBJECT, FROM, HEADER, BODY, TEXT, SENT*), its size, INTERNALDATE, its UID -- so
    that its answer for a message can be kept? Flags, sequence numbers and MODSEQ change."""
    return all(isinstance(k, Header | Envelope | Body | Text | Size | Date | Uid)
               for k in leaves(key))


def _memo(view: MailboxView, key: SearchKey) -> Remembered | None:
    found = view.search_memo.get(key)
    return found if isinstance(found, Remembered) else None


def _remembered(view: MailboxView, key: SearchKey, memo: Remembered | None,
                found: list[int], *, uid: bool) -> list[int]:
    """The whole answer (what was kept and what was `found` among the newer messages), as
    UIDs or sequence numbers; it is kept for the next SEARCH with the same key (at most
    SEARCH_MEMO_KEYS keys and SEARCH_MEMO_UIDS UIDs per selected mailbox, the newest)."""
    matched = set(found)
    if memo is not None:
        matched.update(u for u in memo.matched if u in view.records)
    memos = view.search_memo
    memos.pop(key, None)
    if len(matched) <= SEARCH_MEMO_UIDS:
        memos[key] = Remembered(view.largest_uid, frozenset(matched))
        held = sum(len(m.matched) for m in memos.values() if isinstance(m, Remembered))
        while len(memos) > SEARCH_MEMO_KEYS or held > SEARCH_MEMO_UIDS:
            oldest = next(iter(memos))
            dropped = memos.pop(oldest)
            held -= len(dropped.matched) if isinstance(dropped, Remembered) else 0
    if uid:
        return [u for u in view.uids if u in matched]
    return [seq for seq, u in enumerate(view.uids, 1) if u in matched]


async def _evaluate(program: SearchProgram, message: SearchMessage, clock: Slices) -> bool:
    """One message against the program, pausing whenever the slice is used up (between any
    two text scans). A big message is decoded in a worker thread first, its CPU time
    charged all the same."""
    text = program.text(message)
    if program.needs_body and message.size >= DECODE_OFF_LOOP_OCTETS:
        clock.stop()
        cpu = await asyncio.to_thread(cpu_seconds, lambda: program.prepare(text))
        clock.start()
        clock.charge(cpu)
    steps = program.run(text)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return bool(done.value)
        if clock.due():
            await clock.pause()
