"""store/maildir/modseq.py: the MODSEQ sidecar (RFC 7162) beside the UID index."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import mailkeep.store.maildir.modseq as modseq_mod
from mailkeep.store.base import FlagMode
from mailkeep.store.maildir import modseq
from mailkeep.store.maildir.layout import ensure_maildir
from mailkeep.store.maildir.store import MaildirStore
from mailkeep.store.memory import MemoryStore
from tests.support.imap_driver import run_sync

SEEN = frozenset({"\\Seen"})
NONE: frozenset[str] = frozenset()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    ensure_maildir(tmp_path / "f")
    return tmp_path / "f"


def test_first_update_gives_every_message_the_same_start(folder: Path) -> None:
    index = modseq.update(folder, 7, {1: NONE, 2: SEEN})
    assert index.highest > 1_000_000_000_000  # microseconds: above any earlier counter
    assert index.modseqs() == {1: index.highest, 2: index.highest}
    assert modseq.read(folder) is not None


def test_unchanged_snapshot_writes_nothing(folder: Path) -> None:
    first = modseq.update(folder, 7, {1: NONE})
    before = (folder / modseq.SIDECAR_NAME).stat().st_ino
    again = modseq.update(folder, 7, {1: NONE})
    assert again.highest == first.highest
    assert (folder / modseq.SIDECAR_NAME).stat().st_ino == before


def test_changes_get_the_next_modseq_and_expunges_are_logged(folder: Path) -> None:
    start = modseq.update(folder, 7, {1: NONE, 2: NONE, 3: NONE}).highest
    after_flag = modseq.update(folder, 7, {1: SEEN, 2: NONE, 3: NONE})
    flagged = after_flag.highest
    assert flagged > start
    assert after_flag.modseqs() == {1: flagged, 2: start, 3: start}
    after_new = modseq.update(folder, 7, {1: SEEN, 2: NONE, 3: NONE, 4: NONE})
    added = after_new.highest
    assert added > flagged and after_new.modseqs()[4] == added
    after_expunge = modseq.update(folder, 7, {1: SEEN, 4: NONE})
    assert after_expunge.highest > added
    assert after_expunge.vanished_since(start) == ([2, 3], True)
    assert after_expunge.vanished_since(after_expunge.highest) == ([], True)
    # Read back from disk: the same.
    again = modseq.read(folder)
    assert again is not None and again.modseqs() == after_expunge.modseqs()
    assert again.vanished_since(added) == ([2, 3], True)


def test_values_follow_the_clock_so_a_lost_write_is_never_reused(folder: Path) -> None:
    """The sidecar is not fsynced: a crash may bring back an older one. The changes it
    forgot then get new values from the clock, above anything handed out before."""
    modseq.update(folder, 7, {1: NONE})
    older = (folder / modseq.SIDECAR_NAME).read_bytes()
    handed_out = modseq.update(folder, 7, {1: SEEN}).highest   # then "lost" in a crash:
    (folder / modseq.SIDECAR_NAME).write_bytes(older)
    again = modseq.update(folder, 7, {1: SEEN})
    assert again.modseqs()[1] > handed_out


def test_a_new_uidvalidity_starts_over_above_the_old_values(folder: Path) -> None:
    old = modseq.update(folder, 7, {1: NONE, 2: SEEN})
    modseq.update(folder, 7, {1: SEEN, 2: SEEN})
    fresh = modseq.update(folder, 8, {1: NONE})
    assert fresh.uidvalidity == 8
    assert fresh.highest > old.highest + 1
    assert fresh.vanished_since(0) == ([], False)  # nothing known before the restart


def test_the_expunge_log_is_bounded(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modseq_mod, "MAX_EXPUNGE_LOG", 3)
    monkeypatch.setattr(modseq_mod, "EXPUNGE_LOG_SLACK", 1)  # cut back when past 4
    uids = {u: NONE for u in range(1, 7)}
    start = modseq.update(folder, 7, uids).highest
    marks = []
    for u in range(1, 6):
        del uids[u]
        marks.append(modseq.update(folder, 7, uids).highest)
        logged = modseq.read(folder)
        assert logged is not None
        assert len(logged.expunged) == (u if u <= 4 else 3)  # at 4 kept, past it cut to 3
    index = modseq.read(folder)
    assert index is not None and len(index.expunged) == 3
    assert index.vanished_since(marks[2]) == ([4, 5], True)
    assert index.vanished_since(start)[1] is False  # older than the log reaches


def test_the_expunge_log_is_shared_by_copies_and_grows_without_copying(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modseq_mod, "FLATTEN_AFTER", 4)
    log = modseq_mod.ExpungeLog()
    first = log.plus([(1, 10)])
    second = first.plus([(2, 20), (3, 30)])
    other = first.plus([(9, 90)])  # a copy that went its own way
    assert list(first) == [(1, 10)]
    assert list(second) == [(1, 10), (2, 20), (3, 30)] and len(second) == 3
    assert list(other) == [(1, 10), (9, 90)]
    assert second.plus([]) is second
    longer = second
    for n in range(4, 12):
        longer = longer.plus([(n, n * 10)])
        assert longer.depth <= 4  # flattened now and then
    assert list(longer) == [(n, n * 10) for n in range(1, 12)]
    assert list(second) == [(1, 10), (2, 20), (3, 30)]  # untouched


def test_a_corrupt_sidecar_is_an_error_not_a_crash_and_starts_over(folder: Path) -> None:
    first = modseq.update(folder, 7, {1: NONE}).highest
    (folder / modseq.SIDECAR_NAME).write_bytes(b"garbage\n")
    with pytest.raises(modseq.ModseqError):
        modseq.read(folder)
    # The next snapshot starts over from the clock: above anything handed out before.
    again = modseq.update(folder, 7, {1: NONE})
    assert again.highest > first and again.entries[1][0] == again.highest


def test_updates_are_appended_and_compacted_now_and_then(folder: Path) -> None:
    """A flag change appends a line (no rename per change); the file is rewritten once it
    holds COMPACT_FACTOR times the lines it needs, so it stays bounded."""
    modseq.update(folder, 7, {1: NONE, 2: NONE})
    path = folder / modseq.SIDECAR_NAME
    inode = path.stat().st_ino
    modseq.update(folder, 7, {1: SEEN, 2: NONE})
    modseq.update(folder, 7, {2: NONE})  # 1 expunged
    assert path.stat().st_ino == inode
    text = path.read_bytes().decode()
    assert text.count("\n") == 5 and "\nX " in text
    index = modseq.read(folder)
    assert index is not None and list(index.entries) == [2]
    assert index.highest == max(m for m, _ in index.expunged)  # the header's H lags
    flags = [NONE, SEEN]
    for i in range(3 * modseq.COMPACT_SLACK):
        modseq.update(folder, 7, {2: flags[i % 2]})
    lines = path.read_bytes().count(b"\n")
    assert lines <= modseq.COMPACT_FACTOR * 2 + modseq.COMPACT_SLACK + 1
    after = modseq.read(folder)
    assert after is not None and after.vanished_since(0)[0] == [1]


def test_a_line_cut_short_by_a_crash_is_ignored(folder: Path) -> None:
    index = modseq.update(folder, 7, {1: NONE})
    with (folder / modseq.SIDECAR_NAME).open("ab") as f:
        f.write(b"1 99999999999999999")  # no newline: a write a crash interrupted
    again = modseq.read(folder)
    assert again is not None and again.entries == index.entries


def test_store_snapshots_carry_modseqs_and_vanished(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path)
    try:
        run_sync_thread = _runner()
        uid1 = run_sync_thread(store.append("alice", "INBOX", b"Subject: a\r\n\r\nx\r\n"))
        uid2 = run_sync_thread(store.append("alice", "INBOX", b"Subject: b\r\n\r\ny\r\n"))
        snap = run_sync_thread(store.snapshot("alice", "INBOX"))
        base = snap.highestmodseq
        assert set(snap.modseqs) == {uid1, uid2} and max(snap.modseqs.values()) == base
        run_sync_thread(store.store_flags("alice", "INBOX", [uid1], FlagMode.ADD,
                                          ["\\Deleted"]))
        flagged = run_sync_thread(store.snapshot("alice", "INBOX"))
        assert flagged.highestmodseq > base
        assert flagged.modseqs[uid1] == flagged.highestmodseq
        run_sync_thread(store.expunge("alice", "INBOX"))
        gone = run_sync_thread(store.snapshot("alice", "INBOX"))
        assert gone.highestmodseq > flagged.highestmodseq
        assert run_sync_thread(store.vanished_since("alice", "INBOX", flagged.highestmodseq)) \
            == ([uid1], True)
    finally:
        store.close()


def _runner():  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()

    def run(coro):  # type: ignore[no-untyped-def]
        return loop.run_until_complete(coro)

    return run


def test_memory_store_tracks_modseqs_like_the_sidecar() -> None:
    store = MemoryStore()
    uid = run_sync(store.append("a", "INBOX", b"x\r\n"))
    base = run_sync(store.snapshot("a", "INBOX")).highestmodseq
    run_sync(store.store_flags("a", "INBOX", [uid], FlagMode.ADD, ["\\Deleted"]))
    assert run_sync(store.snapshot("a", "INBOX")).modseqs[uid] == base + 1
    run_sync(store.expunge("a", "INBOX"))
    assert run_sync(store.vanished_since("a", "INBOX", base + 1)) == ([uid], True)


def test_a_delta_compares_only_what_changed(folder: Path) -> None:
    start = modseq.update(folder, 7, {1: NONE, 2: NONE, 3: NONE})
    asked: list[int] = []

    def every_flag() -> dict[int, frozenset[str]]:
        asked.append(1)
        return {1: NONE, 2: SEEN, 3: NONE, 4: NONE}

    # Since that update: 2 got \Seen, 4 arrived, 3 went.
    after = modseq.update(folder, 7, every_flag,
                          modseq.Delta(start.highest, {2: SEEN, 4: NONE}, [3]))
    assert asked == []  # the sidecar was as the delta's base left it: no full comparison
    assert after.highest > start.highest
    assert after.modseqs() == {1: start.highest, 2: after.highest, 4: after.highest}
    assert after.vanished_since(start.highest) == ([3], True)


def test_a_delta_from_before_someone_elses_change_is_not_trusted(folder: Path) -> None:
    start = modseq.update(folder, 7, {1: NONE, 2: NONE})
    # Another process (or worker) saw 1 flagged \Seen and back meanwhile: the sidecar moved
    # on, and its entry for 1 no longer matches the flags our delta's base had.
    modseq.update(folder, 7, {1: SEEN, 2: NONE})
    after = modseq.update(folder, 7, lambda: {1: NONE, 2: SEEN},
                          modseq.Delta(start.highest, {2: SEEN}, []))
    # Compared in full: 1's return to no flags is a change too, with its own MODSEQ.
    assert after.modseqs()[1] == after.highest
    assert after.modseqs()[2] == after.highest


async def test_snapshots_after_a_change_give_the_same_modseqs_as_a_full_look(
        tmp_path: Path) -> None:
    store = MaildirStore(tmp_path)
    try:
        for _ in range(4):
            await store.append("a", "INBOX", b"Subject: x\r\n\r\nbody\r\n")
        await store.snapshot("a", "INBOX")
        await store.store_flags("a", "INBOX", [2], FlagMode.ADD, ["\\Seen"])
        await store.expunge("a", "INBOX", [])  # nothing \Deleted: a no-op
        await store.store_flags("a", "INBOX", [3], FlagMode.ADD, ["\\Deleted"])
        await store.expunge("a", "INBOX", [3])
        incremental = await store.snapshot("a", "INBOX")
    finally:
        store.close()
    fresh = MaildirStore(tmp_path)  # no previous snapshot: everything compared
    try:
        full = await fresh.snapshot("a", "INBOX")
    finally:
        fresh.close()
    assert incremental.modseqs == full.modseqs
    assert incremental.highestmodseq == full.highestmodseq
    assert incremental.modseqs[2] > incremental.modseqs[1]
