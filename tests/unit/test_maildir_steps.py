"""APPEND as steps (store/maildir/steps.py) with its fsyncs in the sync helper process
(store/maildir/syncer.py): the same result as the all-in-a-thread path, and when a sync
fails, the helper dies, a lock is held or the client goes away half-way, nothing is left
behind -- no file in tmp/ or new/, no index record -- and no lock stays taken."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.store import NewMessage, StoreError
from mailkeep.store.maildir import MaildirStore, mailbox, steps, uidlist
from mailkeep.store.maildir.dotlock import Dotlock
from mailkeep.store.maildir.syncer import Syncer, Unavailable

A = "alice"


def msg(i: int) -> bytes:
    return f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    yield s
    s.close()


def folder(tmp_path: Path) -> Path:
    return tmp_path / "mail" / A


def state(path: Path) -> tuple[list[str], list[str], bytes]:
    """tmp/ and new/ names and the index bytes."""
    return (sorted(os.listdir(path / "tmp")), sorted(os.listdir(path / "new")),
            (path / uidlist.UIDLIST_NAME).read_bytes())


async def small(store: MaildirStore) -> None:
    """A message and a snapshot: the store knows INBOX is small (the light path)."""
    await store.append_many(A, "INBOX", [NewMessage(msg(0))])
    await store.snapshot(A, "INBOX")


# -- the helper itself --------------------------------------------------------------------

async def test_the_helper_syncs_and_reports_errors_as_fsync_would(tmp_path: Path) -> None:
    syncer = Syncer()
    try:
        with open(tmp_path / "f", "wb") as f:
            f.write(b"x")
            await syncer.sync(fsync=[f.fileno()], fdatasync=[f.fileno()])
            os.fstat(f.fileno())  # ours stays open
        r, w = os.pipe()
        try:
            with pytest.raises(OSError) as caught:
                await syncer.sync(fsync=[r])  # fsync(2) of a pipe: EINVAL
            assert caught.value.errno == errno.EINVAL
        finally:
            os.close(r)
            os.close(w)
    finally:
        syncer.close()


async def test_a_dead_helper_fails_what_waits_and_is_not_used_again(tmp_path: Path) -> None:
    syncer = Syncer()
    try:
        with open(tmp_path / "f", "wb") as f:
            await syncer.sync(fsync=[f.fileno()])  # started
            assert syncer._proc is not None
            syncer._proc.kill()
            syncer._proc.wait()
            with pytest.raises((OSError, Unavailable)) as caught:
                await syncer.sync(fsync=[f.fileno()])
            if isinstance(caught.value, OSError):
                assert caught.value.errno == errno.EIO
            with pytest.raises(Unavailable):
                await syncer.sync(fsync=[f.fileno()])
    finally:
        syncer.close()


async def test_appends_go_on_in_threads_when_the_helper_is_gone(
        store: MaildirStore, tmp_path: Path) -> None:
    await small(store)
    store._syncer._broken = True
    appended = await store.append_many(A, "INBOX", [NewMessage(msg(1))])
    snap = await store.snapshot(A, "INBOX")
    assert [r.uid for r in snap.messages] == [1, *appended.uids]


# -- APPEND as steps ----------------------------------------------------------------------

async def test_append_as_steps_matches_the_thread_path(
        store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await small(store)
    asked: list[steps.Sync] = []
    real = Syncer.sync

    async def counted(self: Syncer, fsync: list[int] = (), fdatasync: list[int] = ()) -> None:
        asked.append(steps.Sync(tuple(fsync), tuple(fdatasync)))
        await real(self, fsync, fdatasync)

    monkeypatch.setattr(Syncer, "sync", counted)
    batch = [NewMessage(msg(i), ("\\Seen",) if i % 2 else ()) for i in (1, 2, 3)]
    appended = await store.append_many(A, "INBOX", batch)
    # Two steps: the three tmp/ files, then new/ with the index.
    assert [(len(s.files), len(s.data)) for s in asked] == [(3, 0), (1, 1)]
    assert appended.uids == (2, 3, 4)
    path = folder(tmp_path)
    tmp, new, index = state(path)
    assert tmp == [] and len(new) == 4
    assert uidlist.parse(index).next_uid == 5
    snap = await store.snapshot(A, "INBOX")
    assert [(r.uid, sorted(r.flags)) for r in snap.messages] == [
        (1, []), (2, ["\\Seen"]), (3, []), (4, ["\\Seen"])]
    assert await store.read_message(A, "INBOX", snap.messages[2].key) == msg(2)


@pytest.mark.parametrize("failing", [1, 2])
async def test_a_failed_sync_leaves_nothing_behind(
        store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        failing: int) -> None:
    await small(store)
    path = folder(tmp_path)
    before = state(path)
    calls = 0
    real = Syncer.sync

    async def flaky(self: Syncer, fsync: list[int] = (), fdatasync: list[int] = ()) -> None:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise OSError(errno.EIO, "I/O error")
        await real(self, fsync, fdatasync)

    monkeypatch.setattr(Syncer, "sync", flaky)
    with pytest.raises(StoreError):
        await store.append_many(A, "INBOX", [NewMessage(msg(1))])
    assert calls == failing
    assert state(path) == before  # no tmp/ file, no new/ file, the index as it was
    assert not (path / uidlist.LOCK_NAME).exists()
    monkeypatch.setattr(Syncer, "sync", real)
    appended = await store.append_many(A, "INBOX", [NewMessage(msg(2))])
    assert appended.uids == (2,)  # the UID of the failed one was never handed out


async def test_a_cancelled_append_undoes_itself_and_lets_the_lock_go(
        store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await small(store)
    path = folder(tmp_path)
    before = state(path)
    started = asyncio.Event()
    real = Syncer.sync
    calls = 0

    async def slow(self: Syncer, fsync: list[int] = (), fdatasync: list[int] = ()) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the index step: under the lock, the message already in new/
            started.set()
            await asyncio.sleep(30)
        await real(self, fsync, fdatasync)

    monkeypatch.setattr(Syncer, "sync", slow)
    task = asyncio.create_task(store.append_many(A, "INBOX", [NewMessage(msg(1))]))
    await asyncio.wait_for(started.wait(), 5)
    assert (path / uidlist.LOCK_NAME).exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert state(path) == before
    assert not (path / uidlist.LOCK_NAME).exists()


async def test_a_lock_held_elsewhere_sends_the_append_to_a_thread_that_waits(
        store: MaildirStore, tmp_path: Path) -> None:
    await small(store)
    path = folder(tmp_path)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with Dotlock(path, uidlist.UIDLIST_NAME):
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(5)
        task = asyncio.create_task(store.append_many(A, "INBOX", [NewMessage(msg(1))]))
        await asyncio.sleep(0.2)
        assert not task.done()  # waiting for the lock, in a thread (the loop runs on)
        assert len(os.listdir(path / "tmp")) == 1  # the thread's; the loop's try was undone
        release.set()
        appended = await asyncio.wait_for(task, 10)
    finally:
        release.set()
        holder.join()
    assert appended.uids == (2,)
    tmp, new, _ = state(path)
    assert tmp == [] and len(new) == 2


def test_steps_run_inline_in_a_thread_as_the_old_function(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path)
    try:
        root = store.root(A)
        got = mailbox.append_many(root, "INBOX", [NewMessage(msg(1)), NewMessage(msg(2))])
        assert got.uids == (1, 2)
        tmp, new, _ = state(root)
        assert tmp == [] and len(new) == 2
    finally:
        store.close()


@pytest.mark.parametrize(("count", "octets", "on_loop"), [
    (2, 0, True), (3, 0, False),   # INLINE_APPEND_MESSAGES 2: at it, and one past it
    (1, 64, True), (1, 65, False),  # INLINE_APPEND_OCTETS 64: at it, and one octet past
])
async def test_only_small_appends_run_as_steps_on_the_loop(
        store: MaildirStore, monkeypatch: pytest.MonkeyPatch, count: int, octets: int,
        on_loop: bool) -> None:
    from mailkeep.store.maildir import store as store_module  # noqa: PLC0415

    await small(store)
    monkeypatch.setattr(store_module, "INLINE_APPEND_MESSAGES", 2)
    monkeypatch.setattr(store_module, "INLINE_APPEND_OCTETS", 64 if octets else 1 << 20)
    asked = 0
    real = Syncer.sync

    async def counted(self: Syncer, fsync: list[int] = (), fdatasync: list[int] = ()) -> None:
        nonlocal asked
        asked += 1
        await real(self, fsync, fdatasync)

    monkeypatch.setattr(Syncer, "sync", counted)
    data = b"Subject: s\r\n\r\n" + b"x" * (max(octets, 20) - 14)
    appended = await store.append_many(A, "INBOX", [NewMessage(data)] * count)
    assert len(appended.uids) == count
    assert (asked == 2) is on_loop  # the two barriers through the helper, or a thread
