"""The UID index of one Maildir, in Dovecot's `dovecot-uidlist` format (version 3).

One index per Maildir folder, shared by every door: POP3 derives UIDL from it, IMAP will use
it for UIDs, and Dovecot pointed at the same tree reads and writes the same file.

Format (Dovecot wiki "MailboxFormat/Maildir", section "dovecot-uidlist"):

    3 V1700000000 N42 G4a7c...        header: version, UIDVALIDITY, next UID, mailbox GUID
    1 :1700000000.M1P2Q0.host,S=120,W=120
    2 W1234 :1700000001.M5P2Q1.host  record: UID, extension fields, ":" + filename base

The filename base is the file's name up to the maildir info separator (":2,FLAGS"), so a
message keeps its UID when it moves from new/ to cur/ or its flags change.

Writers hold the dotlock `dovecot-uidlist.lock` (dotlock.py). New records (APPEND, COPY,
deliveries) are appended to `dovecot-uidlist` in place and fdatasynced, as Dovecot does
(maildir_uidlist_sync_update()): the header's N then lags behind, and readers take the next
UID as the larger of N and the highest UID listed + 1, as Dovecot's reader does. Anything
else (records dropped after an expunge, a new folder, a new UIDVALIDITY) rewrites the whole
index like Dovecot's file_dotlock_replace(): into the lock file, renamed over
`dovecot-uidlist`. Readers need no lock: they see the old index or the new one, and a last
line still being appended is ignored (it has no newline yet).

What must be on disk before a client hears of it is a UID handed out (RFC 3501 §2.3.1.1: a
UID names one message for good), so appends and rewrites that hand out UIDs are synced. A
rewrite that only drops records of removed files is not: if a crash brings back the older
index, its extra records name files that are gone and the next sync drops them again.

Records of removed files are not dropped at once either: as Dovecot (maildir-uidlist.c,
UIDLIST_COMPRESS_PERCENTAGE), the index is rewritten without them only once they are more
than a quarter of it (KEEP_STALE). Until then an EXPUNGE writes nothing here, and new
records keep being appended; every reader skips a record whose file is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.store.maildir import listing, steps
from mailkeep.store.maildir.appendcache import AppendCache
from mailkeep.store.maildir.dotlock import Dotlock, LockError, NoSpace, no_space
from mailkeep.store.maildir.durable import fsync_dir
from mailkeep.store.maildir.layout import delivery_order
from mailkeep.store.maildir.steps import Steps

UIDLIST_NAME = "dovecot-uidlist"
# Dovecot's UIDLIST_COMPRESS_PERCENTAGE (75): records of removed files are dropped (the
# index rewritten) once the files still there are fewer than this share of the records.
KEEP_STALE = 0.75
LOCK_NAME = "dovecot-uidlist.lock"
# maildir(5) info separator; Dovecot compares names up to the first ':'.
INFO_SEPARATOR = listing.INFO_SEPARATOR
_HEADER_KEY = re.compile(r"^([A-Za-z])(.*)$")


# The index cannot be read or written (corrupt file, lock timeout, I/O error): ours.
UidlistError = LockError


def filename_base(name: str) -> str:
    """The part of a maildir file name that never changes: everything before ':2,FLAGS'."""
    return name.split(INFO_SEPARATOR, 1)[0]


def filename_flags(name: str) -> str:
    """The maildir flags of a file name ("" when it has no ':2,' info): e.g. "FS"."""
    _, sep, info = name.partition(INFO_SEPARATOR)
    if not sep or not info.startswith("2,"):
        return ""
    return info[2:]


@dataclass(frozen=True, slots=True)
class UidRecord:
    uid: int
    base: str
    extensions: tuple[str, ...] = ()


@dataclass(slots=True)
class Uidlist:
    uidvalidity: int
    next_uid: int
    guid: str
    records: dict[str, UidRecord] = field(default_factory=dict)  # base -> record, UID order
    header_extra: tuple[str, ...] = ()

    @classmethod
    def fresh(cls, now: float) -> Uidlist:
        # Dovecot: UIDVALIDITY of a new mailbox is the current time (RFC 3501 §2.3.1.1 only
        # asks that it never repeats for the same mailbox name with different UIDs).
        return cls(uidvalidity=max(1, int(now)), next_uid=1, guid=uuid.uuid4().hex)

    def by_uid(self) -> list[UidRecord]:
        return sorted(self.records.values(), key=lambda r: r.uid)


def parse(data: bytes) -> Uidlist:
    """Read versions 3 and 1 of the format; raise UidlistError on anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UidlistError("dovecot-uidlist is not UTF-8") from None
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1]:
        # A record still being appended by a writer (or cut short by a crash): not there yet.
        lines.pop()
    header = lines[0].split()
    if not header:
        raise UidlistError("dovecot-uidlist has no header")
    records: dict[str, UidRecord] = {}
    try:
        if header[0] == "1":  # version 1: "1 <uidvalidity> <nextuid>", records "<uid> <name>"
            result = Uidlist(int(header[1]), int(header[2]), uuid.uuid4().hex)
            for line in lines[1:]:
                if line.strip():
                    uid_text, name = line.split(" ", 1)
                    base = filename_base(name.strip())
                    records[base] = UidRecord(int(uid_text), base)
        elif header[0] == "3":
            uidvalidity = next_uid = 0
            guid = ""
            extra: list[str] = []
            for item in header[1:]:
                m = _HEADER_KEY.match(item)
                if m is None:
                    raise UidlistError(f"bad header field {item!r}")
                key, value = m.groups()
                if key == "V":
                    uidvalidity = int(value)
                elif key == "N":
                    next_uid = int(value)
                elif key == "G":
                    guid = value
                else:
                    extra.append(item)
            if uidvalidity <= 0 or next_uid <= 0:
                raise UidlistError("header lacks V or N")
            result = Uidlist(uidvalidity, next_uid, guid or uuid.uuid4().hex,
                             header_extra=tuple(extra))
            for line in lines[1:]:
                if not line.strip():
                    continue
                head, sep, name = line.partition(" :")
                if not sep:
                    raise UidlistError(f"record without ':filename': {line[:80]!r}")
                uid_text, *ext = head.split(" ")
                base = filename_base(name)
                records[base] = UidRecord(int(uid_text), base, tuple(x for x in ext if x))
        else:
            raise UidlistError(f"unsupported dovecot-uidlist version {header[0]!r}")
    except (ValueError, IndexError) as exc:
        raise UidlistError(f"corrupt dovecot-uidlist: {exc}") from None
    for rec in records.values():
        if rec.uid <= 0:
            raise UidlistError(f"UID {rec.uid} out of range")
        result.next_uid = max(result.next_uid, rec.uid + 1)
    result.records = dict(sorted(records.items(), key=lambda kv: kv[1].uid))
    return result


