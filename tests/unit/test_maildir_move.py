"""RFC 6851 MOVE on Maildir (store/maildir/move.py), MULTIAPPEND's all-or-none, usage counts
and the special-use sidecar.

The crash tests run the move in a child process that dies (os._exit, no clean-up) at each step
of move.py's order -- after the renames, after the target's index is written -- and then look
at the Maildir as the next process would: every message is in exactly one of the two folders,
never both, never neither. A failure to write the target's index (disk full) must leave the
MOVE undone, the messages under their old UIDs in the source."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailkeep.store import FlagMode, NewMessage, NoSuchFolder, StoreFull, Usage
from mailkeep.store.maildir import MaildirStore, uidlist
from mailkeep.store.maildir import special_use as sidecar
from mailkeep.store.maildir.dotlock import Dotlock, NoSpace

A = "alice"
WHEN = datetime(2020, 5, 6, 7, 8, 9, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    yield s
    s.close()


def root(tmp_path: Path) -> Path:
    return tmp_path / "mail" / A


def files(folder: Path) -> dict[str, str]:
    return uidlist.scan(folder)


def body(i: int) -> bytes:
    return f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()


@contextlib.contextmanager
def disk_full(monkeypatch: pytest.MonkeyPatch, folder: str) -> Iterator[None]:
    """The UID index of `folder` (a Maildir directory name) cannot be written: both ways an
    index is written (appended to in place, or rewritten and renamed over) fail as a full
    disk makes them fail."""
    real_replace, real_append = Dotlock.replace, Dotlock.append_unsynced

    def full(real: Callable[..., object]) -> Callable[..., object]:
        def write(self: Dotlock, data: bytes, **kwargs: object) -> object:
            if self.root.name == folder and self.target == uidlist.UIDLIST_NAME:
                raise NoSpace("no space")
            return real(self, data, **kwargs)
        return write

    with monkeypatch.context() as patch:
        patch.setattr(Dotlock, "replace", full(real_replace))
        patch.setattr(Dotlock, "append_unsynced", full(real_append))
        yield


async def seed(store: MaildirStore, n: int = 3) -> None:
    await store.create_folder(A, "Archive")
    for i in range(n):
        flags = ["\\Seen", f"kw{i}"] if i % 2 == 0 else ["\\Flagged"]
        await store.append(A, "INBOX", body(i), flags, WHEN)


async def test_move_keeps_flags_dates_and_keywords(store: MaildirStore, tmp_path: Path) -> None:
    await seed(store)
    await store.claim_recent(A, "INBOX")           # all in cur/
    await store.append(A, "INBOX", body(9), ["kw9"], WHEN)  # UID 4, in new/ (\Recent)
    await store.append(A, "Archive", b"Subject: other\r\n\r\n", ["zz"], WHEN)
    before = {m.uid: m for m in (await store.snapshot(A, "INBOX")).messages}
    mapping = await store.move(A, "INBOX", [3, 1, 4, 99], "Archive")
    assert mapping == {1: 2, 3: 3, 4: 4}  # source UID order, next UIDs of the target
    inbox = await store.snapshot(A, "INBOX")
    assert [m.uid for m in inbox.messages] == [2]
    archive = await store.snapshot(A, "Archive")
    moved = {m.uid: m for m in archive.messages}
    for src, dst in mapping.items():
        assert moved[dst].flags == before[src].flags
        assert moved[dst].internaldate == WHEN
        assert moved[dst].size == before[src].size
        assert moved[dst].key == before[src].key  # the same file, renamed
        data = await store.read_message(A, "Archive", moved[dst].key)
        assert data == body(src - 1 if src < 4 else 9)
    # \Recent is where the file is: the new/ one is still unclaimed in the target.
    assert archive.unclaimed == {1, 4}
    # keyword letters were translated to the target's dovecot-keywords
    assert (root(tmp_path) / ".Archive" / "dovecot-keywords").read_text().splitlines()[0] \
        == "0 zz"


async def test_move_into_same_folder_gives_new_uids(store: MaildirStore) -> None:
    await seed(store, 2)
    mapping = await store.move(A, "INBOX", [1], "INBOX")
    assert mapping == {1: 3}
    snap = await store.snapshot(A, "INBOX")
    assert [m.uid for m in snap.messages] == [2, 3]


async def test_move_to_missing_folder(store: MaildirStore) -> None:
    await seed(store, 1)
    with pytest.raises(NoSuchFolder):
        await store.move(A, "INBOX", [1], "Nowhere")
    assert [m.uid for m in (await store.snapshot(A, "INBOX")).messages] == [1]


async def test_move_keeps_base_unless_taken(store: MaildirStore, tmp_path: Path) -> None:
    await seed(store, 1)
    (base,) = files(root(tmp_path))
    # A file of the same base already in the target (copied back by hand): a fresh base.
    (root(tmp_path) / ".Archive" / "cur" / f"{base}:2,").write_bytes(b"x")
    await store.move(A, "INBOX", [1], "Archive")
    assert len(files(root(tmp_path) / ".Archive")) == 2


async def test_move_away_and_back_gets_a_new_uid(store: MaildirStore) -> None:
    """The target's index still lists the base of a message that left it (uidlist.KEEP_STALE
    keeps such records for a while): moved back, the message must get a new UID, never its
    old one (RFC 3501 §2.3.1.1; found by the stateful test: Sent gave UID 1 twice)."""
    await seed(store, 4)
    await store.move(A, "INBOX", [1, 2, 3, 4], "Archive")     # Archive UIDs 1-4
    assert await store.move(A, "Archive", [1], "INBOX") == {1: 5}
    assert await store.move(A, "INBOX", [5], "Archive") == {5: 5}
    archive = await store.snapshot(A, "Archive")
    assert [m.uid for m in archive.messages] == [2, 3, 4, 5]
    assert archive.uidnext == 6
    assert await store.read_message(A, "Archive", archive.messages[-1].key) == body(0)


async def test_move_undone_when_target_index_cannot_be_written(
        store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(store)
    inbox_files = files(root(tmp_path))
    with disk_full(monkeypatch, ".Archive"), pytest.raises(StoreFull):
        await store.move(A, "INBOX", [1, 2, 3], "Archive")
    assert files(root(tmp_path)) == inbox_files  # back in place, same names
    assert files(root(tmp_path) / ".Archive") == {}
    assert [m.uid for m in (await store.snapshot(A, "INBOX")).messages] == [1, 2, 3]


async def test_move_undone_when_a_rename_fails(
        store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EXDEV (folders on two filesystems) or EIO half-way: the moved ones go back."""
    await seed(store)
    inbox_files = files(root(tmp_path))
    real = os.rename
    calls = []

    def flaky(src: object, dst: object) -> None:
        if "/.Archive/new/" in str(dst) or "/.Archive/cur/" in str(dst):
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(18, "Invalid cross-device link")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(Exception, match="cross-device"):
        await store.move(A, "INBOX", [1, 2, 3], "Archive")
    monkeypatch.setattr(os, "rename", real)
    assert files(root(tmp_path)) == inbox_files
    assert [m.uid for m in (await store.snapshot(A, "INBOX")).messages] == [1, 2, 3]
    assert (await store.snapshot(A, "Archive")).messages == ()


