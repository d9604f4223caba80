"""STORE from the locations of the store's last snapshot (store.py `_locations`, mailbox
`store_flags_at(known=...)`): no index sync or folder scan when every UID is known, and a
location gone out of date -- another process renamed or removed the file since -- never
loses a flag it set and never fails the command."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.store import FlagMode
from mailkeep.store.maildir import MaildirStore, mailbox, uidlist

A = "alice"
MSG = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    yield s
    s.close()


@pytest.fixture
def sync_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders uidlist.sync() is called for from now on (clear it to start counting)."""
    calls: list[Path] = []
    real = uidlist.sync

    def counting(root: Path, *args: object) -> object:
        calls.append(root)
        return real(root, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(uidlist, "sync", counting)
    return calls


def inbox(tmp_path: Path) -> Path:
    return tmp_path / "mail" / A


def file_of(tmp_path: Path, uid_base: str) -> Path:
    (found,) = [p for sub in ("new", "cur") for p in (inbox(tmp_path) / sub).iterdir()
                if p.name.split(":", 1)[0] == uid_base]
    return found


async def seeded(store: MaildirStore, n: int = 3) -> list[str]:
    for _ in range(n):
        await store.append(A, "INBOX", MSG)
    snap = await store.snapshot(A, "INBOX")
    return [m.key for m in snap.messages]


async def test_known_uids_need_no_index_sync(store: MaildirStore,
                                             sync_calls: list[Path]) -> None:
    await seeded(store)
    sync_calls.clear()  # what seeding synced does not count
    assert await store.store_flags(A, "INBOX", [2], FlagMode.ADD, ["\\Seen"]) == \
        {2: frozenset({"\\Seen"})}
    # The second one starts from the name the first gave the file, still without a sync.
    assert await store.store_flags(A, "INBOX", [2], FlagMode.ADD, ["\\Flagged"]) == \
        {2: frozenset({"\\Seen", "\\Flagged"})}
    assert await store.store_flags(A, "INBOX", [2], FlagMode.REMOVE, ["\\Seen"]) == \
        {2: frozenset({"\\Flagged"})}
    assert sync_calls == []
    # A UID the snapshot does not know (a new message): the index is synced.
    await store.append(A, "INBOX", MSG)
    assert await store.store_flags(A, "INBOX", [4], FlagMode.ADD, ["\\Seen"]) == \
        {4: frozenset({"\\Seen"})}
    assert len(sync_calls) == 1
    flags = {m.uid: m.flags for m in (await store.snapshot(A, "INBOX")).messages}
    assert flags == {1: frozenset(), 2: frozenset({"\\Flagged"}), 3: frozenset(),
                     4: frozenset({"\\Seen"})}


async def test_a_flag_set_by_another_process_is_kept(store: MaildirStore,
                                                     tmp_path: Path) -> None:
    keys = await seeded(store)
    # Another process flags message 1 after our snapshot (maildir(5) info ":2,F").
    old = file_of(tmp_path, keys[0])
    os.rename(old, inbox(tmp_path) / "cur" / f"{keys[0]}:2,F")
    assert await store.store_flags(A, "INBOX", [1], FlagMode.ADD, ["\\Answered"]) == \
        {1: frozenset({"\\Flagged", "\\Answered"})}
    assert file_of(tmp_path, keys[0]).name == f"{keys[0]}:2,FR"


async def test_a_message_removed_meanwhile_is_left_out(store: MaildirStore,
                                                       tmp_path: Path) -> None:
    keys = await seeded(store)
    file_of(tmp_path, keys[1]).unlink()  # expunged by another process
    assert await store.store_flags(A, "INBOX", [1, 2, 3], FlagMode.ADD, ["\\Seen"]) == \
        {1: frozenset({"\\Seen"}), 3: frozenset({"\\Seen"})}


async def test_uid_expunge_of_known_uids_needs_no_index_sync(
        store: MaildirStore, sync_calls: list[Path]) -> None:
    await seeded(store)
    await store.store_flags(A, "INBOX", [1, 2], FlagMode.ADD, ["\\Deleted"])
    sync_calls.clear()  # what seeding synced does not count
    assert await store.expunge(A, "INBOX", [2, 3]) == [2]  # 3 is not \Deleted
    assert sync_calls == []
    assert await store.expunge(A, "INBOX", [2]) == []  # gone already: the index is synced
    assert [m.uid for m in (await store.snapshot(A, "INBOX")).messages] == [1, 3]


async def test_uid_expunge_sees_a_deleted_flag_set_meanwhile(store: MaildirStore,
                                                             tmp_path: Path) -> None:
    keys = await seeded(store)
    # Another process sets \Deleted on message 3 after our snapshot (maildir(5) ":2,T").
    os.rename(file_of(tmp_path, keys[2]), inbox(tmp_path) / "cur" / f"{keys[2]}:2,T")
    assert await store.expunge(A, "INBOX", [3]) == [3]
    # ... and clears it on message 1, which we had marked: not expunged then.
    await store.store_flags(A, "INBOX", [1], FlagMode.ADD, ["\\Deleted"])
    os.rename(file_of(tmp_path, keys[0]), inbox(tmp_path) / "cur" / f"{keys[0]}:2,S")
    assert await store.expunge(A, "INBOX", [1]) == []
    assert [m.uid for m in (await store.snapshot(A, "INBOX")).messages] == [1, 2]


async def test_reads_after_claiming_recent_start_from_cur(
        store: MaildirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = await seeded(store)  # all three in new/, per the snapshot
    assert await store.claim_recent(A, "INBOX") == {1, 2, 3}
    scans: list[str] = []
    real = mailbox._relocate

    def counting(path: Path, base: str) -> str | None:
        scans.append(base)
        return real(path, base)

    monkeypatch.setattr(mailbox, "_relocate", counting)
    for key in keys:
        assert await store.read_message(A, "INBOX", key) == MSG
    assert scans == []  # each read opened cur/NAME:2, at once, no folder scan
