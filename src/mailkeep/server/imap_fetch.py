"""FETCH (RFC 3501 §6.4.5, with RFC 7162 CHANGEDSINCE/VANISHED) and the reading of parsed
messages that FETCH and SEARCH share.

Messages are read from the store in batches (READ_BATCH_*), parsed once and kept in the
session-independent MimeCache; big ones are parsed in a worker thread. Each FETCH response
goes out through the executor's one untagged channel as soon as it is made, so a FETCH of a
whole mailbox is never held in memory, and the loop is yielded in slices (server/slices.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import TYPE_CHECKING

from mailkeep.proto.imap import condstore as cs
from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap.events import Outcome
from mailkeep.proto.imap.fetch import fetch_items, needs_message
from mailkeep.proto.imap.mailboxview import SEEN, MailboxView, flags_value
from mailkeep.proto.imap.mime import MimePart, parse_message
from mailkeep.proto.imap.mimecache import CacheKey
from mailkeep.proto.imap.render import fetch_response
from mailkeep.proto.imap.values import Value
from mailkeep.server import imap_sync
from mailkeep.server.slices import Slices
from mailkeep.store.base import FlagMode, MessageGone

if TYPE_CHECKING:
    from mailkeep.server.imap_commands import ImapExecutor

log = logging.getLogger("mailkeep.imap")

# Messages at least this large are parsed in a worker thread, off the event loop.
PARSE_OFF_LOOP_OCTETS = 256 * 1024
# SEARCH and FETCH read the messages they need in batches of at most this many messages and
# about this many octets: one trip to the store's threads per batch, not per message.
READ_BATCH_MESSAGES = 64
READ_BATCH_OCTETS = 2 * 1024 * 1024
# Messages already parsed and cached need no read: a batch may hold this many of them (one
# step of the caller's loop, and one look at its CPU clock, per batch rather than per 64).
CACHED_BATCH_MESSAGES = 1024
# Our choice: the message data (BODY[...], RFC822, ...) in one message's FETCH response may
# total at most this many times the message's size plus FETCH_SLACK_OCTETS. BODY[] with
# BODY[HEADER] and BODY[TEXT] is about twice; "BODY[]<0> BODY[]<1> BODY[]<2> ..." (some
# 2,000 partials fit a 64 KB command line) would otherwise build one response of 2,000
# copies in memory. Past it: NO [LIMIT] (RFC 5530 §3) for the rest of the FETCH.
MAX_FETCH_COPIES = 4
FETCH_SLACK_OCTETS = 1024 * 1024


def cache_key(ex: ImapExecutor, view: MailboxView, uid: int) -> CacheKey:
    """Where a message of the selected folder's parse is kept: per folder + UIDVALIDITY +
    UID."""
    return (ex.account, view.folder, view.uidvalidity, uid)


async def part(ex: ImapExecutor, uid: int) -> MimePart:
    """The parsed message (cached, cache_key). MessageGone."""
    view = ex.view
    assert view is not None
    key = cache_key(ex, view, uid)
    found = ex.cache.get(key)
    if found is not None:
        return found
    data = await ex.store.read_message(ex.account, view.folder, view.records[uid].key)
    if len(data) >= PARSE_OFF_LOOP_OCTETS:
        parsed = await asyncio.to_thread(parse_message, data)
    else:
        parsed = parse_message(data)
    ex.cache.put(key, parsed)
    return parsed


# One batch of batches(): its UIDs, and the parsed messages of those found in the cache.
Batch = tuple[list[int], dict[int, MimePart | None]]


def batches(ex: ImapExecutor, uids: Sequence[int]) -> Iterator[Batch]:
    """The UIDs cut into batches: at most READ_BATCH_MESSAGES uncached messages and about
    READ_BATCH_OCTETS octets to read, or CACHED_BATCH_MESSAGES in all. The cache is asked
    once per message, here."""
    view = ex._selected()
    records, cache = view.records, ex.cache
    start = 0
    while start < len(uids):
        chunk: list[int] = []
        cached: dict[int, MimePart | None] = {}
        octets = 0
        uncached = 0
        while start < len(uids) and uncached < READ_BATCH_MESSAGES \
                and octets < READ_BATCH_OCTETS and len(chunk) < CACHED_BATCH_MESSAGES:
            uid = uids[start]
            start += 1
            chunk.append(uid)
            found = cache.get(cache_key(ex, view, uid))
            if found is not None:
                cached[uid] = found
            else:
                uncached += 1
                octets += records[uid].size
        yield chunk, cached


async def read_batch(ex: ImapExecutor, batch: Batch) -> list[MimePart | None]:
    """The parsed messages of one batch (batches()) in order, None for one expunged by
    someone else: the uncached small ones read in one trip to the store's threads, large
    ones one by one (part())."""
    view = ex._selected()
    chunk, ready = batch
    wanted = [uid for uid in chunk
              if uid not in ready and view.records[uid].size < PARSE_OFF_LOOP_OCTETS]
    if wanted:
        data = await ex.store.read_messages(
            ex.account, view.folder, [view.records[u].key for u in wanted])
        for uid, octets_read in zip(wanted, data, strict=True):
            if octets_read is None:
                ready[uid] = None
                continue
            parsed = parse_message(octets_read)
            ex.cache.put(cache_key(ex, view, uid), parsed)
            ready[uid] = parsed
    found: list[MimePart | None] = []
    for uid in chunk:
        if uid in ready:
            found.append(ready[uid])
            continue
        try:
            found.append(await part(ex, uid))
        except MessageGone:
            found.append(None)
    return found


async def part_batches(ex: ImapExecutor,
                       uids: Sequence[int]) -> AsyncGenerator[list[MimePart | None], None]:
    """read_batch() of each of batches() in turn, for a caller that walks many messages
    and runs the generator to its end (SEARCH). FETCH calls the two itself: an async
    generator left suspended is finalized through the loop (a thread-safe wake-up and a
    task for its aclose()), which at one FETCH per command was a measurable cost."""
    for batch in batches(ex, uids):
        yield await read_batch(ex, batch)


async def cmd_fetch(ex: ImapExecutor, command: g.CommandType) -> Outcome:
    assert isinstance(command, g.Fetch)
    view = ex._selected()
    if ex._bad_numbers(command.sequence_set, command.uid):
        return Outcome("BAD", "No such message sequence number.")
    items = list(command.items)
    if command.uid and not any(i.name == "UID" for i in items):
        items.insert(0, g.FetchItem("UID"))  # RFC 3501 §6.4.8
    since = command.modifiers.changedsince
    if command.modifiers.vanished and (not command.uid or cs.QRESYNC not in ex.enabled):
        # RFC 7162 §3.2.6: VANISHED only in UID FETCH, and only once QRESYNC is enabled.
        return Outcome("BAD", "VANISHED needs UID FETCH and ENABLE QRESYNC.")
    if since is not None or any(i.name == "MODSEQ" for i in items):
        await imap_sync.enable_condstore(ex)
    if (since is not None or (view.condstore and any(i.name == "FLAGS" for i in items))) \
            and not any(i.name == "MODSEQ" for i in items):
        # RFC 7162 §3.1.4.1: CHANGEDSINCE answers with MODSEQ as if asked; once CONDSTORE
        # is on, FLAGS come with their MODSEQ (so a client's cache stays consistent).
        items.append(g.FetchItem("MODSEQ"))
    pairs = view.resolve(command.sequence_set, uid=command.uid)
    if since is not None:
        if command.modifiers.vanished:
            await imap_sync.vanished_earlier(ex, view, command.sequence_set, since)
        pairs = [(s, u) for s, u in pairs if view.modseqs.get(u, 0) > since]
    changed: set[int] = set()
    if not view.readonly and any(i.sets_seen for i in items):
        # RFC 3501 §6.4.5: BODY[...] (not PEEK), RFC822 and RFC822.TEXT set \Seen.
        unseen = [u for _, u in pairs if SEEN not in view.flags[u] and u not in view.gone]
        if unseen:
            result = await ex.store.store_flags(ex.account, view.folder, unseen,
                                                  FlagMode.ADD, [SEEN])
            fresh = await imap_sync.fresh_modseqs(ex, view) if view.condstore else {}
            for u, flags in result.items():
                view.set_flags(u, flags, fresh.get(u))
            changed = set(result)
    unique: dict[str, g.FetchItem] = {}
    for item in items:  # one value per response name, the first asked (fetch_items)
        unique.setdefault(item.response_name(), item)
    items = list(unique.values())
    need_message = needs_message(items)
    wants_flags = any(i.name == "FLAGS" for i in items)
    missing = 0
    uids = [u for _, u in pairs]
    position = 0
    clock = Slices()
    clock.start()
    for batch in (batches(ex, uids) if need_message else [(uids, {})]):
        found = await read_batch(ex, batch) if need_message else [None] * len(batch[0])
        for parsed in found:
            seq, uid = pairs[position]
            position += 1
            if need_message and parsed is None:
                missing += 1  # expunged by someone else
                continue
            refusal = await _respond(ex, view, items, seq=seq, uid=uid, parsed=parsed,
                                     changed=uid in changed, wants_flags=wants_flags)
            if refusal is not None:
                return refusal
            if clock.due():  # FETCH 1:* of a big mailbox: let other sessions in
                await clock.pause()
    if view.condstore and pairs:
        for line in view.floor_response():  # RFC 7162 §3.2 (expunges held back)
            await ex.emit(line)
    if missing:
        # RFC 2180 §4.1.3: some of the messages were expunged by another session.
        return Outcome("NO", "Some messages were expunged.")
    return Outcome("OK", "FETCH completed.")


async def _respond(ex: ImapExecutor, view: MailboxView, items: Sequence[g.FetchItem], *,
                   seq: int, uid: int, parsed: MimePart | None, changed: bool,
                   wants_flags: bool) -> Outcome | None:
    """One message's FETCH response; a NO [LIMIT] instead when it would be too large."""
    record = view.records[uid]
    values: list[tuple[str, Value]] = []
    octets, limit = 0, MAX_FETCH_COPIES * record.size + FETCH_SLACK_OCTETS
    flags, modseq = view.flags_of(uid), view.modseqs.get(uid, 0)
    for item in items:
        values += fetch_items([item], uid=uid, flags=flags, internaldate=record.internaldate,
                              size=record.size, part=parsed, modseq=modseq)
        if isinstance(values[-1][1], bytes):
            octets += len(values[-1][1])
            if octets > limit:
                log.info("conn=%s FETCH of UID %d refused: %d items, over %d octets",
                         ex.conn_id, uid, len(items), limit)
                return Outcome("NO", "FETCH response too large, ask for "
                                     "fewer or smaller sections.", "LIMIT")
    if changed and not wants_flags:
        values.append(("FLAGS", flags_value(flags)))
        if view.condstore and not any(name == "MODSEQ" for name, _ in values):
            values.append(cs.modseq_item(modseq))
    await ex.emit(fetch_response(seq, values))
    return None
