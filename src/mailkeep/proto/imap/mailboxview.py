"""The selected mailbox as one session sees it (RFC 3501 §2.3.1.2, §5.2, §7.4.1).

Sequence numbers belong to the session: they change only when this session is told (an
untagged EXPUNGE or EXISTS). The store moves on underneath (other sessions, deliveries);
`update()` compares a fresh snapshot with the view and says what to tell the client:

    * 3 EXPUNGE      for messages gone from the store (only where RFC 3501 §7.4.1 allows:
                     never during FETCH, STORE or SEARCH without UID; until then a gone
                     message keeps its number and its last known flags)
    * 4 FETCH (FLAGS (...))   for flags changed by someone else
    * 12 EXISTS / * 2 RECENT  for new messages

Keywords: the client learns the mailbox's keywords from FLAGS and PERMANENTFLAGS at SELECT.
A keyword that appears later (this session's STORE, an APPEND or COPY into the mailbox,
another session) is announced with a new FLAGS and OK [PERMANENTFLAGS] before any FETCH
shows it (RFC 3501 §7.2.6: FLAGS "MUST be recorded by the client" and tells it which flags
exist; a FETCH naming one it was never told of confuses strict clients).

MODSEQ (RFC 7162): the view keeps each message's mod-sequence as the session last saw it
and the folder's HIGHESTMODSEQ. Once the session has CONDSTORE on (`condstore`), FETCH
responses for changes made by others carry MODSEQ (§3.1: in all unsolicited FETCH responses
once enabled); once QRESYNC is on (`qresync`), expunges are told as "* VANISHED uid-set"
instead of EXPUNGE (§3.2.10), followed by "* OK [HIGHESTMODSEQ n]". While expunges are held
back (above) and FETCH responses with higher MODSEQs go out, "* OK [HIGHESTMODSEQ n]" with
the value from before those expunges follows them (RFC 7162 §3.2: a client that is cut off
then must not think it has seen the expunges).

Pure data: the records come from the store via the driver, duck-typed by `Record`.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Protocol

from mailkeep.proto.imap.render import (
    fetch_response,
    render,
    response_code,
    untagged,
    untagged_status,
)
from mailkeep.proto.imap.sequence import SequenceSet, compress
from mailkeep.proto.imap.values import Atom, Rendered, Value

RECENT = "\\Recent"
SEEN = "\\Seen"
# RFC 3501 §2.3.2: the system flags a client may store (\Recent is the server's).
STORABLE_SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class Record(Protocol):
    """One message as the store lists it (store.base.MessageRecord)."""

    @property
    def uid(self) -> int: ...
    @property
    def key(self) -> str: ...
    @property
    def flags(self) -> frozenset[str]: ...
    @property
    def internaldate(self) -> dt.datetime: ...
    @property
    def size(self) -> int: ...


def flag_atoms(flags: Iterable[str]) -> list[Value]:
    """Flags as a FETCH/FLAGS value: system flags first in RFC order, then keywords."""
    found = set(flags)
    system = [f for f in (*STORABLE_SYSTEM_FLAGS, RECENT) if f in found]
    return [Atom(f) for f in system + sorted(found - set(system))]


# Rendered FLAGS values by flag set: a folder has few distinct ones, and every FETCH of
# FLAGS needs one. Cleared when it holds this many (keywords can make many sets).
FLAG_VALUE_CACHE = 4096
_flag_values: dict[frozenset[str], Rendered] = {}


def flags_value(flags: frozenset[str]) -> Value:
    """flag_atoms(flags), rendered (values.Rendered), from a cache."""
    found = _flag_values.get(flags)
    if found is None:
        if len(_flag_values) >= FLAG_VALUE_CACHE:
            _flag_values.clear()
        found = _flag_values[flags] = Rendered(render(flag_atoms(flags)))
    return found


class MailboxView:
    def __init__(self, folder: str, *, readonly: bool, uidvalidity: int, uidnext: int,
                 records: Sequence[Record], recent: Iterable[int],
                 modseqs: Mapping[int, int] | None = None, highestmodseq: int = 0) -> None:
        self.folder = folder
        self.readonly = readonly
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.uids: list[int] = [r.uid for r in records]
        self.records: dict[int, Record] = {r.uid: r for r in records}
        self.flags: dict[int, frozenset[str]] = {r.uid: r.flags for r in records}
        self.recent: set[int] = set(recent) & set(self.uids)
        self.gone: set[int] = set()  # removed in the store; EXPUNGE not yet sent
        # The records update() last brought the view to (a snapshot reused by the store is
        # the same object: nothing to compare), and whether CONDSTORE was on then.
        self._applied: Sequence[Record] | None = None
        self._applied_condstore = False
        # The keywords the client has been told of (FLAGS, PERMANENTFLAGS); only grows.
        self.announced: set[str] = set(self.keywords())
        # RFC 7162: each message's MODSEQ and the folder's HIGHESTMODSEQ, as last seen.
        known = modseqs or {}
        self.modseqs: dict[int, int] = {u: known.get(u, 0) for u in self.uids}
        self.highestmodseq = highestmodseq
        self.condstore = False  # MODSEQ in FETCH responses (the session enabled CONDSTORE)
        self.qresync = False    # VANISHED instead of EXPUNGE (the session enabled QRESYNC)
        # HIGHESTMODSEQ from before the expunges now held back (None: none held back).
        self.pending_floor: int | None = None
        # SEARCH answers that depend only on what the messages hold (server/imap_search.py
        # keeps them here, by search key): they last as long as the selection.
        self.search_memo: dict[Hashable, object] = {}

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def flags_of(self, uid: int) -> frozenset[str]:
        flags = self.flags[uid]
        return flags | {RECENT} if uid in self.recent else flags

    def keywords(self) -> list[str]:
        return sorted({f for flags in self.flags.values() for f in flags
                       if not f.startswith("\\")})

    def flags_response(self) -> bytes:
        """* FLAGS (...): the system flags and every keyword announced (RFC 3501 §7.2.6)."""
        system: list[Value] = [Atom(f) for f in STORABLE_SYSTEM_FLAGS]
        return untagged("FLAGS", system + [Atom(k) for k in sorted(self.announced)])

    def permanentflags_response(self) -> bytes:
        """* OK [PERMANENTFLAGS (...)]: what STORE may set; none when read-only, and "\\*"
        (new keywords may be created) otherwise (RFC 3501 §7.1)."""
        permanent: list[Value] = [] if self.readonly else [
            *(Atom(f) for f in STORABLE_SYSTEM_FLAGS),
            *(Atom(k) for k in sorted(self.announced)), Atom("\\*")]
        return untagged_status("OK", "Flags permitted.",
                               response_code("PERMANENTFLAGS", permanent))

    def announce(self, flag_sets: Iterable[Iterable[str]]) -> list[bytes]:
        """FLAGS and OK [PERMANENTFLAGS] if these flags hold keywords the client was not told
        of (send them before any FETCH that shows them); [] otherwise."""
        new = {f for flags in flag_sets for f in flags
               if not f.startswith("\\") and f not in self.announced}
        if not new:
            return []
        self.announced |= new
        return [self.flags_response(), self.permanentflags_response()]

    def first_unseen(self) -> int | None:
        for seq, uid in enumerate(self.uids, 1):
            if SEEN not in self.flags[uid]:
                return seq
        return None

    def resolve(self, numbers: SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) pairs named by a sequence set or a UID set, ascending."""
        if uid:
            chosen = numbers.select_uids(self.uids)
            out: list[tuple[int, int]] = []
            for u in chosen:
                seq = self.seq_of(u)
                if seq is not None:
                    out.append((seq, u))
            return out
        return [(n, self.uids[n - 1]) for n in numbers.iterate(len(self.uids))]

    def set_flags(self, uid: int, flags: frozenset[str], modseq: int | None = None) -> None:
        if uid in self.flags:
            self.flags[uid] = flags
            if modseq is not None:
                self.modseqs[uid] = modseq

    def highestmodseq_response(self, value: int | None = None) -> bytes:
        """* OK [HIGHESTMODSEQ n] (RFC 7162 §3.1.2.1)."""
        n = self.highestmodseq if value is None else value
        return untagged_status("OK", "Highest", response_code("HIGHESTMODSEQ", n))

    def floor_response(self) -> list[bytes]:
        """After FETCH responses with MODSEQ while expunges are held back: the HIGHESTMODSEQ
        the client may safely keep (RFC 7162 §3.2, errata 1810)."""
        if self.condstore and self.pending_floor is not None:
            return [self.highestmodseq_response(self.pending_floor)]
        return []

    def expunge(self, uids: Iterable[int]) -> list[bytes]:
        """Remove these UIDs from the view; "* n EXPUNGE" lines, highest number first so
        that each number is right when the client reads it (RFC 3501 §7.4.1)."""
        doomed = set(uids) & set(self.records)
        if not doomed:
            return []
        out: list[bytes] = []
        if self.qresync:
            # RFC 7162 §3.2.10: once QRESYNC is enabled, VANISHED replaces EXPUNGE.
            out.append(untagged(f"VANISHED {compress(sorted(doomed))}"))
        else:
            for i in range(len(self.uids) - 1, -1, -1):
                u = self.uids[i]
                if u in doomed:
                    out.append(untagged(f"{i + 1} EXPUNGE"))
        self.uids = [u for u in self.uids if u not in doomed]
        for u in doomed:
            del self.records[u]
            del self.flags[u]
            self.modseqs.pop(u, None)
            self.recent.discard(u)
            self.gone.discard(u)
        if not self.gone:
            self.pending_floor = None
        return out

    def update(self, records: Sequence[Record], *, claimed: Iterable[int] = (),
               allow_expunge: bool, with_uid: bool = False,
               modseqs: Mapping[int, int] | None = None,
               highestmodseq: int | None = None) -> list[bytes]:
        """Untagged responses that bring the client from the view to `records` (a fresh
        snapshot; `modseqs` and `highestmodseq` its MODSEQs). `claimed`: new messages this
        session holds \\Recent for."""
        if records is self._applied and not self.gone \
                and self._applied_condstore == self.condstore:
            return []  # the very snapshot applied last time (the store reused it)
        current = {r.uid: r for r in records}
        known = modseqs or {}
        out: list[bytes] = []
        newly_gone = {u for u in self.uids if u not in current and u not in self.gone}
        if newly_gone and self.pending_floor is None:
            self.pending_floor = self.highestmodseq
        self.gone |= newly_gone
        expunged = False
        if allow_expunge and self.gone:
            out += self.expunge(set(self.gone))
            expunged = True
        fetches: list[bytes] = []
        changed: list[frozenset[str]] = []
        for seq, u in enumerate(self.uids, 1):
            rec = current.get(u)
            if rec is None:
                continue
            modseq = known.get(u, self.modseqs.get(u, 0))
            if rec.flags == self.flags[u] and not self.condstore:
                self.modseqs[u] = modseq  # learnt quietly: nobody asked for MODSEQs yet
            if rec.flags != self.flags[u] or modseq != self.modseqs.get(u, 0):
                changed.append(rec.flags)
                self.flags[u] = rec.flags
                self.records[u] = rec
                self.modseqs[u] = modseq
                items: list[tuple[str, Value]] = [("FLAGS", flags_value(self.flags_of(u)))]
                if with_uid:
                    items.append(("UID", u))
                if self.condstore:
                    items.append(("MODSEQ", [modseq]))
                fetches.append(fetch_response(seq, items))
        largest = self.largest_uid
        new = [r for r in records if r.uid > largest]
        # Keywords first seen in changed flags or new messages: FLAGS before the FETCHes.
        out += self.announce([*changed, *(r.flags for r in new)])
        out += fetches
        if new:
            claimed_set = set(claimed)
            for r in new:
                self.uids.append(r.uid)
                self.records[r.uid] = r
                self.flags[r.uid] = r.flags
                self.modseqs[r.uid] = known.get(r.uid, 0)
                if r.uid in claimed_set:
                    self.recent.add(r.uid)
            out.append(untagged(f"{len(self.uids)} EXISTS"))
            out.append(untagged(f"{len(self.recent)} RECENT"))
        if records:
            self.uidnext = max(self.uidnext, records[-1].uid + 1)
        if highestmodseq is not None:
            self.highestmodseq = max(self.highestmodseq, highestmodseq)
        if self.condstore:
            if expunged:
                # RFC 7162 §3.2.7 / §3.2.10: after expunges, the HIGHESTMODSEQ that covers them.
                out.append(self.highestmodseq_response())
            elif fetches:
                out += self.floor_response()
        self._applied, self._applied_condstore = records, self.condstore
        return out