def render(uidlist: Uidlist) -> bytes:
    head = ["3", f"V{uidlist.uidvalidity}", f"N{uidlist.next_uid}", f"G{uidlist.guid}",
            *uidlist.header_extra]
    out = [" ".join(head)]
    for rec in uidlist.by_uid():
        out.append(" ".join((str(rec.uid), *rec.extensions, ":" + rec.base)))
    return ("\n".join(out) + "\n").encode("utf-8")


def scan(root: Path) -> dict[str, str]:
    """base -> "new/NAME" or "cur/NAME" for every message file (a fresh dict); a base in
    both (moving new/ -> cur/ during the look) is taken as cur/."""
    # new/ before cur/: a message moving new/ -> cur/ during the scan is then seen at least
    # once (a cur/-first scan could miss it in both places).
    new = listing.entries(root, "new")
    cur = listing.entries(root, "cur")
    found = dict(new) if new else {}
    if cur:
        found.update(cur)
    return found


def read(root: Path) -> Uidlist | None:
    try:
        data = (root / UIDLIST_NAME).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UidlistError(f"cannot read {UIDLIST_NAME}: {exc.strerror}") from None
    return parse(data)


PARSE_CACHE_ENTRIES = 256


def _copy(index: Uidlist) -> Uidlist:
    return Uidlist(index.uidvalidity, index.next_uid, index.guid, dict(index.records),
                   index.header_extra)


