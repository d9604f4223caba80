"""MaildirStore: crash-safe delivery (tmp/ -> fsync -> rename -> fsync new/)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

from mailkeep.store.base import DeliveryError, Maildrop, MessageGone, StoreError
from mailkeep.store.maildir import maildrop as ops
from mailkeep.store.maildir import session_lock
from mailkeep.store.maildir.layout import (
    account_root,
    delivery_order,
    ensure_maildir,
    unique_name,
)
from mailkeep.store.maildir.uidlist import UidlistError

T = TypeVar("T")

# maildir(5): files in tmp/ untouched for 36 hours are left over from a crash and may go.
STALE_TMP_SECONDS = 36 * 3600
# fsync-heavy work runs here, never on the event loop; a few threads keep disks busy.
IO_WORKERS = 4


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._pool = ThreadPoolExecutor(IO_WORKERS, thread_name_prefix="mailkeep-io")
        # (mailbox, key) -> last known location ("new/NAME", "cur/NAME:2,S"): a hint that
        # saves a folder scan per message; a wrong hint costs one scan, never a wrong answer.
        self._where: dict[str, dict[str, str]] = {}
        self._where_guard = threading.Lock()

    def root(self, mailbox: str) -> Path:
        return account_root(self.data_dir, mailbox)

    def deliver_sync(self, mailbox: str, message: bytes) -> str:
        """Blocking delivery. When it returns, the message survives a crash or power loss."""
        root = self.root(mailbox)
        try:
            ensure_maildir(root)
            name = unique_name(len(message))
            tmp = root / "tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                try:
                    view = memoryview(message)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                # rename() is atomic: readers see the whole message in new/ or nothing.
                os.rename(tmp, root / "new" / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            # The directory entry must be on disk too, or a power loss can forget the rename.
            _fsync_dir(root / "new")
        except OSError as exc:
            kind = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
            raise DeliveryError(f"delivery to {mailbox} failed: {kind}") from exc
        return name

    async def deliver(self, mailbox: str, message: bytes) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.deliver_sync, mailbox, message)

    def _list(self, mailbox: str) -> list[bytes]:
        root = self.root(mailbox)
        paths: list[Path] = []
        for sub in ("cur", "new"):
            with contextlib.suppress(FileNotFoundError):
                paths += [p for p in (root / sub).iterdir() if not p.name.startswith(".")]
        paths.sort(key=lambda p: delivery_order(p.name.partition(":")[0]))
        return [p.read_bytes() for p in paths]

    async def messages(self, mailbox: str) -> list[bytes]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._list, mailbox)

    # -- maildrop (POP3 today, IMAP later) ------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, func, *args)
        except (MessageGone, StoreError):
            raise
        except UidlistError as exc:
            raise StoreError(str(exc)) from exc
        except OSError as exc:
            raise StoreError(f"{exc.strerror or exc}") from exc

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
        await self._run(self._mark_seen_sync, mailbox, keys)

    def _delete_sync(self, mailbox: str, keys: list[str]) -> int:
        locations: list[str] = []
        for key in keys:
            with contextlib.suppress(MessageGone):
                locations.append(self._locate(mailbox, key))
            self._remember(mailbox, key, None)
        return ops.delete(self.root(mailbox), locations)

    async def delete(self, mailbox: str, keys: list[str]) -> int:
        return await self._run(self._delete_sync, mailbox, keys)

    def forget(self, mailbox: str) -> None:
        """Drop the location hints of a mailbox (its session ended)."""
        with self._where_guard:
            self._where.pop(mailbox, None)

    def clean_stale_tmp(self) -> int:
        """Remove crash leftovers older than 36 hours from every tmp/. Returns the count."""
        removed = 0
        cutoff = time.time() - STALE_TMP_SECONDS
        base = self.data_dir / "mail"
        if not base.is_dir():
            return 0
        for tmp in base.glob("*/tmp"):
            for entry in tmp.iterdir():
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed += 1
        return removed

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class _SessionLock:
    def __init__(self, store: MaildirStore, root: Path) -> None:
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
