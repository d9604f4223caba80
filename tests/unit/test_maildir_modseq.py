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
    assert after_flag.highest == start + 1
    assert after_flag.modseqs() == {1: start + 1, 2: start, 3: start}
    after_new = modseq.update(folder, 7, {1: SEEN, 2: NONE, 3: NONE, 4: NONE})
    assert after_new.modseqs()[4] == start + 2
    after_expunge = modseq.update(folder, 7, {1: SEEN, 4: NONE})
    assert after_expunge.highest == start + 3
    assert after_expunge.vanished_since(start) == ([2, 3], True)
    assert after_expunge.vanished_since(start + 3) == ([], True)
    # Read back from disk: the same.
    again = modseq.read(folder)
    assert again is not None and again.modseqs() == after_expunge.modseqs()
    assert again.vanished_since(start + 2) == ([2, 3], True)


def test_a_new_uidvalidity_starts_over_above_the_old_values(folder: Path) -> None:
    old = modseq.update(folder, 7, {1: NONE, 2: SEEN})
    modseq.update(folder, 7, {1: SEEN, 2: SEEN})
    fresh = modseq.update(folder, 8, {1: NONE})
    assert fresh.uidvalidity == 8
    assert fresh.highest > old.highest + 1
    assert fresh.vanished_since(0) == ([], False)  # nothing known before the restart


def test_the_expunge_log_is_bounded(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modseq_mod, "MAX_EXPUNGE_LOG", 3)
    uids = {u: NONE for u in range(1, 7)}
    start = modseq.update(folder, 7, uids).highest
    for u in range(1, 6):
        del uids[u]
        modseq.update(folder, 7, uids)
    index = modseq.read(folder)
    assert index is not None and len(index.expunged) == 3
    assert index.vanished_since(start + 3) == ([4, 5], True)
    assert index.vanished_since(start)[1] is False  # older than the log reaches


def test_a_corrupt_sidecar_is_an_error_not_a_crash(folder: Path) -> None:
    (folder / modseq.SIDECAR_NAME).write_bytes(b"garbage\n")
    with pytest.raises(modseq.ModseqError):
        modseq.read(folder)


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