def _parse_more(index: Uidlist, more: bytes) -> Uidlist | None:
    """Records appended since `index` was parsed (what Dovecot and we append: new UIDs above
    every one listed), added to it; None for anything else (then the file is parsed whole)."""
    try:
        text = more.decode("utf-8")
    except UnicodeDecodeError:
        return None
    top = next(reversed(index.records.values())).uid if index.records else 0
    for line in text.split("\n"):
        if not line.strip():
            continue
        head, sep, name = line.partition(" :")
        if not sep:
            return None
        uid_text, *ext = head.split(" ")
        try:
            uid = int(uid_text)
        except ValueError:
            return None
        base = filename_base(name)
        if uid <= top or base in index.records:
            return None
        index.records[base] = UidRecord(uid, base, tuple(x for x in ext if x))
        index.next_uid = max(index.next_uid, uid + 1)
        top = uid
    return index


_parsed = AppendCache(_copy, PARSE_CACHE_ENTRIES)


def read_cached(root: Path, *, shared: bool = False) -> Uidlist | None:
    """read(), parsing only the records appended since the last look (appendcache.py); the
    result is the caller's to change, unless `shared`: then it may be the cached parse
    itself (no copy), for a caller that only reads it."""
    try:
        return _parsed.read(f"{root}/{UIDLIST_NAME}", parse, _parse_more, shared=shared)
    except OSError as exc:
        raise UidlistError(f"cannot read {UIDLIST_NAME}: {exc.strerror}") from None


def _too_stale(index: Uidlist, files: dict[str, str]) -> bool:
    """Are records of removed files more than KEEP_STALE allows (time to drop them)?"""
    return len(files) < KEEP_STALE * len(index.records)


def _assign(uidlist: Uidlist, files: Mapping[str, str], drop_missing: bool,
            skip: Set[str] = frozenset()) -> bool:
    """Give unlisted files (but those in `skip`) the next UIDs in delivery order; forget
    vanished ones. Changed? (Set differences of the key views: C speed, where a loop over
    a 10,000-message folder cost milliseconds per APPEND.)"""
    changed = False
    if drop_missing:
        for base in uidlist.records.keys() - files.keys():
            del uidlist.records[base]
            changed = True
    for base in sorted(files.keys() - uidlist.records.keys() - skip, key=delivery_order):
        uidlist.records[base] = UidRecord(uidlist.next_uid, base)
        uidlist.next_uid += 1
        changed = True
    return changed


# Indexes handed out for a folder whose index could not be written for lack of space (a new
# folder on a full disk): path -> index, so every look gives the same UIDVALIDITY, and the
# index written once space returns keeps it.
_placeholders: dict[str, Uidlist] = {}
_placeholders_guard = threading.Lock()


def placeholder(root: Path, clock: Callable[[], float] = time.time) -> Uidlist:
    """The empty index shown for a folder that has none and cannot get one (disk full)."""
    with _placeholders_guard:
        found = _placeholders.get(str(root))
        if found is None:
            found = _placeholders[str(root)] = Uidlist.fresh(clock())
        return _copy(found)


def pending_placeholder(root: Path) -> Uidlist | None:
    with _placeholders_guard:
        found = _placeholders.get(str(root))
    return None if found is None else _copy(found)


def _first_index(root: Path, clock: Callable[[], float]) -> Uidlist:
    """The index to write for a folder that has none: the placeholder clients already saw,
    or a fresh one."""
    found = pending_placeholder(root)
    return found if found is not None else Uidlist.fresh(clock())


def _replace(lock: Dotlock, root: Path, index: Uidlist, *, durable: bool = True) -> None:
    steps.run(_replace_steps(lock, root, index, durable=durable))


def _replace_steps(lock: Dotlock, root: Path, index: Uidlist, *, durable: bool = True,
                   settle: Sequence[Path] = ()) -> Steps[None]:
    data = render(index)

    def write() -> None:
        for directory in settle:
            fsync_dir(directory)
        lock.replace(data, durable=durable)

    yield write
    _parsed.prime(f"{root}/{UIDLIST_NAME}", data, index)  # no parse of what we just wrote
    if _placeholders:
        with _placeholders_guard:
            _placeholders.pop(str(root), None)


def _write_back(lock: Dotlock, root: Path, before: Uidlist | None, index: Uidlist) -> None:
    steps.run(_write_back_steps(lock, root, before, index))


