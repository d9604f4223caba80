"""Changes made on disk by other processes, for the change feed (store/changes.py).

Another mailkeep worker, Dovecot, or a script dropping a file into new/ changes a Maildir
without telling us. For every folder a session watches, this watches its new/ and cur/
directories with inotify (store/inotify.py): a message arriving, leaving or being renamed (a
flag change) there is published as an EXTERNAL change within a few milliseconds. Where
inotify cannot be used (no inotify, the watch limit reached), the folder is polled instead:
the modification times of new/ and cur/ change with every such rename, so a stat of each
per POLL_INTERVAL seconds is enough. Events that are the echo of this process's own
renames and unlinks are skipped (store/maildir/echo.py): the store published those itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mailkeep.store import inotify
from mailkeep.store.base import StoreRefusal
from mailkeep.store.changes import Change, ChangeFeed, ChangeKind
from mailkeep.store.maildir import echo

log = logging.getLogger("mailkeep.store")

# A burst of events (a COPY of 500 messages) becomes one notice per folder after this pause.
COALESCE_SECONDS = 0.02
# Folders without inotify are looked at this often (the bound: changes made by other
# processes reach the feed within one second).
POLL_INTERVAL = 0.5

Stamp = tuple[int, int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        new, cur = os.stat(path / "new"), os.stat(path / "cur")
    except OSError:
        return None
    return (new.st_mtime_ns, new.st_ctime_ns, cur.st_mtime_ns, cur.st_ctime_ns)


class FolderWatcher:
    def __init__(self, feed: ChangeFeed, locate: Callable[[str, str], Path], *,
                 use_inotify: bool = True) -> None:
        self.feed = feed
        self.locate = locate
        self._inotify: inotify.Inotify | None = None
        self._watches: dict[tuple[str, str], list[int]] = {}
        # watch descriptor -> (the directory watched, the folder it belongs to)
        self._by_wd: dict[int, tuple[str, tuple[str, str]]] = {}
        self._polled: dict[tuple[str, str], Stamp | None] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if use_inotify:
            try:
                self._inotify = inotify.Inotify()
            except OSError as exc:  # not Linux, or the inotify instance limit reached
                log.warning("inotify unavailable (%s): other processes' changes are polled "
                            "every %.1f s", exc, POLL_INTERVAL)
        feed.on_first = self.add
        feed.on_last = self.remove

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._inotify is not None:
            loop.add_reader(self._inotify.fd, self._read_events)
        self._tasks.append(loop.create_task(self._poll(), name="folder-poll"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._inotify is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._inotify.fd)
            with contextlib.suppress(Exception):
                self._inotify.close()

    # -- following the folders sessions watch -------------------------------------------

    def add(self, account: str, folder: str) -> None:
        key = (account, folder)
        try:
            path = self.locate(account, folder)
        except StoreRefusal:  # a folder name the store refuses: nothing to watch
            return
        if self._inotify is not None:
            mask = (inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM
                    | inotify.IN_MOVED_TO | inotify.IN_ONLYDIR)
            watches: list[int] = []
            try:
                for sub in ("new", "cur"):
                    directory = str(path / sub)  # as echo.py names our own changes
                    wd = self._inotify.add_watch(directory, mask)
                    watches.append(wd)
                    self._by_wd[wd] = (directory, key)
            except OSError as exc:
                log.info("inotify watch of %s failed (%s): polling it", path, exc)
                for wd in watches:
                    self._by_wd.pop(wd, None)
                    with contextlib.suppress(OSError):
                        self._inotify.rm_watch(wd)
            else:
                self._watches[key] = watches
                return
        self._polled[key] = _stamp(path)

    def remove(self, account: str, folder: str) -> None:
        key = (account, folder)
        for wd in self._watches.pop(key, []):
            self._by_wd.pop(wd, None)
            if self._inotify is not None:
                with contextlib.suppress(OSError):
                    self._inotify.rm_watch(wd)
        self._polled.pop(key, None)

    def quiet(self, account: str, folder: str) -> bool:
        """Has nothing outside this process changed the folder without its watches being
        told? Only a folder followed by inotify can be vouched for, after every event
        queued now has been taken (the kernel queues an event as the change is made);
        one waiting for COALESCE_SECONDS to be published counts as a change."""
        key = (account, folder)
        if self._inotify is None or key not in self._watches:
            return False  # polled: a change shows only at the next poll
        self._read_events()
        return key not in self._dirty

    # -- noticing -----------------------------------------------------------------------

    def _mark(self, key: tuple[str, str]) -> None:
        self._dirty.add(key)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(COALESCE_SECONDS,
                                                                 self._publish)

    def _publish(self) -> None:
        self._flush = None
        dirty, self._dirty = self._dirty, set()
        for account, folder in dirty:
            self.feed.publish(Change(account, folder, ChangeKind.EXTERNAL))

    def _read_events(self) -> None:
        """The inotify descriptor is readable: take every event queued (on the loop)."""
        assert self._inotify is not None
        try:
            events = self._inotify.read_events()
        except OSError as exc:
            log.error("reading inotify events failed (%s): looking at every folder", exc)
            events = [(-1, inotify.IN_Q_OVERFLOW, b"")]
        by_wd = self._by_wd
        for wd, mask, name in events:
            if mask & inotify.IN_Q_OVERFLOW:
                # Events were lost (the kernel's queue overflowed): anything may have
                # changed, so every watched folder is looked at again.
                for lost in list(self._watches):
                    self._mark(lost)
                continue
            watched = by_wd.get(wd)
            if watched is None or mask & inotify.IN_IGNORED:
                continue  # a watch already let go
            directory, key = watched
            if name and echo.ours(directory, os.fsdecode(name)):
                continue  # our own change coming back: already published by the store
            self._mark(key)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            for key, before in list(self._polled.items()):
                try:
                    path = self.locate(*key)
                except StoreRefusal:  # not a valid folder name: it cannot change
                    continue
                now = await asyncio.to_thread(_stamp, path)
                if now != before:
                    self._polled[key] = now
                    if key in self._polled:
                        self._mark(key)
