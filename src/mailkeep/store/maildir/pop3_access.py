"""POP3's view of an account's INBOX (RFC 1939): the maildrop listing, reads, \\Seen marks
and deletions, with the session lock that keeps one POP3 session per mailbox.

A part of MaildirStore (store.py), which supplies the thread pool (`_run`), the account
roots and the change feed; kept apart so that each file holds one kind of work. Where each
message file was last seen is remembered per mailbox (`_where`): a hint that saves a folder
scan per message; a wrong hint costs one scan, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from mailkeep.store.base import Maildrop, MessageGone
from mailkeep.store.changes import ChangeKind
from mailkeep.store.maildir import maildrop as ops
from mailkeep.store.maildir import session_lock
from mailkeep.store.maildir.layout import ensure_maildir
from mailkeep.store.names import INBOX

T = TypeVar("T")


class MaildropAccess:
    _where: dict[str, dict[str, str]]
    _where_guard: threading.Lock

    # Supplied by MaildirStore.
    def root(self, mailbox: str) -> Path:
        raise NotImplementedError

    async def _run(self, func: Callable[..., T], *args: object, light: bool = False) -> T:
        raise NotImplementedError

    def _changed(self, account: str, folder: str | None,
                 kind: ChangeKind | None = None) -> None:
        raise NotImplementedError

    async def lock_maildrop(self, mailbox: str) -> _SessionLock | None:
        root = self.root(mailbox)
        if not await self._run(session_lock.acquire, root):
            return None
        return _SessionLock(self, root)

    def _maildrop_sync(self, mailbox: str) -> Maildrop:
        root = self.root(mailbox)
        ensure_maildir(root)
        listing, files = ops.list_maildrop(root)
        with self._where_guard:
            self._where[mailbox] = files
        return listing

    async def maildrop(self, mailbox: str) -> Maildrop:
        return await self._run(self._maildrop_sync, mailbox)

    def _locate(self, mailbox: str, key: str) -> str:
        with self._where_guard:
            hint = self._where.get(mailbox, {}).get(key)
        location = ops.locate(self.root(mailbox), key, hint)
        if location != hint:
            self._remember(mailbox, key, location)
        return location

    def _remember(self, mailbox: str, key: str, location: str | None) -> None:
        with self._where_guard:
            known = self._where.setdefault(mailbox, {})
            if location is None:
                known.pop(key, None)
            else:
                known[key] = location

    def _open(self, mailbox: str, key: str) -> BinaryIO:
        for _ in range(3):  # the file may be renamed (flags) between locate and open
            location = self._locate(mailbox, key)
            try:
                return (self.root(mailbox) / location).open("rb")
            except FileNotFoundError:
                self._remember(mailbox, key, None)
        raise MessageGone(key)

    def _open_and_read(self, mailbox: str, key: str) -> tuple[BinaryIO | None, bytes]:
        """Open and read the first chunk in one trip to the pool; a small message is read,
        and its file closed, right here (one hop per message instead of three)."""
        f = self._open(mailbox, key)
        try:
            chunk = f.read(ops.READ_CHUNK)
        except BaseException:
            f.close()
            raise
        if len(chunk) < ops.READ_CHUNK:
            f.close()
            return None, chunk
        return f, chunk

    async def read(self, mailbox: str, key: str) -> AsyncIterator[bytes]:
        f, chunk = await self._run(self._open_and_read, mailbox, key)
        if f is None:
            if chunk:
                yield chunk
            return
        try:
            while chunk:
                yield chunk
                chunk = await self._run(f.read, ops.READ_CHUNK)
        finally:
            f.close()

    def _mark_seen_sync(self, mailbox: str, keys: list[str]) -> None:
        root = self.root(mailbox)
        for key in keys:
            try:
                self._remember(mailbox, key, ops.mark_seen(root, self._locate(mailbox, key)))
            except (MessageGone, FileNotFoundError):
                self._remember(mailbox, key, None)

    async def mark_seen(self, mailbox: str, keys: list[str]) -> None:
        try:
            await self._run(self._mark_seen_sync, mailbox, keys)
        finally:
            self._changed(mailbox, INBOX, ChangeKind.FLAGS)

    def _delete_sync(self, mailbox: str, keys: list[str]) -> int:
        locations: list[str] = []
        for key in keys:
            with contextlib.suppress(MessageGone):
                locations.append(self._locate(mailbox, key))
            self._remember(mailbox, key, None)
        return ops.delete(self.root(mailbox), locations)

    async def delete(self, mailbox: str, keys: list[str]) -> int:
        try:
            return await self._run(self._delete_sync, mailbox, keys)
        finally:
            self._changed(mailbox, INBOX, ChangeKind.EXPUNGE)

    def forget(self, mailbox: str) -> None:
        """Drop the location hints of a mailbox (its session ended)."""
        with self._where_guard:
            self._where.pop(mailbox, None)


class _SessionLock:
    def __init__(self, store: MaildropAccess, root: Path) -> None:
        self.store = store
        self.root = root
        self.released = False

    async def refresh(self) -> None:
        await self.store._run(session_lock.refresh, self.root)

    async def release(self) -> None:
        if not self.released:
            self.released = True
            self.store.forget(self.root.name)
            await asyncio.to_thread(session_lock.release, self.root)
