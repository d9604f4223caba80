"""IMAP message operations on one Maildir folder (blocking: run them off the event loop).

Messages are named by their filename base (the name before ":2,"), which the
dovecot-uidlist maps to a UID; the info suffix carries the flags, so every flag change is a
rename. Renames race with other sessions and with Dovecot: a failed rename (ENOENT) means the
file moved, so we find it again by its base in new/ and cur/ and retry, or it is gone.

\\Recent (RFC 3501 §2.3.2) is "still in new/": claim_recent() moves new/ files to cur/, and
exactly one caller's rename succeeds for each file, so exactly one session sees it \\Recent.
APPEND and COPY therefore put their files in new/ (with the flags already in the name, as
Dovecot does for flagged files in new/): the copy or appended message is \\Recent for the
next session that claims it (RFC 3501 §6.4.7: "the \\Recent flag SHOULD be set on the copy").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from mailkeep.fsmodes import create_file
from mailkeep.store.base import (
    Appended,
    FolderSnapshot,
    MessageGone,
    MessageRecord,
    NewMessage,
    NoSuchFolder,
)
from mailkeep.store.maildir import echo, folders, modseq, steps, uidlist
from mailkeep.store.maildir import flags as mflags
from mailkeep.store.maildir.dotlock import NO_SPACE_ERRNOS, no_space
from mailkeep.store.maildir.durable import fsync_dir, stage_tmp
from mailkeep.store.maildir.layout import ensure_maildir, unique_name
from mailkeep.store.maildir.maildrop import crlf_size
from mailkeep.store.maildir.settle import settled
from mailkeep.store.maildir.steps import Steps
from mailkeep.store.names import INBOX, flag_set, folder_name, keywords_of

log = logging.getLogger("mailkeep.store")

_SIZE_FIELDS = re.compile(r",([SW])=(\d+)")
# Attempts to chase a message that other sessions keep renaming before we give up on it.
RENAME_ATTEMPTS = 5
DELETED_LETTER = "T"


def open_folder(root: Path, name: str) -> Path:
    """The Maildir of an existing folder, with its index. NoSuchFolder."""
    name = folder_name(name)
    path = folders.folder_path(root, name)
    if name == INBOX:
        ensure_maildir(root)
    elif not path.is_dir():
        raise NoSuchFolder(f"mailbox {name} does not exist")
    else:
        ensure_maildir(path)
    folders.ensure_index(root, path)
    return path



def _relocate(path: Path, base: str) -> str | None:
    return uidlist.scan(path).get(base)


def _size(path: Path, location: str) -> int:
    fields = dict(_SIZE_FIELDS.findall(uidlist.filename_base(location.split("/", 1)[1])))
    if "W" in fields:
        return int(fields["W"])
    return crlf_size(path / location)


# -- snapshots, and what lets the next one skip the work --------------------------------
#
# A snapshot reads the index, lists new/ and cur/, and needs each message's INTERNALDATE
# (the file's mtime) and size. Two things make repeating it cheap:
#
# * Facts per filename base: a message's mtime and size never change while its base is the
#   same (flag changes and new/ -> cur/ are renames, which keep the mtime; the content of a
#   Maildir file is never rewritten), so they are stat()ed once, not on every command.
# * A folder signature: the (inode, size, mtime, ctime) of new/, cur/, dovecot-uidlist and
#   dovecot-keywords. Every change a snapshot can see (a file added, removed or renamed; the
#   index or keyword table replaced or appended to) changes one of them, so an unchanged
#   signature means an unchanged snapshot (Dovecot's maildir sync skips the readdir the same
#   way). Timestamps are coarse (a kernel tick, or a second on some filesystems), so two
#   changes close together can leave the same mtime: a signature is trusted only when all
#   its times are settled (settle.py: older than one clock step, 25 ms on filesystems with
#   sub-second times, a second otherwise); a folder changed more recently is scanned again
#   (only what changed is worked on: _records_since, listing.py).

_WATCHED = ("new", "cur", uidlist.UIDLIST_NAME, mflags.KEYWORDS_NAME)
StatKey = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
Signature = tuple[StatKey | None, ...]


@dataclass(frozen=True, slots=True)
class FolderCache:
    """What one snapshot learned, for the next snapshot of the same folder."""

    signature: Signature | None  # None: changed too recently to vouch for the snapshot
    snapshot: FolderSnapshot
    where: Mapping[str, str]
    facts: Mapping[str, tuple[datetime, int]]  # base -> (INTERNALDATE, RFC822.SIZE)
    keywords: Mapping[int, str] | None = None  # dovecot-keywords when it was taken


def signature(path: Path, now_ns: int | None = None) -> Signature | None:
    """The folder's change signature, or None when it changed too recently to be trusted."""
    now = time.time_ns() if now_ns is None else now_ns
    keys: list[StatKey | None] = []
    for name in _WATCHED:
        try:
            st = os.stat(f"{path}/{name}")
        except FileNotFoundError:
            keys.append(None)
            continue
        if not settled(st, now):
            return None
        keys.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(keys)