CHILD = textwrap.dedent("""
    import asyncio, os, sys
    from pathlib import Path
    from mailkeep.store.maildir import MaildirStore, move, uidlist
    data_dir, point = Path(sys.argv[1]), sys.argv[2]
    if point == "after-renames":
        real_sync = move._sync_dirs
        def crash(*dirs):
            real_sync(*dirs)
            os._exit(9)
        move._sync_dirs = crash
    elif point == "after-target-index":
        real_write_back = uidlist._write_back_steps  # appended or rewritten: both come here
        def crash(lock, root, before, index, settle=()):
            yield from real_write_back(lock, root, before, index, settle)
            if root.name == ".Archive":
                os._exit(9)
        uidlist._write_back_steps = crash
    store = MaildirStore(data_dir)
    asyncio.run(store.move("alice", "INBOX", [1, 2, 3], "Archive"))
    os._exit(0)
""")


@pytest.mark.parametrize("point", ["after-renames", "after-target-index", "none"])
async def test_crash_during_move_leaves_each_message_in_one_folder(
        store: MaildirStore, tmp_path: Path, point: str) -> None:
    await seed(store)
    await store.append(A, "INBOX", body(7), [], WHEN)  # UID 4 stays
    originals = {base: (await store.read_message(A, "INBOX", base))
                 for base in files(root(tmp_path))}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), point], cwd=REPO,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == (0 if point == "none" else 9), proc.stderr
    fresh = MaildirStore(tmp_path)  # the next process
    try:
        inbox = files(root(tmp_path))
        archive = files(root(tmp_path) / ".Archive")
        assert not set(inbox) & set(archive)          # never both
        assert set(inbox) | set(archive) == set(originals)  # never neither
        assert len(archive) == 3
        snap_in = await fresh.snapshot(A, "INBOX")
        snap_ar = await fresh.snapshot(A, "Archive")
        assert [m.uid for m in snap_in.messages] == [4]
        assert [m.uid for m in snap_ar.messages] == [1, 2, 3]
        for m in snap_ar.messages:
            assert await fresh.read_message(A, "Archive", m.key) == originals[m.key]
        assert not list((root(tmp_path) / ".Archive" / "tmp").iterdir())
    finally:
        fresh.close()


