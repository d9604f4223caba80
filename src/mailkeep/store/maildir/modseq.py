"""Per-folder modification sequences (RFC 7162 CONDSTORE/QRESYNC), beside the UID index.

Maildir keeps no history: a flag change is a rename, an expunge an unlink, and Dovecot keeps
its MODSEQs in index files we do not share. So each folder gets a sidecar file that Dovecot
ignores, `mailkeep-modseq`:

    mailkeep-modseq 1 V<uidvalidity> H<highest> L<lowwater>
    <uid> <modseq> <flags signature>          one line per message
    X <modseq> <uid>                          expunge log (QRESYNC VANISHED)

Whenever a snapshot of the folder shows something the sidecar does not know -- a new UID, a
message whose flags differ from the signature recorded, a UID gone -- those messages get the
next MODSEQ (one value per update: RFC 7162 §3.1 lets one operation's changes share it) and
the gone ones go into the expunge log. So changes made by anyone (this process, another
worker, Dovecot, a script renaming files) get a MODSEQ the first time a snapshot sees them,
and a client resyncing later is told exactly what changed since its MODSEQ.

MODSEQs follow the clock: each new value is max(HIGHESTMODSEQ + 1, now in microseconds).
That makes the sidecar cheap to keep safe. Under the dotlock `mailkeep-modseq.lock`, an
update appends its lines to the sidecar (later lines win: a message's new line replaces its
old one, an X line removes it; the header's H lags and readers take the highest value
listed), and once the file holds more than COMPACT_FACTOR times the lines it needs it is
rewritten whole into the lock file and renamed over it. Nothing is fsynced, and appending
avoids a rename per flag change (ext4 flushes a file renamed over another at once): if a
crash loses lines or leaves half of one (ignored: it has no newline), the changes it forgot
are found again by the next snapshot and get new values from the clock, which are above
anything handed out before the crash (a folder would need more than a million changes per
second to overtake the clock). So a client's remembered MODSEQ never looks newer than the
folder and no value is ever given to two different changes, without an fsync on every flag
change. A sidecar that is missing, unreadable or of an old UIDVALIDITY starts over the same
way.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.store.maildir.appendcache import AppendCache
from mailkeep.store.maildir.dotlock import Dotlock, LockError

SIDECAR_NAME = "mailkeep-modseq"
_MAGIC = "mailkeep-modseq 1"
# Expunges remembered for QRESYNC VANISHED (RFC 7162 §3.2.5.2); older ones are summed up by
# the low-water mark, below which a resync is answered from the UID range instead.
MAX_EXPUNGE_LOG = 20_000
# ... cut back to that many once it holds this many more (a cut rewrites the sidecar: once
# per EXPUNGE_LOG_SLACK expunges, not at every one).
EXPUNGE_LOG_SLACK = 2_000
# ExpungeLog additions chained before the log is made one tuple again.
FLATTEN_AFTER = 64
PARSE_CACHE_ENTRIES = 256
# Appended lines are compacted away (one rewrite) once the file has this many times the
# lines its state needs, plus COMPACT_SLACK: a bounded file, one rename per many updates.
COMPACT_FACTOR = 2
COMPACT_SLACK = 64


class ModseqError(Exception):
    """The sidecar cannot be read or written (ours; the snapshot goes on without it)."""


def flags_signature(flags: Iterable[str]) -> int:
    return zlib.crc32("\n".join(sorted(flags)).encode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class ExpungeLog:
    """The expunge log, (modseq, uid) oldest first. Persistent: copies of an index share it,
    and adding to it costs what is added, not the length of the log (a list copied whole
    at every expunge was a fifth of a snapshot's time with a few thousand entries). The
    chain of additions is flattened every FLATTEN_AFTER of them."""

    older: ExpungeLog | None = None
    newer: tuple[tuple[int, int], ...] = ()
    size: int = 0
    depth: int = 0

    def plus(self, more: Sequence[tuple[int, int]]) -> ExpungeLog:
        if not more:
            return self
        if self.depth >= FLATTEN_AFTER:
            return ExpungeLog(None, (*self.items(), *more), self.size + len(more), 0)
        return ExpungeLog(self if self.size else None, tuple(more), self.size + len(more),
                          self.depth + 1)

    def items(self) -> list[tuple[int, int]]:
        chunks: list[tuple[tuple[int, int], ...]] = []
        node: ExpungeLog | None = self
        while node is not None:
            chunks.append(node.newer)
            node = node.older
        out: list[tuple[int, int]] = []
        for chunk in reversed(chunks):
            out.extend(chunk)
        return out

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.items())


@dataclass(slots=True)
class ModseqIndex:
    uidvalidity: int
    highest: int
    lowwater: int
    entries: dict[int, tuple[int, int]] = field(default_factory=dict)  # uid -> (modseq, sig)
    # Shared between copies (it can hold MAX_EXPUNGE_LOG items): persistent.
    expunged: ExpungeLog = field(default_factory=ExpungeLog)
    lines: int = 0  # lines in the file it was read from (appended ones included)

    @classmethod
    def fresh(cls, uidvalidity: int) -> ModseqIndex:
        start = time.time_ns() // 1000
        return cls(uidvalidity, start, start)

    def modseqs(self) -> dict[int, int]:
        return {uid: m for uid, (m, _) in self.entries.items()}

    def vanished_since(self, modseq: int) -> tuple[list[int], bool]:
        """UIDs expunged after `modseq`, and whether the log reaches back that far (False:
        the caller must assume every UID it knows and cannot see may be gone)."""
        uids = sorted({uid for m, uid in self.expunged if m > modseq})
        return uids, modseq >= self.lowwater


def parse(data: bytes) -> ModseqIndex:
    try:
        lines = data.decode("ascii").split("\n")
        if len(lines) > 1 and lines[-1]:
            lines.pop()  # still being appended, or cut short by a crash: not there yet
        head = lines[0].split(" ")
        if " ".join(head[:2]) != _MAGIC:
            raise ModseqError("not a mailkeep-modseq file")
        fields = {item[0]: int(item[1:]) for item in head[2:] if item}
        index = ModseqIndex(fields["V"], fields["H"], fields.get("L", fields["H"]))
        _apply(index, lines[1:])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise ModseqError(f"corrupt {SIDECAR_NAME}: {exc}") from None
    return index


def _apply(index: ModseqIndex, lines: list[str]) -> None:
    highest = index.highest
    expunged: list[tuple[int, int]] = []
    for line in lines:
        if not line:
            continue
        index.lines += 1
        parts = line.split(" ")
        if parts[0] == "X":
            modseq, uid = int(parts[1]), int(parts[2])
            expunged.append((modseq, uid))
            index.entries.pop(uid, None)
        else:
            modseq = int(parts[1])
            index.entries[int(parts[0])] = (modseq, int(parts[2], 16))
        highest = max(highest, modseq)
    index.highest = highest
    if expunged:
        index.expunged = index.expunged.plus(expunged)


def _parse_more(index: ModseqIndex, more: bytes) -> ModseqIndex:
    """Lines appended since `index` was parsed, applied to it."""
    try:
        _apply(index, more.decode("ascii").split("\n"))
    except (UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ModseqError(f"corrupt {SIDECAR_NAME}: {exc}") from None
    return index


def _entry_line(uid: int, modseq: int, sig: int) -> str:
    return f"{uid} {modseq} {sig:x}\n"


def render(index: ModseqIndex) -> bytes:
    out = [f"{_MAGIC} V{index.uidvalidity} H{index.highest} L{index.lowwater}\n"]
    out += [_entry_line(uid, m, sig) for uid, (m, sig) in sorted(index.entries.items())]
    out += [f"X {m} {uid}\n" for m, uid in index.expunged]
    return "".join(out).encode("ascii")


def _copy(index: ModseqIndex) -> ModseqIndex:
    return ModseqIndex(index.uidvalidity, index.highest, index.lowwater, dict(index.entries),
                       index.expunged, index.lines)


_parsed = AppendCache(_copy, PARSE_CACHE_ENTRIES)


def read(folder: Path, *, shared: bool = False) -> ModseqIndex | None:
    """The sidecar (only lines appended since the last look are parsed: appendcache.py);
    None when there is none. `shared`: the caller only reads it (no copy is made)."""
    try:
        return _parsed.read(f"{folder}/{SIDECAR_NAME}", parse, _parse_more, shared=shared)
    except OSError as exc:
        raise ModseqError(f"cannot read {SIDECAR_NAME}: {exc.strerror}") from None


@dataclass(frozen=True, slots=True)
class Delta:
    """What changed since a snapshot after whose update the sidecar's HIGHESTMODSEQ was
    `highest`: UID -> flags of the messages whose flags may differ (new flags, new
    messages) and the UIDs gone. While the sidecar still has that HIGHESTMODSEQ nobody has
    changed it (every change raises it), so its other entries still match the flags they
    matched then, and only these need comparing: the cost follows the change, not the
    folder (comparing every message took 3 ms of a 10,000-message snapshot)."""

    highest: int
    changed: Mapping[int, frozenset[str]]
    gone: Sequence[int]


FlagsByUid = Mapping[int, frozenset[str]]


def _differences(index: ModseqIndex, flags_by_uid: Callable[[], FlagsByUid],
                 signatures: dict[frozenset[str], int],
                 delta: Delta | None) -> tuple[list[int], list[int], FlagsByUid]:
    """The UIDs whose flags differ from the sidecar's, the sidecar's UIDs gone, and the
    flags they were compared with."""
    if delta is not None and delta.highest and index.highest == delta.highest:
        wanted = delta.changed
        gone = [uid for uid in delta.gone if uid in index.entries]
    else:
        wanted = flags_by_uid()
        gone = [uid for uid in index.entries if uid not in wanted]
    changed: list[int] = []
    for uid, flags in wanted.items():
        sig = signatures.get(flags)
        if sig is None:
            sig = signatures[flags] = flags_signature(flags)
        entry = index.entries.get(uid)
        if entry is None or entry[1] != sig:
            changed.append(uid)
    return changed, gone, wanted


class _Once:
    """The flags by UID, from a function called the first time they are asked for (a
    functools.cache made per snapshot cost more than the call it saved)."""

    __slots__ = ("_given", "_value")

    def __init__(self, given: FlagsByUid | Callable[[], FlagsByUid]) -> None:
        self._given = given
        self._value: FlagsByUid | None = None

    def __call__(self) -> FlagsByUid:
        if self._value is None:
            given = self._given
            self._value = given() if callable(given) else given
        return self._value


def update(folder: Path, uidvalidity: int,
           flags_by_uid: FlagsByUid | Callable[[], FlagsByUid],
           delta: Delta | None = None) -> ModseqIndex:
    """The folder's MODSEQ index brought up to date with a snapshot (uid -> flags, without
    \\Recent; or a function giving them, asked only when `delta` cannot be used).
    Blocking; writes only when something changed. ModseqError."""
    signatures: dict[frozenset[str], int] = {}
    all_flags = _Once(flags_by_uid)  # asked at most once, only if the delta cannot be used

    seen: tuple[int, list[int], list[int], FlagsByUid] | None = None
    current: ModseqIndex | None = None
    if delta is None or not (delta.changed or delta.gone):
        # A look without the lock first: most snapshots find nothing to write. (With
        # changes in the delta -- a session's own APPEND, STORE or EXPUNGE -- there almost
        # always is something, and the look under the lock is the only one needed.)
        try:
            current = read(folder, shared=True)  # returned unchanged, or only compared
        except ModseqError:
            current = None  # looked at again under the lock, and started over
    if current is not None and current.uidvalidity == uidvalidity:
        changed, gone, wanted = _differences(current, all_flags, signatures, delta)
        if not changed and not gone:
            return current
        seen = (current.highest, changed, gone, wanted)
    try:
        with Dotlock(folder, SIDECAR_NAME) as lock:
            try:
                index = read(folder)
            except ModseqError:
                index = None  # unreadable: starts over from the clock (module docstring)
            rewrite = index is None or index.uidvalidity != uidvalidity
            if index is None or index.uidvalidity != uidvalidity:
                previous = index.highest if index is not None else 0
                index = ModseqIndex.fresh(uidvalidity)
                index.highest = index.lowwater = max(index.highest, previous + 1)
            if seen is not None and not rewrite and index.highest == seen[0]:
                # Unchanged since the look above (every change raises HIGHESTMODSEQ): the
                # same differences, not computed twice.
                _, changed, gone, wanted = seen
            else:
                changed, gone, wanted = _differences(index, all_flags, signatures, delta)
            if not changed and not gone:
                return index
            index.highest = max(index.highest + 1, time.time_ns() // 1000)
            modseq = index.highest
            added: list[str] = []
            for uid in changed:
                sig = signatures[wanted[uid]]
                index.entries[uid] = (modseq, sig)
                added.append(_entry_line(uid, modseq, sig))
            for uid in gone:
                del index.entries[uid]
                added.append(f"X {modseq} {uid}\n")
            if gone:
                index.expunged = index.expunged.plus([(modseq, uid) for uid in gone])
            if len(index.expunged) > MAX_EXPUNGE_LOG + EXPUNGE_LOG_SLACK:
                log = index.expunged.items()
                dropped = log[:-MAX_EXPUNGE_LOG]
                index.lowwater = max(index.lowwater, *(m for m, _ in dropped))
                index.expunged = ExpungeLog(None, tuple(log[-MAX_EXPUNGE_LOG:]),
                                            MAX_EXPUNGE_LOG)
                rewrite = True
            index.lines += len(added)
            needed = len(index.entries) + len(index.expunged)
            if rewrite or index.lines > COMPACT_FACTOR * needed + COMPACT_SLACK:
                _replace(lock, folder, index, needed)
            else:
                try:
                    lock.append("".join(added).encode("ascii"), durable=False)
                except FileNotFoundError:  # removed by hand meanwhile: write it whole
                    _replace(lock, folder, index, needed)
            return index
    except (LockError, OSError) as exc:
        raise ModseqError(f"{SIDECAR_NAME}: {exc}") from None


def _replace(lock: Dotlock, folder: Path, index: ModseqIndex, lines: int) -> None:
    index.lines = lines
    data = render(index)
    lock.replace(data, durable=False)
    _parsed.prime(f"{folder}/{SIDECAR_NAME}", data, index)  # no parse of what we wrote


def forget(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / SIDECAR_NAME).unlink()
