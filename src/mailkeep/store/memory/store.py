"""MemoryStore: dictionaries, no durability; behaviour every real store must match."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mailkeep.store.base import Maildrop, MessageGone, MessageInfo

# Chunk size of read(): small, so streaming consumers are exercised across boundaries.
READ_CHUNK = 4096


@dataclass
class _Box:
    uidvalidity: int
    next_uid: int = 1
    # key -> (uid, data, seen), insertion (= UID) order
    messages: dict[str, tuple[int, bytes, bool]] = field(default_factory=dict)


class _MemoryLock:
    def __init__(self, store: MemoryStore, mailbox: str) -> None:
        self.store = store
        self.mailbox = mailbox

    async def refresh(self) -> None:
        return None

    async def release(self) -> None:
        self.store._locked.discard(self.mailbox)


def crlf_size(data: bytes) -> int:
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


class MemoryStore:
    def __init__(self, uidvalidity: int = 1) -> None:
        self._boxes: dict[str, _Box] = {}
        self._ids = itertools.count(1)
        self._uidvalidity = uidvalidity
        self._locked: set[str] = set()

    def _box(self, mailbox: str) -> _Box:
        return self._boxes.setdefault(mailbox, _Box(self._uidvalidity))

    async def deliver(self, mailbox: str, message: bytes) -> str:
        name = f"mem-{next(self._ids)}"
        box = self._box(mailbox)
        box.messages[name] = (box.next_uid, bytes(message), False)
        box.next_uid += 1
        return name

    async def messages(self, mailbox: str) -> list[bytes]:
        return [data for _, data, _ in self._box(mailbox).messages.values()]

    async def lock_maildrop(self, mailbox: str) -> _MemoryLock | None:
        if mailbox in self._locked:
            return None
        self._locked.add(mailbox)
        return _MemoryLock(self, mailbox)

    async def maildrop(self, mailbox: str) -> Maildrop:
        box = self._box(mailbox)
        return Maildrop(box.uidvalidity, tuple(
            MessageInfo(uid=uid, key=key, size=crlf_size(data), seen=seen)
            for key, (uid, data, seen) in box.messages.items()))

    async def read(self, mailbox: str, key: str) -> AsyncIterator[bytes]:
        found = self._box(mailbox).messages.get(key)
        if found is None:
            raise MessageGone(key)
        data = found[1]
        for start in range(0, len(data), READ_CHUNK):
            yield data[start:start + READ_CHUNK]

    async def mark_seen(self, mailbox: str, keys: list[str]) -> None:
        box = self._box(mailbox)
        for key in keys:
            if key in box.messages:
                uid, data, _ = box.messages[key]
                box.messages[key] = (uid, data, True)

    async def delete(self, mailbox: str, keys: list[str]) -> int:
        box = self._box(mailbox)
        return sum(box.messages.pop(key, None) is not None for key in keys)
