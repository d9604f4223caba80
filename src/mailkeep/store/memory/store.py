"""MemoryStore: dictionaries, no durability; behaviour every real store must match."""

from __future__ import annotations

import itertools


class MemoryStore:
    def __init__(self) -> None:
        self._boxes: dict[str, list[tuple[str, bytes]]] = {}
        self._ids = itertools.count(1)

    async def deliver(self, mailbox: str, message: bytes) -> str:
        name = f"mem-{next(self._ids)}"
        self._boxes.setdefault(mailbox, []).append((name, bytes(message)))
        return name

    async def messages(self, mailbox: str) -> list[bytes]:
        return [data for _, data in self._boxes.get(mailbox, [])]