def _record_facts(path: Path, base: str, location: str) -> tuple[datetime, int, str]:
    """INTERNALDATE (the mtime), size and current location of a message file, chasing
    renames; FileNotFoundError when it is gone."""
    for _ in range(RENAME_ATTEMPTS):
        try:
            mtime = os.stat(f"{path}/{location}").st_mtime
            size = _size(path, location)
        except FileNotFoundError:
            found = _relocate(path, base)
            if found is None:
                raise
            location = found
            continue
        return datetime.fromtimestamp(int(mtime), UTC), size, location
    raise FileNotFoundError(location)


def snapshot(root: Path, name: str, previous: FolderCache | None = None,
             reuse: bool = True) -> FolderCache:
    """The folder's state, with key -> location ("cur/NAME:2,S") as hints for reading.

    `previous` (the last result for this folder) is returned as it is when the folder's
    signature says nothing changed and `reuse` allows it; its facts are reused otherwise."""
    # The signature first: an unchanged folder needs nothing else (open_folder's checks
    # included: a folder deleted since changes the signature).
    sig = signature(folders.folder_path(root, folder_name(name)))
    if previous is not None and reuse and sig is not None and sig == previous.signature:
        return previous
    path = open_folder(root, name)
    index, files = uidlist.sync(path)
    keywords = mflags.read_keywords(path)
    delta: modseq.Delta | None = None
    if previous is not None and previous.keywords == keywords \
            and previous.snapshot.uidvalidity == index.uidvalidity:
        changes: _Changes = ({}, [])
        records, where, facts, unclaimed = _records_since(path, index, files, keywords,
                                                          previous, changes=changes)
        # The sidecar compares only what changed, if nobody changed it since (modseq.Delta).
        delta = modseq.Delta(previous.snapshot.highestmodseq, *changes)
    else:
        records, where, facts, unclaimed = _records(
            path, index, files, keywords, previous.facts if previous is not None else {})
    try:
        modseqs = modseq.update(path, index.uidvalidity,
                                lambda: {r.uid: r.flags for r in records}, delta)
    except modseq.ModseqError as exc:
        # CONDSTORE clients then see no MODSEQ changes until the sidecar is writable again
        # (a full disk); everything else works on.
        log.warning("%s: MODSEQ not updated: %s", path, exc)
        highest, by_uid = 0, {}
    else:
        highest, by_uid = modseqs.highest, modseqs.modseqs()
    snap = FolderSnapshot(index.uidvalidity, index.next_uid, tuple(records),
                          frozenset(unclaimed), highest, by_uid)
    if len(where) < len(files):
        # Files without a UID (the index could not be written: disk full): the next
        # snapshot must look again, though nothing it watches may change when space returns.
        sig = None
    return FolderCache(sig, snap, where, facts, keywords)


_Records = tuple[list[MessageRecord], Mapping[str, str],
                 Mapping[str, tuple[datetime, int]], set[int]]


def _records(path: Path, index: uidlist.Uidlist, files: Mapping[str, str],
             keywords: Mapping[int, str],
             known: Mapping[str, tuple[datetime, int]]) -> _Records:
    """Every message's record, from the index and the files (dates and sizes in `known`
    are not looked up again)."""
    records: list[MessageRecord] = []
    where: dict[str, str] = {}
    facts: dict[str, tuple[datetime, int]] = {}
    flag_sets: dict[str, frozenset[str]] = {}  # ":2," letters -> flags (few distinct ones)
    unclaimed: set[int] = set()
    for rec in index.by_uid():
        location = files.get(rec.base)
        if location is None:
            continue
        fact = known.get(rec.base)
        if fact is None:
            try:
                when, size, location = _record_facts(path, rec.base, location)
            except FileNotFoundError:
                continue
            fact = (when, size)
        facts[rec.base] = fact
        letters = uidlist.filename_flags(location.split("/", 1)[1])
        flags = flag_sets.get(letters)
        if flags is None:
            flags = flag_sets[letters] = mflags.from_info(letters, keywords)
        records.append(MessageRecord(rec.uid, rec.base, flags, fact[0], fact[1]))
        where[rec.base] = location
        if location.startswith("new/"):
            unclaimed.add(rec.uid)
    return records, where, facts, unclaimed


