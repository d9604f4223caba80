"""The change feed: every change to a folder, told to every session that watches it.

    watch = feed.watch(account, folder)      # an IMAP session selects a folder
    changes = await watch.next()             # IDLE waits here (or on the socket)
    watch.close()

Changes made through this process's store are published as they happen (new message, flags,
expunge, folders created/renamed/deleted). Changes made by anything else on the same Maildir
-- another mailkeep worker, Dovecot, a script dropping a file into new/ -- are seen through
the filesystem (store/watcher.py: inotify, or a one-second stat poll where inotify is not
available) and published as EXTERNAL. A change is a hint to look, not the data itself: a
session that hears of one re-reads the folder (its snapshot is cheap when little changed)
and tells its client exactly what is new, so a coalesced or duplicated notice is harmless.

Thread-safe publishing: store operations run in worker threads; publish() may be called
from any thread and delivers on the event loop the feed was created on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

# A watcher that does not read its changes keeps at most this many; beyond that they are
# folded into one RESYNC (the session re-reads the folder anyway).
MAX_PENDING_CHANGES = 64


# The session whose command is running (set by the IMAP executor around each command): the
# store's changes are published with it as their origin, so that session is not told of
# what it did itself (its command already told its client, and applied it to its view).
acting_session: contextvars.ContextVar[int] = contextvars.ContextVar("acting_session",
                                                                     default=0)


class ChangeKind(enum.Enum):
    NEW = "new"               # messages added (delivery, APPEND, COPY, MOVE)
    FLAGS = "flags"           # flags or keywords changed
    EXPUNGE = "expunge"       # messages removed
    FOLDERS = "folders"       # a folder created, renamed or deleted (folder: None)
    EXTERNAL = "external"     # seen on disk, made by another process
    RESYNC = "resync"         # too many to list: look at everything


@dataclass(frozen=True, slots=True)
class Change:
    account: str
    folder: str | None        # canonical folder name ("INBOX", "Archive.2026"); None: tree
    kind: ChangeKind
    origin: int = 0           # id of the publishing session (0: none): it need not be told


class Watch:
    """One session's subscription to one folder (and to its account's folder tree)."""

    def __init__(self, feed: ChangeFeed, account: str, folder: str | None,
                 session: int) -> None:
        self.feed = feed
        self.account = account
        self.folder = folder
        self.session = session
        self._pending: list[Change] = []
        self._event = asyncio.Event()
        self.closed = False

    def _push(self, change: Change) -> None:
        if change.origin and change.origin == self.session:
            return  # the session made this change itself and already told its client
        if len(self._pending) >= MAX_PENDING_CHANGES:
            self._pending = [Change(self.account, self.folder, ChangeKind.RESYNC)]
        else:
            self._pending.append(change)
        self._event.set()

    def pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> list[Change]:
        """The changes so far (possibly none), without waiting."""
        out, self._pending = self._pending, []
        self._event.clear()
        return out

    async def next(self) -> list[Change]:
        """Wait until at least one change arrives; all that arrived."""
        while not self._pending:
            self._event.clear()
            await self._event.wait()
        return self.take()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed._remove(self)


class ChangeFeed:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is None:
            with contextlib.suppress(RuntimeError):  # no loop: a synchronous test driver
                loop = asyncio.get_running_loop()
        self.loop = loop
        self._thread = threading.get_ident()
        self._watches: dict[tuple[str, str | None], set[Watch]] = defaultdict(set)
        # Called with (account, folder) when the first watch of a folder opens and when the
        # last closes: the filesystem watcher follows only folders somebody watches.
        self.on_first: Callable[[str, str], None] | None = None
        self.on_last: Callable[[str, str], None] | None = None
        self.published = 0

    def watch(self, account: str, folder: str, session: int = 0) -> Watch:
        w = Watch(self, account, folder, session)
        key = (account, folder)
        first = not self._watches.get(key)
        self._watches[key].add(w)
        self._watches[(account, None)].add(w)  # folder-tree changes reach it too
        if first and self.on_first is not None:
            self.on_first(account, folder)
        return w

    def _remove(self, w: Watch) -> None:
        assert w.folder is not None
        for key in ((w.account, w.folder), (w.account, None)):
            group = self._watches.get(key)
            if group is not None:
                group.discard(w)
                if not group:
                    del self._watches[key]
        if (w.account, w.folder) not in self._watches and self.on_last is not None:
            self.on_last(w.account, w.folder)

    def watched(self) -> list[tuple[str, str]]:
        return [(a, f) for a, f in self._watches if f is not None]

    def publish(self, change: Change) -> None:
        """Tell the watchers of the folder (or, folder None, of the whole account)."""
        if threading.get_ident() != self._thread and self.loop is not None:
            self.loop.call_soon_threadsafe(self._deliver, change)
        else:
            self._deliver(change)

    def _deliver(self, change: Change) -> None:
        self.published += 1
        for w in list(self._watches.get((change.account, change.folder), ())):
            w._push(change)

    def watchers(self, account: str, folder: str) -> int:
        return len(self._watches.get((account, folder), ()))
