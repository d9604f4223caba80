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

Pure data: the records come from the store via the driver, duck-typed by `Record`.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Protocol

from mailkeep.proto.imap.render import fetch_response, response_code, untagged, untagged_status
from mailkeep.proto.imap.sequence import SequenceSet
from mailkeep.proto.imap.values import Atom, Value

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


class MailboxView:
    def __init__(self, folder: str, *, readonly: bool, uidvalidity: int, uidnext: int,
                 records: Sequence[Record], recent: Iterable[int]) -> None:
        self.folder = folder
        self.readonly = readonly
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.uids: list[int] = [r.uid for r in records]
        self.records: dict[int, Record] = {r.uid: r for r in records}
        self.flags: dict[int, frozenset[str]] = {r.uid: r.flags for r in records}
        self.recent: set[int] = set(recent) & set(self.uids)
        self.gone: set[int] = set()  # removed in the store; EXPUNGE not yet sent
        # The keywords the client has been told of (FLAGS, PERMANENTFLAGS); only grows.
        self.announced: set[str] = set(self.keywords())

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

    def set_flags(self, uid: int, flags: frozenset[str]) -> None:
        if uid in self.flags:
            self.flags[uid] = flags

    def expunge(self, uids: Iterable[int]) -> list[bytes]:
        """Remove these UIDs from the view; "* n EXPUNGE" lines, highest number first so
        that each number is right when the client reads it (RFC 3501 §7.4.1)."""
        doomed = set(uids) & set(self.records)
        if not doomed:
            return []
        out: list[bytes] = []
        for i in range(len(self.uids) - 1, -1, -1):
            u = self.uids[i]
            if u in doomed:
                out.append(untagged(f"{i + 1} EXPUNGE"))
        self.uids = [u for u in self.uids if u not in doomed]
        for u in doomed:
            del self.records[u]
            del self.flags[u]
            self.recent.discard(u)
            self.gone.discard(u)
        return out

    def update(self, records: Sequence[Record], *, claimed: Iterable[int] = (),
               allow_expunge: bool, with_uid: bool = False) -> list[bytes]:
        """Untagged responses that bring the client from the view to `records` (a fresh
        snapshot). `claimed`: new messages this session holds \\Recent for."""
        current = {r.uid: r for r in records}
        out: list[bytes] = []
        self.gone |= {u for u in self.uids if u not in current}
        if allow_expunge and self.gone:
            out += self.expunge(set(self.gone))
        fetches: list[bytes] = []
        changed: list[frozenset[str]] = []
        for seq, u in enumerate(self.uids, 1):
            rec = current.get(u)
            if rec is not None and rec.flags != self.flags[u]:
                changed.append(rec.flags)
                self.flags[u] = rec.flags
                self.records[u] = rec
                items: list[tuple[str, Value]] = [("FLAGS", flag_atoms(self.flags_of(u)))]
                if with_uid:
                    items.append(("UID", u))
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
                if r.uid in claimed_set:
                    self.recent.add(r.uid)
            out.append(untagged(f"{len(self.uids)} EXISTS"))
            out.append(untagged(f"{len(self.recent)} RECENT"))
        if records:
            self.uidnext = max(self.uidnext, records[-1].uid + 1)
        return out
