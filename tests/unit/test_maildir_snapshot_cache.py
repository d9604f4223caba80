"""Maildir snapshots reused while a folder is unchanged (mailbox.FolderCache, signature()),
message facts (INTERNALDATE, size) kept per filename base, parsed dovecot-uidlist reuse, and
batched message reads: none of it may hide a change from a session."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailkeep.store import FlagMode
from mailkeep.store.maildir import MaildirStore, mailbox, settle, uidlist

A = "alice"
MSG = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    yield s
    s.close()


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust timestamps at once (the real rule waits a second after each change), so the
    reuse paths run without sleeping."""
    monkeypatch.setattr(settle, "SETTLE_NS", 0)
    monkeypatch.setattr(settle, "FINE_SETTLE_NS", 0)


def inbox(tmp_path: Path) -> Path:
    return tmp_path / "mail" / A


def tick() -> None:
    time.sleep(0.03)  # past the filesystem's timestamp granularity (a kernel tick)


async def test_recently_changed_folder_is_not_trusted(store: MaildirStore,
                                                      tmp_path: Path) -> None:
    await store.append(A, "INBOX", MSG)
    path = inbox(tmp_path)
    assert mailbox.signature(path) is None
    later = time.time_ns() + 2 * settle.SETTLE_NS
    assert mailbox.signature(path, now_ns=later) is not None


@pytest.mark.usefixtures("trusting")
async def test_unchanged_folder_snapshot_is_reused(store: MaildirStore) -> None:
    for _ in range(3):
        await store.append(A, "INBOX", MSG)
    await store.claim_recent(A, "INBOX")
    tick()
    first = await store.snapshot(A, "INBOX")
    assert await store.snapshot(A, "INBOX") is first


@pytest.mark.usefixtures("trusting")
async def test_changes_by_another_process_are_seen(tmp_path: Path) -> None:
    a, b = MaildirStore(tmp_path), MaildirStore(tmp_path)
    for _ in range(3):
        await a.append(A, "INBOX", MSG)
    tick()
    assert len((await a.snapshot(A, "INBOX")).messages) == 3
    tick()
    await b.store_flags(A, "INBOX", [2], FlagMode.ADD, ["\\Flagged", "kw"])
    snap = await a.snapshot(A, "INBOX")
    assert snap.messages[1].flags == {"\\Flagged", "kw"}
    tick()
    await b.deliver(A, MSG)
    assert [m.uid for m in (await a.snapshot(A, "INBOX")).messages] == [1, 2, 3, 4]
    tick()
    await b.store_flags(A, "INBOX", [1], FlagMode.ADD, ["\\Deleted"])
    await b.expunge(A, "INBOX")
    snap = await a.snapshot(A, "INBOX")
    assert [m.uid for m in snap.messages] == [2, 3, 4] and snap.unclaimed == {2, 3, 4}
    a.close()
    b.close()


