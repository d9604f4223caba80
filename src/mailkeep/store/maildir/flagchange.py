"""Flag changes and expunges in place: STORE renames a message file to carry its new flags
(maildir(5) info, Dovecot's keyword letters), EXPUNGE unlinks the files flagged \\Deleted.

Both may start from the file names the store's last snapshot saw (`known`), sparing the
index sync and the folder scan; a name gone stale (another session renamed the file since)
fails its rename or unlink, and the file is looked up (see store_flags_at()).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from mailkeep.store.base import FlagMode
from mailkeep.store.maildir import echo, uidlist
from mailkeep.store.maildir import flags as mflags
from mailkeep.store.maildir.mailbox import (
    DELETED_LETTER,
    RENAME_ATTEMPTS,
    _relocate,
    _uid_map,
    open_folder,
)
from mailkeep.store.names import flag_set, keywords_of


def _apply(mode: FlagMode, current: frozenset[str], given: frozenset[str]) -> frozenset[str]:
    if mode is FlagMode.SET:
        return given
    if mode is FlagMode.ADD:
        return current | given
    return current - given


def store_flags_at(root: Path, name: str, uids: Iterable[int], mode: FlagMode,
                   flags: Iterable[str], *, known: Mapping[int, tuple[str, str]] | None
                   ) -> tuple[dict[int, frozenset[str]], dict[str, str]]:
    """Change flags by renaming: the new flags of every UID still present, and base -> new
    location of every file renamed.

    `known` (UID -> (base, location), from the store's last snapshot) spares the index sync
    and folder scan when it names every UID asked for. A location there may be out of date
    (another session renamed the file since): its rename then fails, as a name that no
    longer exists cannot be renamed, and the file is looked up; flags are only ever
    computed from the name that was renamed, so a stale name never loses a flag."""
    given = flag_set(flags)
    path = open_folder(root, name)
    names = keywords_of(given)
    # dovecot-keywords is read only when needed: to give new keywords their letters here, or
    # (below) when a file turns out to carry a keyword letter. Most flag changes are \Seen
    # or \Deleted on files without keywords, and most folders have no such file.
    keywords: dict[int, str] = mflags.allocate(path, names) \
        if names and mode is not FlagMode.REMOVE else {}
    wanted = sorted(set(uids))
    if known is None or any(uid not in known for uid in wanted):
        index, files = uidlist.sync(path)
        by_uid = _uid_map(index)
        known = {uid: (base, files[base]) for uid in wanted
                 if (base := by_uid.get(uid)) is not None and base in files}
    result: dict[int, frozenset[str]] = {}
    moved: dict[str, str] = {}
    for uid in wanted:
        if uid not in known:
            continue
        base, location = known[uid]
        for _ in range(RENAME_ATTEMPTS):
            sub, fname = location.split("/", 1)
            letters = uidlist.filename_flags(fname)
            if any("a" <= ch <= "z" and ord(ch) - ord("a") not in keywords for ch in letters):
                # A keyword letter the table as read does not have: not read yet (above), or
                # a concurrent session allocated it after we read dovecot-keywords and put it
                # on this file. Learn it, or we would drop it.
                keywords = mflags.read_keywords(path)
            current = mflags.from_info(letters, keywords)
            new = _apply(mode, current, given)
            target = mflags.to_info(new, keywords, keep=letters)
            if target == letters:
                result[uid] = new
                break
            new_location = f"{sub}/{mflags.filename(base, target)}"
            try:
                echo.rename(f"{path}/{location}", f"{path}/{new_location}")
            except FileNotFoundError:
                found = _relocate(path, base)
                if found is None:
                    break
                location = found
                continue
            result[uid] = new
            moved[base] = new_location
            break
    return result, moved


def expunge_at(root: Path, name: str, uids: Iterable[int] | None, *,
               known: Mapping[int, tuple[str, str]] | None
               ) -> tuple[list[int], list[str]]:
    """Remove the messages flagged \\Deleted (only those in `uids` when given): their UIDs,
    and the bases of the files removed. `known` as for store_flags_at(): a name there
    without \\Deleted is believed only while the file still has that name (one stat), as
    another session may have set \\Deleted since.

    The unlinks are not fsynced (as Dovecot's mail_fsync = optimized): after a power loss an
    expunged message may come back (the safe direction; it gets a new UID), while an
    acknowledged new message never goes (append_many and delivery fsync). POP3's DELE, where
    a message coming back means a duplicate download, does fsync (maildrop.delete)."""
    path = open_folder(root, name)
    targets: list[tuple[int, str, str | None]]
    wanted = None if uids is None else sorted(set(uids))
    hinted = known is not None and wanted is not None and all(u in known for u in wanted)
    if hinted:
        assert known is not None and wanted is not None
        targets = [(uid, *known[uid]) for uid in wanted]
    else:
        index, files = uidlist.sync(path)
        limit = None if wanted is None else set(wanted)
        targets = [(rec.uid, rec.base, files.get(rec.base)) for rec in index.by_uid()
                   if limit is None or rec.uid in limit]
    removed: list[int] = []
    gone: list[str] = []
    for uid, base, seen_at in targets:
        location = seen_at
        for _ in range(RENAME_ATTEMPTS):
            if location is None:
                break
            if DELETED_LETTER not in uidlist.filename_flags(location.split("/", 1)[1]):
                if hinted and not os.path.lexists(f"{path}/{location}"):
                    location = _relocate(path, base)  # renamed since: look at its flags
                    continue
                break
            try:
                echo.unlink(f"{path}/{location}")
            except FileNotFoundError:
                location = _relocate(path, base)
                continue
            removed.append(uid)
            gone.append(base)
            break
    # dovecot-uidlist keeps their records for now (uidlist.KEEP_STALE, as Dovecot does).
    return removed, gone