async def test_append_many_all_or_none(store: MaildirStore, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    stored = await store.append_many(A, "INBOX", [NewMessage(body(1), ("\\Seen",), WHEN),
                                                  NewMessage(body(2)), NewMessage(body(3))])
    assert stored.uids == (1, 2, 3)
    assert stored.uidvalidity == await store.uidvalidity(A, "INBOX")
    with disk_full(monkeypatch, A), pytest.raises(StoreFull):
        await store.append_many(A, "INBOX", [NewMessage(body(4)), NewMessage(body(5))])
    assert len(files(root(tmp_path))) == 3
    assert not list((root(tmp_path) / "tmp").iterdir())
    snap = await store.snapshot(A, "INBOX")
    assert [(m.uid, m.internaldate == WHEN) for m in snap.messages] == \
        [(1, True), (2, False), (3, False)]


async def test_usage_counts_every_folder(store: MaildirStore, tmp_path: Path) -> None:
    assert await store.usage(A) == Usage(0, 0)
    await seed(store)
    await store.append(A, "Archive", b"x" * 100, [], WHEN)
    expected = sum(len(body(i)) for i in range(3)) + 100
    assert await store.usage(A) == Usage(expected, 4)
    await store.store_flags(A, "INBOX", [1], FlagMode.ADD,
                            ["\\Deleted"])
    assert await store.usage(A) == Usage(expected, 4)  # \Deleted counts until expunged
    await store.expunge(A, "INBOX")
    assert await store.usage(A) == Usage(expected - len(body(0)), 3)
    # a file without S= (another writer) is stat()ed
    (root(tmp_path) / "new" / "1.2.host").write_bytes(b"y" * 7)
    assert await store.usage(A) == Usage(expected - len(body(0)) + 7, 4)
    await store.delete_folder(A, "Archive")
    assert (await store.usage(A)).messages == 3


async def test_special_use_sidecar_follows_rename_and_delete(
        store: MaildirStore, tmp_path: Path) -> None:
    await store.create_folder(A, "Ablage")
    await store.create_folder(A, "Ablage.2026")
    await store.set_special_use(A, "Ablage.2026", ["\\Archive"])
    await store.set_special_use(A, "Ablage", ["\\Sent", "\\Sent"])
    assert await store.special_uses(A) == {"Ablage": ("\\Sent",),
                                           "Ablage.2026": ("\\Archive",)}
    text = (root(tmp_path) / sidecar.SPECIAL_USE_NAME).read_text()
    assert "\\Archive\tAblage\t2026\n" in text
    await store.rename_folder(A, "Ablage", "Gesendete Objekte")
    assert await store.special_uses(A) == {"Gesendete Objekte": ("\\Sent",),
                                           "Gesendete Objekte.2026": ("\\Archive",)}
    await store.delete_folder(A, "Gesendete Objekte")
    assert await store.special_uses(A) == {"Gesendete Objekte.2026": ("\\Archive",)}
    await store.set_special_use(A, "Gesendete Objekte.2026", [])
    assert await store.special_uses(A) == {}
    with pytest.raises(NoSuchFolder):
        await store.set_special_use(A, "Nowhere", ["\\Junk"])
    assert await store.claim_provisioning(A) is True
    assert await store.claim_provisioning(A) is False
    assert sidecar.read(root(tmp_path)).provisioned
