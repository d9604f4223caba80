"""Where this process last saw each message file of an IMAP folder: base -> "new/NAME" or
"cur/NAME:2,FLAGS", per (account, folder).

Filled from each snapshot's folder scan and kept up to date with this process's own
renames (STORE), unlinks (EXPUNGE) and the files reads found elsewhere. Only ever a hint:
another session or process may rename a file at any time, and every user of a location
copes with a name that no longer exists (a rename or open of it fails, and the file is
looked up), so a stale hint costs one folder scan, never a wrong answer. Thread-safe (the
store's I/O threads and the event loop both use it).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence

from mailkeep.store.base import MessageRecord

FolderKey = tuple[str, str]  # (account, canonical folder name)


def _uid_of(record: MessageRecord) -> int:
    return record.uid


class FolderLocations:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._where: dict[FolderKey, dict[str, str]] = {}

    def take(self, key: FolderKey, where: Mapping[str, str], *, fresh: bool) -> None:
        """A snapshot's scan of the folder: `fresh` (a new scan) replaces what was known;
        a reused snapshot only fills in a folder not known yet."""
        with self._guard:
            if fresh or key not in self._where:
                self._where[key] = dict(where)

    def hint(self, key: FolderKey, base: str) -> str | None:
        with self._guard:
            return self._where.get(key, {}).get(base)

    def seen(self, key: FolderKey, found: Mapping[str, str]) -> None:
        """Files this process renamed, or found elsewhere than hinted (a read): later looks
        start from these names."""
        with self._guard:
            known = self._where.get(key)
            if known is not None:
                known.update(found)

    def gone(self, key: FolderKey, bases: Iterable[str]) -> None:
        with self._guard:
            known = self._where.get(key)
            if known is not None:
                for base in bases:
                    known.pop(base, None)

    def of_uids(self, key: FolderKey, messages: Sequence[MessageRecord],
                uids: Sequence[int]) -> dict[int, tuple[str, str]] | None:
        """UID -> (base, location) for these UIDs of a snapshot's `messages` (in UID
        order); None unless every one is known."""
        found: dict[int, tuple[str, str]] = {}
        with self._guard:
            where = self._where.get(key)
            if where is None:
                return None
            for uid in uids:
                at = bisect.bisect_left(messages, uid, key=_uid_of)
                if at == len(messages) or messages[at].uid != uid:
                    return None
                base = messages[at].key
                location = where.get(base)
                if location is None:
                    return None
                found[uid] = (base, location)
        return found

    def forget_folder(self, account: str, folder: str) -> None:
        """A folder (and its subfolders) deleted or renamed."""
        with self._guard:
            for k in [k for k in self._where
                      if k[0] == account and (k[1] == folder or k[1].startswith(folder + "."))]:
                del self._where[k]