# UID -> flags of the records that are not the previous snapshot's (new flags, new
# messages), and the previous snapshot's UIDs gone since.
_Changes = tuple[dict[int, frozenset[str]], list[int]]


def _records_since(path: Path, index: uidlist.Uidlist, files: Mapping[str, str],
                   keywords: Mapping[int, str], previous: FolderCache, *,
                   changes: _Changes) -> _Records:
    """_records(), reusing the previous snapshot's record of every message whose file
    name (so its flags) is unchanged: the cost follows what changed, not the folder size
    (the keywords and UIDVALIDITY are the previous ones: the caller checked). What changed
    is added to `changes`."""
    changed, gone = changes
    before = previous.where
    records: list[MessageRecord] = []
    flag_sets: dict[str, frozenset[str]] = {}
    unclaimed: set[int] = set()
    by_base = index.records
    removed = False
    renumbered: list[str] = []  # vanished for a moment and listed again under a new UID
    for old in previous.snapshot.messages:
        base = old.key
        location = files.get(base)
        rec = by_base.get(base)
        if location is None or rec is None or rec.uid != old.uid:
            removed = True
            gone.append(old.uid)
            if location is not None and rec is not None:
                renumbered.append(base)
            continue
        if location != before.get(base):
            letters = uidlist.filename_flags(location.split("/", 1)[1])
            flags = flag_sets.get(letters)
            if flags is None:
                flags = flag_sets[letters] = mflags.from_info(letters, keywords)
            records.append(MessageRecord(old.uid, base, flags, old.internaldate, old.size))
            changed[old.uid] = flags
        else:
            records.append(old)  # same file name: same flags
        if location[0] == "n":  # "new/..."
            unclaimed.add(old.uid)
    added = [b for b in files.keys() - before.keys() if b in by_base] + renumbered
    facts: Mapping[str, tuple[datetime, int]] = previous.facts
    if added:
        extra, _, new_facts, extra_unclaimed = _records(
            path, uidlist.Uidlist(index.uidvalidity, index.next_uid, index.guid,
                                  {b: by_base[b] for b in added}),
            files, keywords, {})
        if extra and extra[0].uid < (records[-1].uid if records else 0):
            records = sorted(records + extra, key=lambda r: r.uid)
        else:
            records += extra
        unclaimed |= extra_unclaimed
        facts = {**facts, **new_facts}
        changed.update((r.uid, r.flags) for r in extra)
    if removed:
        facts = {r.key: (r.internaldate, r.size) for r in records}
    if len(records) == len(files):  # every file has its record (the usual case)
        where: Mapping[str, str] = files
    else:
        where = {r.key: files[r.key] for r in records}
    return records, where, facts, unclaimed


def claim_recent(root: Path, name: str, seen: Mapping[int, str] | None = None,
                 moved: dict[str, str] | None = None) -> set[int]:
    """Move new/ files to cur/ (keeping their flags); the UIDs whose move was ours.

    `seen`: UID -> location ("new/NAME") of the unclaimed messages the caller's snapshot
    showed; only those are claimed, with no new look at the folder (a message that came
    after that snapshot is claimed by the session whose snapshot shows it). `moved` is
    given base -> new location ("cur/NAME:2,") of each file moved, for the caller's
    location hints (without them the next read of the message looks in new/ first, fails
    and scans the folder)."""
    path = open_folder(root, name)
    if seen is None:
        index, files = uidlist.sync(path)
        seen = {index.records[base].uid: location for base, location in files.items()
                if location.startswith("new/") and base in index.records}
    claimed: set[int] = set()
    for uid, location in seen.items():
        fname = location.split("/", 1)[1]
        base = uidlist.filename_base(fname)
        target = mflags.filename(base, uidlist.filename_flags(fname))
        try:
            echo.rename(f"{path}/{location}", f"{path}/cur/{target}")
        except FileNotFoundError:
            continue  # another session claimed it (or it was expunged / re-flagged)
        except OSError as exc:
            if no_space(exc):  # cur/ cannot grow (disk full): it stays new/, unclaimed
                break
            raise
        claimed.add(uid)
        if moved is not None:
            moved[base] = "cur/" + target
    return claimed


