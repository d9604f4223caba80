"""The Maildir store on a real full filesystem (a small tmpfs, tests/support/fullfs), and
APPEND / COPY when the index lock cannot be had (issue 7, items 6 and 8).

Promises: reading works (snapshot, STATUS, the POP3 listing) from the UIDs already on disk;
files without one wait, unlisted, until space returns, and no UID is handed out that is not
written down; removing mail works and frees space; APPEND / COPY / delivery fail with
StoreFull / DiskFull and leave nothing behind, not even in tmp/.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailkeep.store import DiskFull, FlagMode, StoreError, StoreFull
from mailkeep.store.maildir import MaildirStore, dotlock, settle, uidlist
from mailkeep.store.maildir.layout import unique_name
from tests.support.fullfs import PAGE, SmallFs, mounted_tmpfs

T = TypeVar("T")
USER = "alice"
MSG = b"Subject: m\r\n\r\nbody\r\n"


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A small real tmpfs (skips when mounting is not permitted)."""
    with mounted_tmpfs(tmp_path / "fs") as mounted:
        yield mounted


@pytest.fixture
def store(fs: SmallFs) -> Iterator[MaildirStore]:
    s = MaildirStore(fs.path)
    try:
        yield s
    finally:
        s.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def files(root: Path, sub: str) -> list[str]:
    return sorted(os.listdir(root / sub))


def drop_in(root: Path) -> str:
    """A message that reached new/ without a UID (another deliverer, or Dovecot's LDA)."""
    name = unique_name(len(MSG))
    (root / "new" / name).write_bytes(MSG)
    return name


def test_reading_works_and_no_uid_is_handed_out_unwritten(store: MaildirStore,
                                                          fs: SmallFs) -> None:
    for _ in range(3):
        run(store.deliver(USER, MSG))
    before = run(store.snapshot(USER, "INBOX"))
    root = store.root(USER)
    late = drop_in(root)
    fs.fill()

    snap = run(store.snapshot(USER, "INBOX"))
    assert [m.uid for m in snap.messages] == [1, 2, 3]  # the late one waits for space
    assert snap.uidnext == 4 and snap.uidvalidity == before.uidvalidity
    index = uidlist.read(root)
    assert index is not None and late not in index.records
    drop = run(store.maildrop(USER))
    assert [m.uid for m in drop.messages] == [1, 2, 3]
    assert run(store.uidvalidity(USER, "INBOX")) == snap.uidvalidity
    assert run(store.claim_recent(USER, "INBOX")) == {1, 2, 3}
    assert not os.listdir(root / "tmp")
    assert not [n for n in os.listdir(root) if n.endswith(".lock")]

    fs.empty()
    snap = run(store.snapshot(USER, "INBOX"))
    assert [(m.uid, m.key) for m in snap.messages][-1] == (4, late)