@pytest.mark.usefixtures("trusting")
async def test_change_hidden_from_mtime_is_seen_through_ctime(store: MaildirStore,
                                                              tmp_path: Path) -> None:
    # Two changes within one timestamp tick leave the directory mtime as it was; someone
    # resetting the mtime does the same. The ctime (never settable) still moves.
    await store.append(A, "INBOX", MSG)
    await store.claim_recent(A, "INBOX")
    tick()
    assert (await store.snapshot(A, "INBOX")).messages[0].flags == frozenset()
    cur = inbox(tmp_path) / "cur"
    before = os.stat(cur)
    tick()
    (name,) = os.listdir(cur)
    os.rename(cur / name, cur / (name.split(":")[0] + ":2,S"))
    os.utime(cur, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(cur).st_mtime_ns == before.st_mtime_ns
    assert (await store.snapshot(A, "INBOX")).messages[0].flags == {"\\Seen"}


async def test_own_changes_are_seen_even_if_timestamps_never_move(
        store: MaildirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A filesystem whose times say nothing: only the store's own bookkeeping can tell.
    monkeypatch.setattr(mailbox, "signature", lambda path, now_ns=None: ((1, 2, 3, 4),))
    await store.append(A, "INBOX", MSG)
    assert (await store.snapshot(A, "INBOX")).unclaimed == {1}
    assert await store.claim_recent(A, "INBOX") == {1}
    assert (await store.snapshot(A, "INBOX")).unclaimed == frozenset()
    await store.store_flags(A, "INBOX", [1], FlagMode.ADD, ["\\Answered"])
    assert (await store.snapshot(A, "INBOX")).messages[0].flags == {"\\Answered"}
    await store.append(A, "INBOX", MSG)
    assert len((await store.snapshot(A, "INBOX")).messages) == 2
    await store.store_flags(A, "INBOX", [1, 2], FlagMode.ADD, ["\\Deleted"])
    await store.expunge(A, "INBOX")
    assert (await store.snapshot(A, "INBOX")).messages == ()
    await store.create_folder(A, "Box")
    await store.append(A, "INBOX", MSG)
    await store.copy(A, "INBOX", [3], "Box")
    assert len((await store.snapshot(A, "Box")).messages) == 1
    await store.rename_folder(A, "Box", "Other")
    await store.create_folder(A, "Box")
    assert (await store.snapshot(A, "Box")).messages == ()


@pytest.mark.usefixtures("trusting")
async def test_message_facts_survive_renames_without_a_stat(
        store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    await store.append(A, "INBOX", MSG, internaldate=when)
    # A foreign file without W=, with bare LF: its RFC822.SIZE is measured, once.
    foreign = inbox(tmp_path) / "new" / "1700000000.123_4.otherhost"
    foreign.write_bytes(b"Subject: lf\n\nbody\n")
    os.utime(foreign, (1_700_000_000, 1_700_000_000))
    first = await store.snapshot(A, "INBOX")
    assert [m.size for m in first.messages] == [len(MSG), 21]

    def no_stat(*args: object) -> object:
        raise AssertionError("a message file was looked at again")

    monkeypatch.setattr(mailbox, "_record_facts", no_stat)
    tick()
    await store.claim_recent(A, "INBOX")
    await store.store_flags(A, "INBOX", [1, 2], FlagMode.ADD, ["\\Seen"])
    again = await store.snapshot(A, "INBOX")
    assert [(m.internaldate, m.size, m.flags) for m in again.messages] == [
        (when, len(MSG), {"\\Seen"}),
        (datetime.fromtimestamp(1_700_000_000, UTC), 21, {"\\Seen"})]


@pytest.mark.usefixtures("trusting")
def test_parsed_uidlist_is_reused_as_a_copy_and_replaced_with_the_file(
        tmp_path: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new" / "1700000000.M1P1Q1.h").write_bytes(MSG)
    uidlist.sync(tmp_path)
    tick()
    first = uidlist.read_cached(tmp_path)
    assert first is not None and list(first.records) == ["1700000000.M1P1Q1.h"]
    first.records.clear()
    second = uidlist.read_cached(tmp_path)
    assert second is not None and list(second.records) == ["1700000000.M1P1Q1.h"]
    tick()
    (tmp_path / "new" / "1700000001.M1P1Q2.h").write_bytes(MSG)
    uidlist.sync(tmp_path)
    third = uidlist.read_cached(tmp_path)
    assert third is not None and len(third.records) == 2 and third.next_uid == 3


def test_an_index_we_rewrote_is_not_parsed_again_and_shared_reads_stay_intact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    for n in (1, 2):
        (tmp_path / "new" / f"170000000{n}.M1P1Q{n}.h").write_bytes(MSG)
    uidlist.sync(tmp_path)
    os.unlink(tmp_path / "new" / "1700000001.M1P1Q1.h")
    uidlist.sync(tmp_path)  # drops the record: the file is rewritten whole, and primed

    def no_parse(data: bytes) -> uidlist.Uidlist:
        raise AssertionError("parsed again")
    monkeypatch.setattr(uidlist, "parse", no_parse)
    again = uidlist.read_cached(tmp_path)
    assert again is not None and list(again.records) == ["1700000002.M1P1Q2.h"]
    again.records.clear()  # a copy: the cached parse is untouched
    shared = uidlist.read_cached(tmp_path, shared=True)
    assert shared is not None and list(shared.records) == ["1700000002.M1P1Q2.h"]


async def test_read_messages_gives_none_for_gone_ones(store: MaildirStore,
                                                      tmp_path: Path) -> None:
    for i in range(3):
        await store.append(A, "INBOX", b"Subject: %d\r\n\r\nx\n" % i)
    snap = await store.snapshot(A, "INBOX")
    keys = [m.key for m in snap.messages]
    for name in os.listdir(inbox(tmp_path) / "new"):
        if name.startswith(keys[1]):
            os.unlink(inbox(tmp_path) / "new" / name)
    got = await store.read_messages(A, "INBOX", keys)
    assert got == [b"Subject: 0\r\n\r\nx\r\n", None, b"Subject: 2\r\n\r\nx\r\n"]
