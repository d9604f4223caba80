"""MaildirStore: crash-safe delivery (tmp/ -> fsync -> rename -> fsync new/)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from mailkeep.store.base import (
    Appended,
    DeliveryError,
    DiskFull,
    FlagMode,
    FolderInfo,
    FolderSnapshot,
    MessageGone,
    NewMessage,
    NoSuchFolder,
    StoreError,
    StoreFull,
    StoreRefusal,
    Usage,
    to_crlf,
)
from mailkeep.store.changes import Change, ChangeFeed, ChangeKind, Watch, acting_session
from mailkeep.store.maildir import (
    flagchange,
    folders,
    mailbox,
    modseq,
    move,
    special_use,
    steps,
    subscriptions,
    uidlist,
)
from mailkeep.store.maildir import maildrop as ops
from mailkeep.store.maildir import usage as usage_scan
from mailkeep.store.maildir.dotlock import (
    LockError,
    NoSpace,
    WouldWait,
    no_space,
    without_waiting,
)
from mailkeep.store.maildir.durable import write_message
from mailkeep.store.maildir.layout import (
    account_root,
    delivery_order,
    ensure_maildir,
    unique_name,
)
from mailkeep.store.maildir.locations import FolderLocations
from mailkeep.store.maildir.pop3_access import MaildropAccess
from mailkeep.store.maildir.syncer import Syncer
from mailkeep.store.names import INBOX, folder_name
from mailkeep.store.watcher import FolderWatcher

T = TypeVar("T")

# maildir(5): files in tmp/ untouched for 36 hours are left over from a crash and may go.
STALE_TMP_SECONDS = 36 * 3600
# fsync-heavy work runs here, never on the event loop; a few threads keep disks busy.
IO_WORKERS = 4
# Folders whose last snapshot is kept for the next one (LRU).
SNAPSHOT_CACHE_FOLDERS = 1024
# Light work on a small folder runs on the event loop instead (_run(light=True)): a
# snapshot, a flag change or UID EXPUNGE of a few messages, claiming \Recent. It is a few
# stats, a readdir and some renames or unlinks, no fsync, all in the page cache: tens of
# microseconds per message, less than handing it to a thread, whose Python code then fights
# the loop for the GIL (with 10 clients that hand-off cost 2.2 ms of CPU per IMAP command,
# half of it futex system time: docs/benchmarks.md). Bounds on the time the loop is held:
# folders up to INLINE_MESSAGES (by their last snapshot; a folder not seen yet goes to a
# thread), changes of up to INLINE_UIDS messages. A lock held by someone else is never
# waited for on the loop (dotlock.WouldWait): the work goes to a thread then.
INLINE_MESSAGES = 2_000
INLINE_UIDS = 64
# APPEND to such a folder runs as steps (steps.py): its file work on the loop, its fsyncs
# in the sync helper process (syncer.py; SYNC_WORKERS threads when it cannot be used), for
# up to INLINE_APPEND_MESSAGES messages (MULTIAPPEND keeps a descriptor open per message
# until they are synced) of INLINE_APPEND_OCTETS in all (copying 1 MiB into the page cache
# is well under a millisecond). Measured on the IMAP mix: 0.46 -> 0.37 ms of CPU per
# command (docs/benchmarks.md, fifth pass).
INLINE_APPEND_MESSAGES = 16
INLINE_APPEND_OCTETS = 1024 * 1024
# Threads for the steps' other off-loop work and for their fsyncs when the helper is gone:
# never one that could wait for a lock the loop's steps hold (the IO_WORKERS threads can),
# so they cannot deadlock.
SYNC_WORKERS = 2


def _no_report(kind: str) -> None:
    pass


class MaildirStore(MaildropAccess):
    def __init__(self, data_dir: Path, mail_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        # Where the accounts' Maildirs live (config `mail_dir`; DATA_DIR/mail by default).
        self.mail_dir = mail_dir if mail_dir is not None else data_dir / "mail"
        self._pool = ThreadPoolExecutor(IO_WORKERS, thread_name_prefix="mailkeep-io")
        self._sync_pool = ThreadPoolExecutor(SYNC_WORKERS, thread_name_prefix="mailkeep-sync")
        self._syncer = Syncer()  # fsyncs of steps, in a helper process (syncer.py)
        self._roots: dict[str, Path] = {}  # account -> its Maildir (account_root, checked)
        # (mailbox, key) -> last known location ("new/NAME", "cur/NAME:2,S"): a hint that
        # saves a folder scan per message; a wrong hint costs one scan, never a wrong answer.
        self._where: dict[str, dict[str, str]] = {}
        self._where_guard = threading.Lock()
        # Where each IMAP folder's message files were last seen (locations.py).
        self._locations = FolderLocations()
        # (account, folder) -> the last snapshot and what it learned (mailbox.FolderCache),
        # shared by every session of the folder; reused while the folder is unchanged.
        self._snapshots: OrderedDict[tuple[str, str], tuple[int, mailbox.FolderCache]] = \
            OrderedDict()
        # (account, folder) -> a counter bumped by each change made through this store: a
        # cached snapshot taken before our own change is never reused, whatever the clocks.
        self._generation: dict[tuple[str, str], int] = {}
        # The change feed and the watcher of other processes' changes (start_feed()).
        self.feed: ChangeFeed | None = None
        self.watcher: FolderWatcher | None = None
        # Told of every failure on our side ("disk_full", "io", "lock"), from the I/O threads
        # too: the daemon counts them (observe/metrics.py).
        self.on_error: Callable[[str], None] = _no_report

    def _failed(self, exc: OSError, what: str) -> DeliveryError:
        if no_space(exc):
            self.on_error("disk_full")
            return DiskFull(f"{what} failed: disk full ({exc.strerror})")
        self.on_error("io")
        return DeliveryError(f"{what} failed: {exc.strerror}")

    def start_feed(self, *, use_inotify: bool = True) -> ChangeFeed:
        """Create the change feed on the running loop (call once, from the loop)."""
        self.feed = ChangeFeed()
        self.watcher = FolderWatcher(self.feed, self._folder_path, use_inotify=use_inotify)
        self.watcher.start()
        return self.feed

    def _folder_path(self, account: str, folder: str) -> Path:
        return folders.folder_path(self.root(account), folder_name(folder))

    def watch(self, account: str, folder: str, session: int = 0) -> Watch:
        if self.feed is None:
            raise StoreError("the change feed is not running")
        return self.feed.watch(account, folder_name(folder), session)

    def quiet(self, account: str, folder: str) -> bool:
        if self.watcher is None:
            return False
        try:
            name = folder_name(folder)
        except StoreRefusal:
            return False
        return self.watcher.quiet(account, name)

    async def stop_feed(self) -> None:
        if self.watcher is not None:
            await self.watcher.close()

    def root(self, mailbox: str) -> Path:
        found = self._roots.get(mailbox)
        if found is None:
            found = account_root(self.mail_dir, mailbox)  # ValueError for an unsafe name
            if len(self._roots) >= SNAPSHOT_CACHE_FOLDERS:
                self._roots.clear()
            self._roots[mailbox] = found
        return found

    def deliver_sync(self, mailbox: str, message: bytes) -> str:
        """Blocking delivery. When it returns, the message survives a crash or power loss."""
        root = self.root(mailbox)
        try:
            ensure_maildir(root)
            name = unique_name(len(message))
            write_message(root, name, f"new/{name}", message)
        except OSError as exc:
            raise self._failed(exc, f"delivery to {mailbox}") from exc
        finally:
            self._changed(mailbox, INBOX, ChangeKind.NEW)
        return name

    async def deliver(self, mailbox: str, message: bytes) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.deliver_sync, mailbox, message)

    def deliver_once_sync(self, mailbox: str, message: bytes, base: str,
                          check: bool) -> bool:
        """Deliver under a name fixed by the caller (the spool: entry id + recipient), so a
        repeated delivery after a crash can be recognised. With `check`, a message of that
        name already in new/ or cur/ means it was delivered: nothing is written and False
        is returned. DiskFull / DeliveryError."""
        root = self.root(mailbox)
        try:
            ensure_maildir(root)
            if check and base in uidlist.scan(root):
                return False
            with contextlib.suppress(FileNotFoundError):
                (root / "tmp" / base).unlink()  # left by an attempt that crashed
            write_message(root, base, f"new/{base}", message)
        except OSError as exc:
            raise self._failed(exc, f"delivery to {mailbox}") from exc
        finally:
            self._changed(mailbox, INBOX, ChangeKind.NEW)
        return True

    async def deliver_once(self, mailbox: str, message: bytes, base: str,
                           check: bool = False) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.deliver_once_sync, mailbox,
                                          message, base, check)

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

    # -- the thread pool, and what may run on the loop instead --------------------------
    # (POP3's maildrop operations are in pop3_access.py, a part of this class.)

    async def _run(self, func: Callable[..., T], *args: object, light: bool = False) -> T:
        """func(*args) in a thread, or (light) on the loop unless it would wait for a lock;
        its errors as StoreError and friends."""
        try:
            if light:
                try:
                    with without_waiting():
                        return func(*args)
                except WouldWait:
                    pass  # another holds a lock: wait for it in a thread
            return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
        except (MessageGone, StoreError):
            raise
        except (LockError, OSError) as exc:
            raise self._store_error(exc) from exc

    async def _run_steps(self, make: Callable[[], steps.Steps[T]], *, light: bool) -> T:
        """The steps make() gives (steps.py): (light) their quick work on the loop and their
        fsyncs in the sync helper, unless a lock would be waited for; otherwise all of it
        in one thread. Errors as _run()."""
        if light:
            try:
                return await steps.drive(make(), self._sync_pool, self._syncer)
            except WouldWait:
                pass  # another holds a lock: the steps undid their work; all in a thread
            except (MessageGone, StoreError):
                raise
            except (LockError, OSError) as exc:
                raise self._store_error(exc) from exc
        return await self._run(lambda: steps.run(make()))

    def _store_error(self, exc: LockError | OSError) -> StoreError:
        """What a lock or I/O failure is told as (StoreFull for a full disk), counted."""
        if isinstance(exc, NoSpace) or (isinstance(exc, OSError) and no_space(exc)):
            self.on_error("disk_full")
            return StoreFull(str(exc) if isinstance(exc, NoSpace)
                             else f"no space: {exc.strerror}")
        if isinstance(exc, LockError):
            self.on_error("lock")
            return StoreError(str(exc))
        self.on_error("io")
        return StoreError(f"{exc.strerror or exc}")

    def _kept(self, account: str, folder: str) -> mailbox.FolderCache | None:
        """The folder's last snapshot, if one is kept (None also for an invalid name)."""
        try:
            key = (account, folder_name(folder))
        except StoreRefusal:
            return None
        with self._where_guard:
            cached = self._snapshots.get(key)
        return None if cached is None else cached[1]

    def _small(self, account: str, folder: str) -> bool:
        """Is the folder known to be small enough for light work on the loop?"""
        kept = self._kept(account, folder)
        return kept is not None and len(kept.snapshot.messages) <= INLINE_MESSAGES

    # -- IMAP: folders, snapshots, flags, copy, expunge --------------------
    # Blocking work lives in folders.py / mailbox.py / subscriptions.py and runs in the pool.

    async def list_folders(self, account: str) -> list[FolderInfo]:
        return await self._run(folders.list_folders, self.root(account))

    async def folder_exists(self, account: str, folder: str) -> bool:
        return await self._run(folders.exists, self.root(account), folder)

    async def create_folder(self, account: str, folder: str) -> str:
        """CREATE; returns the canonical name created. FolderExists / InvalidName."""
        try:
            return await self._run(folders.create, self.root(account), folder)
        finally:
            self._changed(account, None, ChangeKind.FOLDERS)

    def _delete_folder_sync(self, account: str, folder: str) -> None:
        root = self.root(account)
        folders.delete(root, folder)
        special_use.deleted(root, folder_name(folder))

    async def delete_folder(self, account: str, folder: str) -> None:
        try:
            await self._run(self._delete_folder_sync, account, folder)
        finally:
            self._changed(account, None, ChangeKind.FOLDERS)
        self._forget_folder(account, folder)

    def _rename_sync(self, account: str, old: str, new: str) -> None:
        root = self.root(account)
        if folder_name(old) == INBOX:
            move.rename_inbox(root, new)
        else:
            folders.rename(root, old, new)
            special_use.renamed(root, folder_name(old), folder_name(new, creating=True))

    async def rename_folder(self, account: str, old: str, new: str) -> None:
        """RENAME, inferiors included; RENAME INBOX moves its messages (RFC 3501 §6.3.5)."""
        try:
            await self._run(self._rename_sync, account, old, new)
        finally:
            self._changed(account, None, ChangeKind.FOLDERS)
        self._forget_folder(account, old)

    async def subscriptions(self, account: str) -> list[str]:
        return await self._run(subscriptions.read, self.root(account))

    async def subscribe(self, account: str, folder: str) -> None:
        await self._run(subscriptions.change, self.root(account), folder, True)

    async def unsubscribe(self, account: str, folder: str) -> bool:
        """Returns False when the name was not subscribed."""
        return await self._run(subscriptions.change, self.root(account), folder, False)

    def _changed(self, account: str, folder: str | None,
                 kind: ChangeKind | None = None) -> None:
        """Our own change to a folder (None: to the account's folder tree): no snapshot
        taken before it may be reused, and (with a kind) the change feed is told."""
        try:
            name = None if folder is None else folder_name(folder)
        except StoreRefusal:  # not a valid name: nothing was changed under it
            return
        if kind is not None and self.feed is not None:
            self.feed.publish(Change(account, name, kind, acting_session.get()))
        with self._where_guard:
            if name is None:
                for key in {k for k in [*self._snapshots, *self._generation]
                            if k[0] == account}:
                    self._snapshots.pop(key, None)
                    self._generation[key] = self._generation.get(key, 0) + 1
                return
            key = (account, name)
            self._generation[key] = self._generation.get(key, 0) + 1

    def _snapshot_sync(self, account: str, folder: str) -> FolderSnapshot:
        key = (account, folder_name(folder))
        with self._where_guard:
            generation = self._generation.get(key, 0)
            cached = self._snapshots.get(key)
        previous = None if cached is None else cached[1]
        reuse = cached is not None and cached[0] == generation
        result = mailbox.snapshot(self.root(account), folder, previous, reuse)
        self._locations.take(key, result.where, fresh=result is not previous)
        with self._where_guard:
            self._snapshots[key] = (generation, result)
            self._snapshots.move_to_end(key)
            while len(self._snapshots) > SNAPSHOT_CACHE_FOLDERS:
                self._snapshots.popitem(last=False)
        return result.snapshot

    async def snapshot(self, account: str, folder: str) -> FolderSnapshot:
        """UIDVALIDITY, UIDNEXT and every message's UID, flags, date and size; no bodies."""
        return await self._run(self._snapshot_sync, account, folder,
                               light=self._small(account, folder))

    async def claim_recent(self, account: str, folder: str) -> set[int]:
        """Move new/ to cur/; the UIDs that are \\Recent for the caller alone."""
        moved: dict[str, str] = {}
        try:
            claimed = await self._run(mailbox.claim_recent, self.root(account), folder,
                                      self._unclaimed(account, folder), moved,
                                      light=self._small(account, folder))
            self._locations.seen((account, folder_name(folder)), moved)
            return claimed
        finally:
            self._changed(account, folder)

    def _unclaimed(self, account: str, folder: str) -> dict[int, str] | None:
        """UID -> location of the new/ messages in the folder's last snapshot (None: no
        snapshot kept: claim_recent looks for itself)."""
        kept = self._kept(account, folder)
        if kept is None:
            return None
        snap, where = kept.snapshot, kept.where
        if not snap.unclaimed:
            return {}
        lowest = min(snap.unclaimed)
        found: dict[int, str] = {}
        for record in reversed(snap.messages):  # new messages are the last ones
            if record.uid < lowest:
                break
            location = where.get(record.key)
            if record.uid in snap.unclaimed and location is not None:
                found[record.uid] = location
        return found

    async def uidvalidity(self, account: str, folder: str) -> int:
        return await self._run(mailbox.uidvalidity, self.root(account), folder,
                               light=self._small(account, folder))

    async def append(self, account: str, folder: str, data: bytes,
                     flags: Iterable[str] = (), internaldate: datetime | None = None) -> int:
        """APPEND, durably; returns the new UID. NoSuchFolder ([TRYCREATE]), KeywordLimit."""
        try:
            return await self._run(mailbox.append, self.root(account), folder, data,
                                   tuple(flags), internaldate)
        finally:
            self._changed(account, folder, ChangeKind.NEW)

    async def store_flags(self, account: str, folder: str, uids: Iterable[int],
                          mode: FlagMode, flags: Iterable[str]) -> dict[int, frozenset[str]]:
        """STORE; the new flags of each UID still present (vanished UIDs are left out)."""
        try:
            chosen = tuple(uids)
            few = len(chosen) <= INLINE_UIDS
            known = self._known(account, folder, chosen) if few else None
            result, moved = await self._run(
                functools.partial(flagchange.store_flags_at, known=known), self.root(account),
                folder, chosen, mode, tuple(flags), light=few and self._small(account, folder))
            if moved:
                self._locations.seen((account, folder_name(folder)), moved)
            return result
        finally:
            self._changed(account, folder, ChangeKind.FLAGS)

    def _known(self, account: str, folder: str,
               uids: Sequence[int]) -> dict[int, tuple[str, str]] | None:
        """UID -> (base, where the file was last seen) for these UIDs, from the folder's
        last snapshot and our renames since; None unless every one is known."""
        kept = self._kept(account, folder)
        if kept is None:
            return None
        return self._locations.of_uids((account, folder_name(folder)),
                                       kept.snapshot.messages, uids)

    async def copy(self, account: str, src: str, uids: Iterable[int],
                   dst: str) -> dict[int, int]:
        """COPY; src UID -> dst UID for the messages copied (COPYUID)."""
        try:
            return await self._run(mailbox.copy, self.root(account), src, tuple(uids), dst)
        finally:
            self._changed(account, dst, ChangeKind.NEW)

    async def expunge(self, account: str, folder: str,
                      uids: Iterable[int] | None = None) -> list[int]:
        """Remove \\Deleted messages (limited to `uids` for UID EXPUNGE); UIDs removed."""
        limit = None if uids is None else tuple(uids)
        few = limit is not None and len(limit) <= INLINE_UIDS
        known = self._known(account, folder, limit) if few and limit else None
        try:
            removed, gone = await self._run(
                functools.partial(flagchange.expunge_at, known=known), self.root(account),
                folder, limit, light=few and self._small(account, folder))
            if gone:
                self._locations.gone((account, folder_name(folder)), gone)
            return removed
        finally:
            self._changed(account, folder, ChangeKind.EXPUNGE)

    async def move(self, account: str, src: str, uids: Iterable[int],
                   dst: str) -> dict[int, int]:
        """RFC 6851 MOVE: src UID -> dst UID (move.py: one rename per message)."""
        try:
            return await self._run(move.move, self.root(account), src, tuple(uids), dst)
        finally:
            self._changed(account, src, ChangeKind.EXPUNGE)
            self._changed(account, dst, ChangeKind.NEW)

    async def append_many(self, account: str, folder: str,
                          messages: Sequence[NewMessage]) -> Appended:
        """RFC 3502 MULTIAPPEND: all or none, durably; the new UIDs in order."""
        root, batch = self.root(account), tuple(messages)
        light = len(batch) <= INLINE_APPEND_MESSAGES \
            and sum(len(m.data) for m in batch) <= INLINE_APPEND_OCTETS \
            and self._small(account, folder)
        try:
            return await self._run_steps(lambda: mailbox.append_steps(root, folder, batch),
                                         light=light)
        finally:
            self._changed(account, folder, ChangeKind.NEW)

    async def usage(self, account: str) -> Usage:
        return await self._run(usage_scan.usage, self.root(account))

    async def special_uses(self, account: str) -> dict[str, tuple[str, ...]]:
        table = await self._run(special_use.read, self.root(account))
        return table.uses

    def _set_special_use_sync(self, account: str, folder: str, uses: tuple[str, ...]) -> None:
        root = self.root(account)
        if not folders.exists(root, folder):
            raise NoSuchFolder(f"mailbox {folder} does not exist")
        special_use.set_uses(root, folder, uses)

    async def set_special_use(self, account: str, folder: str, uses: Iterable[str]) -> None:
        try:
            await self._run(self._set_special_use_sync, account, folder, tuple(uses))
        finally:
            self._changed(account, None, ChangeKind.FOLDERS)

    async def claim_provisioning(self, account: str) -> bool:
        return await self._run(special_use.claim, self.root(account))

    async def vanished_since(self, account: str, folder: str,
                             modseq_value: int) -> tuple[list[int], bool]:
        def find() -> tuple[list[int], bool]:
            index = modseq.read(self._folder_path(account, folder))
            if index is None:
                return [], False
            return index.vanished_since(modseq_value)
        try:
            return await self._run(find)
        except modseq.ModseqError as exc:
            raise StoreError(str(exc)) from exc

    def _open_message(self, account: str, folder: str, key: str) -> BinaryIO:
        where = (account, folder_name(folder))
        f, location = mailbox.open_message(self.root(account), folder, key,
                                           self._locations.hint(where, key))
        self._locations.seen(where, {key: location})
        return f

    def _read_message_sync(self, account: str, folder: str, key: str) -> bytes:
        with self._open_message(account, folder, key) as f:
            return to_crlf(f.read())

    async def read_message(self, account: str, folder: str, key: str) -> bytes:
        """The whole message with CRLF line ends (RFC822.SIZE octets; callers cache it).
        MessageGone."""
        return await self._run(self._read_message_sync, account, folder, key)

    def _read_messages_sync(self, account: str, folder: str,
                            keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            try:
                out.append(self._read_message_sync(account, folder, key))
            except MessageGone:
                out.append(None)
        return out

    async def read_messages(self, account: str, folder: str,
                            keys: Sequence[str]) -> list[bytes | None]:
        """read_message() of several messages in one trip to the pool (None: gone)."""
        return await self._run(self._read_messages_sync, account, folder, tuple(keys))

    async def stream_message(self, account: str, folder: str, key: str) -> AsyncIterator[bytes]:
        """read_message() in chunks (CRLF line ends), for large literals. MessageGone."""
        f = await self._run(self._open_message, account, folder, key)
        after_cr = False
        try:
            while chunk := await self._run(f.read, ops.READ_CHUNK):
                yield to_crlf(chunk, after_cr)
                after_cr = chunk.endswith(b"\r")
        finally:
            f.close()

    def _forget_folder(self, account: str, folder: str) -> None:
        self._locations.forget_folder(account, folder)

    def clean_stale_tmp(self) -> int:
        """Remove crash leftovers older than 36 hours from every tmp/. Returns the count."""
        removed = 0
        cutoff = time.time() - STALE_TMP_SECONDS
        base = self.mail_dir
        if not base.is_dir():
            return 0
        # INBOX tmp/ and every Maildir++ folder's tmp/ (".Sent/tmp", ".Archive.2026/tmp").
        for tmp in [*base.glob("*/tmp"), *base.glob("*/.*/tmp")]:
            for entry in tmp.iterdir():
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed += 1
        return removed

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._sync_pool.shutdown(wait=True)
        self._syncer.close()