def _uid_map(index: uidlist.Uidlist) -> dict[int, str]:
    return {rec.uid: rec.base for rec in index.records.values()}


def uidvalidity(root: Path, name: str) -> int:
    path = open_folder(root, name)  # gives the folder its index if it has none
    index = uidlist.read_cached(path)
    if index is None:
        # No index and no space to write one: the UIDVALIDITY snapshots show meanwhile.
        return uidlist.placeholder(path).uidvalidity
    return index.uidvalidity


def _withdraw(path: Path, bases: Sequence[str]) -> None:
    """Take messages we moved into new/ out again (their UIDs could not be written)."""
    found = uidlist.scan(path)
    for base in bases:
        location = found.get(base)
        if location is not None:
            with contextlib.suppress(FileNotFoundError):
                echo.unlink(path / location)
    with contextlib.suppress(OSError):
        fsync_dir(path / "new")
        fsync_dir(path / "cur")


Staged = Sequence[tuple[str, str | Path, str | Path]]  # base, tmp/ file, final name in new/


def _publish_staged(path: Path, staged: Staged) -> uidlist.Uidlist:
    """Rename staged files (base, tmp/ file, new/ name) into new/ and give them UIDs in one
    step under the index lock (uidlist.publish); on any failure the ones already renamed
    are taken out again."""
    return steps.run(_publish_staged_steps(path, staged))


def _publish_staged_steps(path: Path, staged: Staged) -> Steps[uidlist.Uidlist]:
    def move_in() -> list[str]:
        moved: list[str] = []
        try:
            for base, tmp, final in staged:
                echo.rename(tmp, final)
                moved.append(base)
        except BaseException:
            _withdraw(path, moved)
            raise
        return moved

    return (yield from uidlist.publish_steps(path, move_in,
                                             lambda bases: _withdraw(path, bases),
                                             settle=(path / "new",)))


def append(root: Path, name: str, data: bytes, flags: Iterable[str],
           internaldate: datetime | None) -> int:
    """Store one message durably; its UID (for APPENDUID). See append_many()."""
    return append_many(root, name, [NewMessage(data, tuple(flags), internaldate)]).uids[0]


def append_many(root: Path, name: str, messages: Sequence[NewMessage]) -> Appended:
    """Store messages durably, all or none (RFC 3502 MULTIAPPEND); their UIDs in order.

    Every message is written to tmp/ (and fsynced) first; then, under the index lock and in
    the same step that writes their UIDs, all are renamed into new/. When the lock cannot be
    taken or the index cannot be written (disk full), or a rename fails, the ones already
    renamed are taken out again (uidlist.publish): the client's NO is the whole truth and a
    retry cannot duplicate anything. Only a crash between the first rename and the index
    write (microseconds per message) leaves the ones renamed so far in the folder, as a crash
    there does for a single APPEND: Maildir has no way to make several renames one."""
    return steps.run(append_steps(root, name, messages))


def append_steps(root: Path, name: str, messages: Sequence[NewMessage]) -> Steps[Appended]:
    """append_many() as steps (steps.py): the fsyncs of the messages, then of new/ and the
    index, are the two steps yielded."""
    path = open_folder(root, name)
    wanted = [flag_set(m.flags) for m in messages]
    names: set[str] = set()
    for flags in wanted:
        names |= keywords_of(flags)
    # The keyword table only when a message brings keywords (most come with none or with
    # system flags only): one file read fewer per APPEND.
    keywords = mflags.allocate(path, names) if names else {}
    staged: list[tuple[str, str | Path, str | Path]] = []  # base, tmp file, name in new/
    unsynced: list[int] = []  # descriptors of the tmp/ files, open until synced
    try:
        try:
            for message, flags in zip(messages, wanted, strict=True):
                data = message.data
                size = len(data)
                crlf = size + data.count(b"\n") - data.count(b"\r\n")
                base = unique_name(size).rsplit(",W=", 1)[0] + f",W={crlf}"
                when = message.internaldate
                mtime = None if when is None else float(int(when.timestamp()))
                letters = mflags.to_info(flags, keywords)
                final = f"{path}/new/{mflags.filename(base, letters) if letters else base}"
                tmp, fd = stage_tmp(path, base, data, mtime)
                unsynced.append(fd)
                staged.append((base, tmp, final))
            yield steps.Sync(files=tuple(unsynced))
        finally:
            for fd in unsynced:
                os.close(fd)
        index = yield from _publish_staged_steps(path, staged)
    except BaseException:
        # What is still in tmp/ goes (after a publish every one was renamed into new/: no
        # unlink that can only fail, in the I/O thread, per APPEND).
        for _, left, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(left)
        raise
    return Appended(index.uidvalidity, tuple(index.records[base].uid for base, _, _ in staged))


