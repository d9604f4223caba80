"""MaildirStore: crash-safe delivery (tmp/ -> fsync -> rename -> fsync new/)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailkeep.store.base import DeliveryError
from mailkeep.store.maildir.layout import account_root, ensure_maildir, unique_name

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
        paths.sort(key=lambda p: p.name)
        return [p.read_bytes() for p in paths]

    async def messages(self, mailbox: str) -> list[bytes]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._list, mailbox)

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
