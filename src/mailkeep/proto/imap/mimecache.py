"""A bounded cache of parsed messages: (account, folder, uidvalidity, uid) -> MimePart.

A message's octets never change under one UID (RFC 3501 §2.3.1.1), so a parse can be
reused across FETCH commands and sessions until it falls out of the LRU. Bounds are by
count and by octets of message data held (a part tree keeps its message's bytes).
"""

from __future__ import annotations

from collections import OrderedDict

from mailkeep.proto.imap.mime import MimePart

# Our choice: the octet bound is what limits memory; the entry bound only caps bookkeeping.
# It must exceed the messages the open folders of all sessions hold together: a SEARCH over
# every message walks its folder in order, and an LRU smaller than the folders being walked
# keeps nothing (512 entries with ten 70-message folders: every SEARCH re-read and re-parsed
# every message; docs/benchmarks.md).
MAX_ENTRIES = 16_384
MAX_OCTETS = 64 * 1024 * 1024

CacheKey = tuple[str, str, int, int]


class MimeCache:
    def __init__(self, max_entries: int = MAX_ENTRIES, max_octets: int = MAX_OCTETS) -> None:
        self.max_entries = max_entries
        self.max_octets = max_octets
        self.octets = 0
        self.hits = 0
        self.misses = 0
        self._parts: OrderedDict[CacheKey, MimePart] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parts)

    def get(self, key: CacheKey) -> MimePart | None:
        part = self._parts.get(key)
        if part is None:
            self.misses += 1
            return None
        self.hits += 1
        self._parts.move_to_end(key)
        return part

    def put(self, key: CacheKey, part: MimePart) -> None:
        size = len(part.data)
        if size > self.max_octets:
            return
        old = self._parts.pop(key, None)
        if old is not None:
            self.octets -= len(old.data)
        self._parts[key] = part
        self.octets += size
        while len(self._parts) > self.max_entries or self.octets > self.max_octets:
            _, dropped = self._parts.popitem(last=False)
            self.octets -= len(dropped.data)