def _copy_base(src_base: str) -> str:
    """A fresh unique base that keeps the source's S= and W= sizes."""
    sizes = "".join(f",{k}={v}" for k, v in _SIZE_FIELDS.findall(src_base) if k in "SW")
    return unique_name(0).split(",S=", 1)[0] + sizes


def _stage(src: Path, dst_dir: Path, base: str) -> Path:
    """A copy of `src` as dst_dir/tmp/base: a hard link, or a real copy where there are no
    hard links (another filesystem). FileNotFoundError when `src` moved."""
    tmp = dst_dir / "tmp" / base
    try:
        os.link(src, tmp)
        return tmp
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        if exc.errno in NO_SPACE_ERRNOS:
            raise
    try:
        fd = create_file(tmp, os.O_WRONLY | os.O_EXCL)
        with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
        shutil.copystat(src, tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _copy_in(src_dir: Path, dst_dir: Path, uids: Iterable[int]) -> dict[int, int]:
    """Copy messages into dst/new/ (flags, keyword letters translated to dst's
    dovecot-keywords, and internal dates kept): staged in dst/tmp/ first, then renamed into
    new/ under dst's index lock together with their new UIDs (uidlist.publish), so a COPY
    that fails leaves no copy behind."""
    index, files = uidlist.sync(src_dir)
    by_uid = _uid_map(index)
    src_keywords = mflags.read_keywords(src_dir)
    wanted = [u for u in sorted(set(uids)) if by_uid.get(u) in files]
    names: set[str] = set()
    for uid in wanted:
        fname = files[by_uid[uid]].split("/", 1)[1]
        names |= keywords_of(mflags.from_info(uidlist.filename_flags(fname), src_keywords))
    dst_keywords = mflags.allocate(dst_dir, names)
    staged: list[tuple[int, str, Path, str]] = []  # uid, new base, tmp file, name in new/
    try:
        for uid in wanted:
            base = by_uid[uid]
            location: str | None = files[base]
            new_base = _copy_base(base)
            while location is not None:
                letters = uidlist.filename_flags(location.split("/", 1)[1])
                msg_flags = mflags.from_info(letters, src_keywords)
                new_letters = mflags.to_info(msg_flags, dst_keywords, keep=letters)
                target = mflags.filename(new_base, new_letters) if new_letters else new_base
                try:
                    tmp = _stage(src_dir / location, dst_dir, new_base)
                except FileNotFoundError:
                    location = _relocate(src_dir, base)
                    continue
                staged.append((uid, new_base, tmp, target))
                break
        dst_index = _publish_staged(dst_dir, [(new_base, tmp, dst_dir / "new" / target)
                                              for _, new_base, tmp, target in staged])
    finally:
        for _, _, tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return {uid: dst_index.records[b].uid for uid, b, _, _ in staged
            if b in dst_index.records}


def copy(root: Path, src: str, uids: Iterable[int], dst: str) -> dict[int, int]:
    """RFC 3501 §6.4.7 COPY: src UID -> new dst UID (for COPYUID), in src UID order."""
    src_dir = open_folder(root, src)
    dst_dir = open_folder(root, dst)
    return _copy_in(src_dir, dst_dir, uids)


def open_message(root: Path, name: str, key: str,
                 hint: str | None = None) -> tuple[BinaryIO, str]:
    """The message file of `key` opened for reading, and where it was (try `hint`, e.g.
    from snapshot(), first: a wrong hint costs one folder scan). MessageGone."""
    path = folders.folder_path(root, folder_name(name))
    location = hint
    for _ in range(RENAME_ATTEMPTS):
        if location is not None:
            try:
                return (path / location).open("rb"), location
            except FileNotFoundError:
                pass
        location = _relocate(path, key)
        if location is None:
            break
    raise MessageGone(key)


def read_message(root: Path, name: str, key: str, hint: str | None = None) -> bytes:
    f, _ = open_message(root, name, key, hint)
    with f:
        return f.read()