def _write_back_steps(lock: Dotlock, root: Path, before: Uidlist | None, index: Uidlist,
                      settle: Sequence[Path] = ()) -> Steps[None]:
    """Put `index` on disk, `before` being what the file holds now (None: no file yet):
    new records only are appended (synced), records only dropped rewrite it unsynced, and
    anything else rewrites it synced (see the module docstring). The `settle` directories
    (where the caller renamed files in) are fsynced in the same step off the loop
    (steps.py), with the index's sync; if that fails, an appended record is cut off."""
    if before is None or (before.uidvalidity, before.guid, before.header_extra) != (
            index.uidvalidity, index.guid, index.header_extra):
        yield from _replace_steps(lock, root, index, settle=settle)
        return
    # Records are only ever added here (at the end of the dict: insertion order, UIDs from
    # next_uid up) or dropped, never replaced (a base keeps its UID): the added ones are the
    # tail at or above the old next_uid, and every old one is still there exactly when the
    # counts add up. O(new records), not O(folder): this runs at every APPEND.
    added: list[UidRecord] = []
    for rec in reversed(index.records.values()):
        if rec.uid < before.next_uid:
            break
        added.append(rec)
    kept = len(index.records) - len(added) == len(before.records)
    if not added:
        if len(index.records) != len(before.records) or index.next_uid != before.next_uid:
            yield from _replace_steps(lock, root, index, durable=False, settle=settle)
        elif settle:
            yield from _fsync_steps(settle, None)
        return
    if not kept:
        yield from _replace_steps(lock, root, index, settle=settle)
        return
    added.sort(key=lambda r: r.uid)
    lines = "".join(" ".join((str(r.uid), *r.extensions, ":" + r.base)) + "\n" for r in added)
    try:
        fd, size = lock.append_unsynced(lines.encode("utf-8"))
    except FileNotFoundError:  # removed behind our back (by hand): write it whole
        yield from _replace_steps(lock, root, index, settle=settle)
        return
    try:
        yield from _fsync_steps(settle, fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # the file never keeps a record whose sync failed
        raise
    finally:
        os.close(fd)


def _fsync_steps(directories: Sequence[Path], data_fd: int | None) -> Steps[None]:
    """One step off the loop: fsync the directories (opened and closed here, on the loop)
    and fdatasync `data_fd`. NoSpace."""
    fds: list[int] = []
    try:
        for directory in directories:
            fds.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
        yield steps.Sync(files=tuple(fds), data=() if data_fd is None else (data_fd,))
    except OSError as exc:
        if no_space(exc):
            raise NoSpace(f"cannot write {UIDLIST_NAME}: {exc.strerror}") from exc
        raise
    finally:
        for fd in fds:
            os.close(fd)


def sync(root: Path, clock: Callable[[], float] = time.time) -> tuple[Uidlist, dict[str, str]]:
    """The index brought up to date with the files, and base -> current relative path.

    Blocking (run it off the event loop). Without new files (or too many vanished ones:
    KEEP_STALE) nothing is written and no lock is taken.

    When the index cannot be written for lack of space, the index as it is comes back: files
    without a UID are left out (callers skip them) until space returns, and UIDs of removed
    files stay listed (callers skip those too). A UID is handed out only once it is on disk:
    RFC 3501 §2.3.1.1, a UID once seen must name that message for good, and one we could not
    write might be given to another message after a crash."""
    try:
        current = read_cached(root)
        files = scan(root)
        if current is not None and files.keys() <= current.records.keys() \
                and not _too_stale(current, files):
            return current, files
        try:
            with Dotlock(root, UIDLIST_NAME) as lock:
                on_disk = read_cached(root, shared=True)  # we change only our copy
                current = _copy(on_disk) if on_disk is not None else _first_index(root, clock)
                files = scan(root)
                drop = _too_stale(current, files)
                if drop:
                    # A rename seen half-way by readdir can hide a file for a moment: look
                    # twice before forgetting a UID (a forgotten UID is never handed out again).
                    files = scan(root)
                if _assign(current, files, drop_missing=drop and _too_stale(current, files)):
                    _write_back(lock, root, on_disk, current)
                return current, files
        except NoSpace:
            return read(root) or placeholder(root, clock), scan(root)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise UidlistError(f"maildir {root} vanished") from None
        raise UidlistError(f"{UIDLIST_NAME}: {exc.strerror}") from None


def uid_order(uidlist: Uidlist, files: Iterable[str]) -> list[UidRecord]:
    """The records of the given bases, in UID order (bases without a UID are skipped)."""
    wanted = set(files)
    return [r for r in uidlist.by_uid() if r.base in wanted]


def _assign_ordered(current: Uidlist, files: dict[str, str], ordered: Sequence[str]) -> None:
    """Unlisted files get UIDs: the bases in `ordered` in exactly that order, after any
    other unlisted file (deliveries); records of vanished files are dropped once they pass
    KEEP_STALE, as sync() does (dropping them at every APPEND rewrote and synced the whole
    index each time, where appending the new records is enough)."""
    mine = [b for b in ordered if b in files and b not in current.records]
    _assign(current, files, drop_missing=False, skip=set(mine))
    for base in mine:
        current.records[base] = UidRecord(current.next_uid, base)
        current.next_uid += 1
    if _too_stale(current, files):
        for base in [b for b in current.records if b not in files]:
            del current.records[base]


def assign(root: Path, ordered: list[str], clock: Callable[[], float] = time.time
           ) -> tuple[Uidlist, dict[str, str]]:
    """Like sync(), but the bases in `ordered` (files already moved in by us: RENAME INBOX)
    get their UIDs in exactly that order, after any other unlisted file. NoSpace."""
    try:
        with Dotlock(root, UIDLIST_NAME) as lock:
            current = read(root) or _first_index(root, clock)
            files = scan(root)
            _assign_ordered(current, files, ordered)
            _replace(lock, root, current)
            return current, files
    except OSError as exc:
        raise UidlistError(f"{UIDLIST_NAME}: {exc.strerror}") from None


def publish(root: Path, move_in: Callable[[], Sequence[str]],
            withdraw: Callable[[Sequence[str]], None],
            clock: Callable[[], float] = time.time) -> Uidlist:
    """Make new messages visible and give them UIDs in one step (APPEND, COPY).

    Under the index lock, `move_in` renames the messages from tmp/ into new/ and returns their
    bases in UID order. If their UIDs cannot be written (disk full, I/O error), `withdraw`
    takes them out again before the lock is released: a client told NO never finds the
    message later, so its retry cannot duplicate it (issue 7, item 6). If the lock cannot be
    taken, nothing was moved in. Raises NoSpace / UidlistError."""
    return steps.run(publish_steps(root, move_in, withdraw, clock=clock))


def publish_steps(root: Path, move_in: Callable[[], Sequence[str]],
                  withdraw: Callable[[Sequence[str]], None], *,
                  settle: Sequence[Path] = (),
                  clock: Callable[[], float] = time.time) -> Steps[Uidlist]:
    """publish() as steps (steps.py); the `settle` directories (where move_in renames to)
    are fsynced off the loop with the index's own sync, both before the lock is let go."""
    try:
        with Dotlock(root, UIDLIST_NAME) as lock:
            on_disk = read_cached(root, shared=True)  # we change only our copy
            current = _copy(on_disk) if on_disk is not None else _first_index(root, clock)
            bases = move_in()
            try:
                files = scan(root)
                _assign_ordered(current, files, bases)
                yield from _write_back_steps(lock, root, on_disk, current, settle)
            except BaseException:
                withdraw(bases)
                raise
            return current
    except OSError as exc:
        raise UidlistError(f"{UIDLIST_NAME}: {exc.strerror}") from None


def create(root: Path, uidvalidity: int, clock: Callable[[], float] = time.time) -> Uidlist:
    """Write an empty index with this UIDVALIDITY unless one exists (new folder). NoSpace."""
    try:
        with Dotlock(root, UIDLIST_NAME) as lock:
            current = read(root)
            if current is not None:
                return current
            current = Uidlist.fresh(clock())
            current.uidvalidity = uidvalidity
            _replace(lock, root, current)
            return current
    except OSError as exc:
        raise UidlistError(f"{UIDLIST_NAME}: {exc.strerror}") from None
