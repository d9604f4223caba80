"""Moving messages between Maildir folders (blocking: run it off the event loop).

RFC 6851 MOVE and RFC 3501 §6.3.5 RENAME INBOX. A message moves by one rename(2) of its file
from the source folder's new/ or cur/ into the same subdirectory of the target: its flags
(the ":2," info; keyword letters translated to the target's dovecot-keywords) and its
internal date (the file's mtime, which rename keeps) go with it, and rename(2) within one
filesystem is atomic, so at every moment -- a crash included -- the message is in one folder
or the other, never in both and never in neither. No message file is ever copied: the
copy-then-expunge MOVE of RFC 6851 §3.3 would have a window with two copies.

The steps, and what a crash (or a failure) between them leaves:

1. Under the *target's* index lock, each file is renamed into the target, then new/ and cur/
   of both folders are fsynced (the renames survive a power loss).
   A crash here leaves the moved files in the target without UIDs: the next look at the
   target gives them UIDs (new messages for every session) and the next look at the source
   finds them gone (an expunge). The client never got its OK, and finds each message once.
   A failure here (EXDEV: the folders are on different filesystems; EIO) renames the files
   already moved back where they came from: nothing happened.
2. Their UIDs are written into the target's index, in source UID order, so COPYUID's two
   sets correspond (uidlist.publish). If the index cannot be written (disk full), the files
   are renamed back into the source before the lock is released: the source index still
   names them under their old UIDs, so the MOVE did not happen and the client's NO is true.
3. The source index is brought up to date (the moved UIDs dropped). A crash before this step
   is harmless: any later look at the source drops them the same way.

The index lock of the source is never held together with the target's (step 3 runs after
step 2 let go), so two MOVEs in opposite directions cannot deadlock. A message keeps its
filename base, and with it its POP3 UIDL and Dovecot's GUID-less identity, unless the target
holds or still lists that base (a message moved away and back) or the target is the
source itself: then it gets a fresh base (and so a new UID, as a MOVE into the same folder
must give, RFC 6851 §3.3 "the same as COPY then EXPUNGE").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from mailkeep.store.maildir import echo, folders, uidlist
from mailkeep.store.maildir import flags as mflags
from mailkeep.store.maildir.dotlock import LockError
from mailkeep.store.maildir.durable import fsync_dir
from mailkeep.store.maildir.mailbox import _copy_base, _relocate, _uid_map, open_folder
from mailkeep.store.names import INBOX, keywords_of

# One moved file: (source UID, base in the target, where it was in the source ("cur/..."),
# where it is in the target).
_Moved = tuple[int, str, str, str]


def move(root: Path, src: str, uids: Iterable[int], dst: str) -> dict[int, int]:
    """RFC 6851 MOVE: source UID -> target UID of every message moved, in source UID order.
    Messages already gone are left out. NoSuchFolder, KeywordLimit, NoSpace, LockError."""
    src_dir = open_folder(root, src)
    dst_dir = open_folder(root, dst)
    return move_messages(src_dir, dst_dir, uids)


def rename_inbox(root: Path, new: str) -> None:
    """RFC 3501 §6.3.5: RENAME INBOX moves every INBOX message into a new folder `new`;
    INBOX stays, empty, and its inferiors are not renamed. If the messages cannot be moved
    (disk full), they all stay in INBOX and the new folder stays empty."""
    created = folders.create(root, new)
    inbox = open_folder(root, INBOX)
    dst = open_folder(root, created)
    index, _ = uidlist.sync(inbox)
    move_messages(inbox, dst, [r.uid for r in index.by_uid()])


def move_messages(src_dir: Path, dst_dir: Path, uids: Iterable[int]) -> dict[int, int]:
    """Move the messages of these UIDs from one folder's Maildir to another's (see above)."""
    index, files = uidlist.sync(src_dir)
    by_uid = _uid_map(index)
    wanted = [u for u in sorted(set(uids)) if by_uid.get(u) in files]
    if not wanted:
        return {}
    src_keywords = mflags.read_keywords(src_dir)
    names: set[str] = set()
    for uid in wanted:
        fname = files[by_uid[uid]].split("/", 1)[1]
        names |= keywords_of(mflags.from_info(uidlist.filename_flags(fname), src_keywords))
    dst_keywords = mflags.allocate(dst_dir, names)
    same = src_dir == dst_dir
    moved: list[_Moved] = []

    def move_in() -> list[str]:
        # Under the target's index lock: a base is taken if a file there has it, or if the
        # index still lists it (a record kept after its file left, uidlist.KEEP_STALE): a
        # message moved away and back must not get its old UID again (RFC 3501 §2.3.1.1).
        taken: set[str] = set()
        if not same:
            taken.update(uidlist.scan(dst_dir))
            listed = uidlist.read_cached(dst_dir, shared=True)
            if listed is not None:
                taken.update(listed.records)
        try:
            for uid in wanted:
                base = by_uid[uid]
                new_base = _copy_base(base) if same or base in taken else base
                location: str | None = files[base]
                while location is not None:
                    sub, fname = location.split("/", 1)
                    letters = uidlist.filename_flags(fname)
                    msg_flags = mflags.from_info(letters, src_keywords)
                    new_letters = mflags.to_info(msg_flags, dst_keywords, keep=letters)
                    target = f"{sub}/{mflags.filename(new_base, new_letters)}" \
                        if new_letters else f"{sub}/{new_base}"
                    try:
                        echo.rename(src_dir / location, dst_dir / target)
                    except FileNotFoundError:
                        # Renamed meanwhile (flags, \Recent claimed) or expunged: chase it.
                        location = _relocate(src_dir, base)
                        continue
                    moved.append((uid, new_base, location, target))
                    break
            _sync_dirs(dst_dir, src_dir)
        except BaseException:
            _put_back(src_dir, dst_dir, moved)
            raise
        return [new_base for _, new_base, _, _ in moved]

    def withdraw(bases: Sequence[str]) -> None:
        _put_back(src_dir, dst_dir, moved)

    dst_index = uidlist.publish(dst_dir, move_in, withdraw)
    if not same:
        # Step 3; if it cannot be done now, the next snapshot of the source does it.
        with contextlib.suppress(LockError, OSError):
            uidlist.sync(src_dir)
    return {uid: dst_index.records[b].uid for uid, b, _, _ in moved
            if b in dst_index.records}


def _sync_dirs(*dirs: Path) -> None:
    for folder in dirs:
        for sub in ("new", "cur"):
            fsync_dir(folder / sub)


def _put_back(src_dir: Path, dst_dir: Path, moved: list[_Moved]) -> None:
    """Undo step 1: every moved file goes back to where it was in the source (found by its
    base should it have been renamed in the target meanwhile). A file that cannot be put back
    stays in the target, where the next snapshot gives it a UID: still in one place."""
    if not moved:
        return
    found: dict[str, str] | None = None
    for _, new_base, origin, target in reversed(moved):
        try:
            echo.rename(dst_dir / target, src_dir / origin)
            continue
        except FileNotFoundError:
            pass
        except OSError:
            continue
        if found is None:
            found = uidlist.scan(dst_dir)
        now = found.get(new_base)
        if now is not None:
            with contextlib.suppress(OSError):
                echo.rename(dst_dir / now, src_dir / origin)
    moved.clear()
    with contextlib.suppress(OSError):
        _sync_dirs(src_dir, dst_dir)