def test_a_snapshot_taken_while_full_is_not_reused_once_space_returns(
        store: MaildirStore, fs: SmallFs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Space coming back changes nothing in the folder, so the folder's change signature
    cannot tell: a snapshot that left files out must not be cached."""
    monkeypatch.setattr(settle, "SETTLE_NS", 0)  # trust signatures at once
    monkeypatch.setattr(settle, "FINE_SETTLE_NS", 0)
    run(store.deliver(USER, MSG))
    run(store.snapshot(USER, "INBOX"))
    late = drop_in(store.root(USER))
    fs.fill()
    assert len(run(store.snapshot(USER, "INBOX")).messages) == 1
    assert len(run(store.snapshot(USER, "INBOX")).messages) == 1
    fs.empty()
    snap = run(store.snapshot(USER, "INBOX"))
    assert [(m.uid, m.key) for m in snap.messages][-1] == (2, late)


def test_removing_mail_frees_space(store: MaildirStore, fs: SmallFs) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * (16 * PAGE) + b"\r\n"
    for _ in range(2):
        run(store.deliver(USER, big))
    run(store.snapshot(USER, "INBOX"))
    drop_in(store.root(USER))  # the index would have to grow
    fs.fill()
    free = fs.available()
    run(store.store_flags(USER, "INBOX", [1], FlagMode.ADD, ["\\Deleted"]))
    assert run(store.expunge(USER, "INBOX")) == [1]
    assert fs.available() >= free + 16 * PAGE
    fs.fill()
    free = fs.available()
    drop = run(store.maildrop(USER))
    assert drop.messages[0].uid == 2
    assert run(store.delete(USER, [drop.messages[0].key])) == 1
    assert fs.available() >= free + 16 * PAGE


def test_delivery_fails_with_disk_full(store: MaildirStore, fs: SmallFs) -> None:
    run(store.deliver(USER, MSG))
    fs.fill()
    with pytest.raises(DiskFull, match="disk full"):
        run(store.deliver(USER, MSG))
    root = store.root(USER)
    assert not os.listdir(root / "tmp") and len(files(root, "new")) == 1


def test_append_that_does_not_fit_leaves_nothing(store: MaildirStore,
                                                 fs: SmallFs) -> None:
    run(store.append(USER, "INBOX", MSG))
    root = store.root(USER)
    fs.fill()
    with pytest.raises(StoreFull):
        run(store.append(USER, "INBOX", MSG))
    assert not os.listdir(root / "tmp") and len(files(root, "new")) == 1


def test_append_whose_uid_does_not_fit_is_withdrawn(store: MaildirStore,
                                                    fs: SmallFs) -> None:
    """One page free: the message fits, its UID (the index, one page more) does not. The
    client is told NO, so the message must not show later."""
    run(store.append(USER, "INBOX", MSG))
    root = store.root(USER)
    new_before = files(root, "new")
    fs.fill()
    fs.release(PAGE)
    with pytest.raises(StoreFull):
        run(store.append(USER, "INBOX", MSG))
    assert files(root, "new") == new_before and not os.listdir(root / "tmp")
    fs.empty()
    snap = run(store.snapshot(USER, "INBOX"))
    assert [m.uid for m in snap.messages] == [1]
    assert run(store.append(USER, "INBOX", MSG)) == 2  # the retry: exactly one copy


def test_copy_on_a_full_disk_leaves_no_copy(store: MaildirStore,
                                            fs: SmallFs) -> None:
    run(store.append(USER, "INBOX", MSG))
    run(store.create_folder(USER, "Archive"))
    dst = store.root(USER) / ".Archive"
    fs.fill()
    with pytest.raises(StoreFull):
        run(store.copy(USER, "INBOX", [1], "Archive"))
    assert not files(dst, "new") and not files(dst, "tmp")
    fs.empty()
    assert run(store.copy(USER, "INBOX", [1], "Archive")) == {1: 1}
    snap = run(store.snapshot(USER, "Archive"))
    assert [m.uid for m in snap.messages] == [1]


def test_new_folder_on_a_full_disk_keeps_its_uidvalidity(store: MaildirStore,
                                                         fs: SmallFs) -> None:
    """No room for the index of a new account: it shows empty, with one UIDVALIDITY, and
    the index written once space returns keeps it (a selected client sees no change)."""
    fs.fill()
    first = run(store.snapshot("bob", "INBOX"))
    assert first.messages == ()
    assert run(store.uidvalidity("bob", "INBOX")) == first.uidvalidity
    assert run(store.snapshot("bob", "INBOX")).uidvalidity == first.uidvalidity
    with pytest.raises(StoreFull):
        run(store.append("bob", "INBOX", MSG))
    fs.empty()
    assert run(store.append("bob", "INBOX", MSG)) == 1
    snap = run(store.snapshot("bob", "INBOX"))
    assert snap.uidvalidity == first.uidvalidity
    index = uidlist.read(store.root("bob"))
    assert index is not None and index.uidvalidity == first.uidvalidity


# -- the index lock held by someone else (item 6) -----------------------------------------

@pytest.fixture
def plain_store(tmp_path: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def held_index(plain_store: MaildirStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """INBOX's dovecot-uidlist.lock held by a live process of this host (e.g. a slow Dovecot)
    for as long as the test wants: remove the returned path to let go."""
    monkeypatch.setattr(dotlock, "LOCK_WAIT_SECONDS", 0.3)
    run(plain_store.append(USER, "INBOX", MSG))
    holder = subprocess.Popen(["sleep", "60"])
    lock = plain_store.root(USER) / uidlist.LOCK_NAME
    lock.write_text(f"{holder.pid}:{socket.gethostname()}")
    try:
        yield lock
    finally:
        holder.kill()
        holder.wait()


def test_append_when_the_index_lock_times_out_leaves_nothing(
        plain_store: MaildirStore, held_index: Path) -> None:
    root = plain_store.root(USER)
    with pytest.raises(StoreError):
        run(plain_store.append(USER, "INBOX", MSG))
    assert len(files(root, "new")) == 1 and not os.listdir(root / "tmp")
    held_index.unlink()
    snap = run(plain_store.snapshot(USER, "INBOX"))
    assert [m.uid for m in snap.messages] == [1]
    assert run(plain_store.append(USER, "INBOX", MSG)) == 2  # the retry: one copy only
    assert len(run(plain_store.snapshot(USER, "INBOX")).messages) == 2


def test_copy_when_the_index_lock_times_out_leaves_nothing(
        plain_store: MaildirStore, held_index: Path) -> None:
    run(plain_store.create_folder(USER, "Archive"))
    dst = plain_store.root(USER) / ".Archive"
    lock = dst / uidlist.LOCK_NAME
    os.rename(held_index, lock)  # now Archive's index is the one held
    with pytest.raises(StoreError):
        run(plain_store.copy(USER, "INBOX", [1], "Archive"))
    assert not files(dst, "new") and not files(dst, "tmp")
    lock.unlink()
    assert run(plain_store.snapshot(USER, "Archive")).messages == ()
    assert run(plain_store.copy(USER, "INBOX", [1], "Archive")) == {1: 1}
