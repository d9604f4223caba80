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
That makes the sidecar cheap to keep safe. It is written under the dotlock
`mailkeep-modseq.lock` into the lock file and renamed over the sidecar (readers see the old
file or the new one), but not fsynced: if a crash brings back an older sidecar, the changes
it forgot are found again by the next snapshot and get new values from the clock, which are
above anything handed out before the crash (a folder would need more than a million changes
per second to overtake the clock). So a client's remembered MODSEQ never looks newer than
the folder and no value is ever given to two different changes, without an fsync on every
flag change. A sidecar that is missing or belongs to an old UIDVALIDITY starts over the
same way.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.store.maildir.dotlock import Dotlock, LockError

SIDECAR_NAME = "mailkeep-modseq"
_MAGIC = "mailkeep-modseq 1"
# Expunges remembered for QRESYNC VANISHED (RFC 7162 §3.2.5.2); older ones are summed up by
# the low-water mark, below which a resync is answered from the UID range instead.
MAX_EXPUNGE_LOG = 20_000
PARSE_CACHE_ENTRIES = 256


class ModseqError(Exception):
    """The sidecar cannot be read or written (ours; the snapshot goes on without it)."""


def flags_signature(flags: Iterable[str]) -> int:
    return zlib.crc32("\n".join(sorted(flags)).encode("utf-8", "surrogateescape"))


@dataclass(slots=True)
class ModseqIndex:
    uidvalidity: int
    highest: int
    lowwater: int
    entries: dict[int, tuple[int, int]] = field(default_factory=dict)  # uid -> (modseq, sig)
    expunged: list[tuple[int, int]] = field(default_factory=list)      # (modseq, uid)

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
        head = lines[0].split(" ")
        if " ".join(head[:2]) != _MAGIC:
            raise ModseqError("not a mailkeep-modseq file")
        fields = {item[0]: int(item[1:]) for item in head[2:] if item}
        index = ModseqIndex(fields["V"], fields["H"], fields.get("L", fields["H"]))
        for line in lines[1:]:
            if not line:
                continue
            parts = line.split(" ")
            if parts[0] == "X":
                index.expunged.append((int(parts[1]), int(parts[2])))
            else:
                index.entries[int(parts[0])] = (int(parts[1]), int(parts[2], 16))
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise ModseqError(f"corrupt {SIDECAR_NAME}: {exc}") from None
    return index


def render(index: ModseqIndex) -> bytes:
    out = [f"{_MAGIC} V{index.uidvalidity} H{index.highest} L{index.lowwater}"]
    out += [f"{uid} {m} {sig:x}" for uid, (m, sig) in sorted(index.entries.items())]
    out += [f"X {m} {uid}" for m, uid in index.expunged]
    return ("\n".join(out) + "\n").encode("ascii")


_parsed: OrderedDict[str, tuple[tuple[int, int, int, int], ModseqIndex]] = OrderedDict()
_guard = threading.Lock()


def _copy(index: ModseqIndex) -> ModseqIndex:
    return ModseqIndex(index.uidvalidity, index.highest, index.lowwater, dict(index.entries),
                       list(index.expunged))


def read(folder: Path) -> ModseqIndex | None:
    """The sidecar (parsed again only when the file changed); None when there is none."""
    path = f"{folder}/{SIDECAR_NAME}"
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            with _guard:
                hit = _parsed.get(path)
                if hit is not None and hit[0] == identity:
                    return _copy(hit[1])
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModseqError(f"cannot read {SIDECAR_NAME}: {exc.strerror}") from None
    index = parse(data)
    # Replaced by rename only (a new inode each time), so the identity cannot repeat.
    with _guard:
        _parsed[path] = (identity, _copy(index))
        while len(_parsed) > PARSE_CACHE_ENTRIES:
            _parsed.popitem(last=False)
    return index


def _differences(index: ModseqIndex, flags_by_uid: Mapping[int, frozenset[str]],
                 signatures: dict[frozenset[str], int]) -> tuple[list[int], list[int]]:
    changed: list[int] = []
    for uid, flags in flags_by_uid.items():
        sig = signatures.get(flags)
        if sig is None:
            sig = signatures[flags] = flags_signature(flags)
        entry = index.entries.get(uid)
        if entry is None or entry[1] != sig:
            changed.append(uid)
    gone = [uid for uid in index.entries if uid not in flags_by_uid]
    return changed, gone


def update(folder: Path, uidvalidity: int,
           flags_by_uid: Mapping[int, frozenset[str]]) -> ModseqIndex:
    """The folder's MODSEQ index brought up to date with a snapshot (uid -> flags, without
    \\Recent). Blocking; writes only when something changed. ModseqError."""
    signatures: dict[frozenset[str], int] = {}
    current = read(folder)
    if current is not None and current.uidvalidity == uidvalidity:
        changed, gone = _differences(current, flags_by_uid, signatures)
        if not changed and not gone:
            return current
    try:
        with Dotlock(folder, SIDECAR_NAME) as lock:
            index = read(folder)
            if index is None or index.uidvalidity != uidvalidity:
                previous = index.highest if index is not None else 0
                index = ModseqIndex.fresh(uidvalidity)
                index.highest = index.lowwater = max(index.highest, previous + 1)
            changed, gone = _differences(index, flags_by_uid, signatures)
            if not changed and not gone:
                return index
            index.highest = max(index.highest + 1, time.time_ns() // 1000)
            modseq = index.highest
            for uid in changed:
                index.entries[uid] = (modseq, signatures[flags_by_uid[uid]])
            for uid in gone:
                del index.entries[uid]
                index.expunged.append((modseq, uid))
            if len(index.expunged) > MAX_EXPUNGE_LOG:
                dropped = index.expunged[:-MAX_EXPUNGE_LOG]
                index.lowwater = max(index.lowwater, *(m for m, _ in dropped))
                del index.expunged[:-MAX_EXPUNGE_LOG]
            lock.replace(render(index), durable=False)
            return index
    except (LockError, OSError) as exc:
        raise ModseqError(f"{SIDECAR_NAME}: {exc}") from None


def forget(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / SIDECAR_NAME).unlink()
