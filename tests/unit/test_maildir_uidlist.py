"""dovecot-uidlist: format, crash-safe writes, dotlock, UID assignment; the maildrop API
of MaildirStore checked against MemoryStore."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from mailkeep.store.base import MessageGone
from mailkeep.store.maildir import MaildirStore, dotlock, session_lock, uidlist
from mailkeep.store.memory import MemoryStore

DOVECOT_V3 = b"""3 V1700000000 N5 G0123456789abcdef0123456789abcdef
1 :1700000000.M1P100Q0.host,S=10,W=12
3 W99 S90 :1700000002.M3P100Q2.host
4 :1700000003.M4P100Q3.host
"""


def test_parse_dovecot_v3() -> None:
    u = uidlist.parse(DOVECOT_V3)
    assert (u.uidvalidity, u.next_uid, u.guid) == (1700000000, 5,
                                                   "0123456789abcdef0123456789abcdef")
    assert [r.uid for r in u.by_uid()] == [1, 3, 4]
    assert u.records["1700000002.M3P100Q2.host"].extensions == ("W99", "S90")
    assert uidlist.render(u) == DOVECOT_V3  # round-trip, extension fields kept


def test_parse_v1_and_flag_suffix() -> None:
    u = uidlist.parse(b"1 1234 7\n5 1700.M1P1Q1.h:2,S\n")
    assert u.uidvalidity == 1234 and u.next_uid == 7
    assert u.records["1700.M1P1Q1.h"].uid == 5


@pytest.mark.parametrize("bad", [b"", b"9 V1 N1\n", b"3 N1\n", b"3 V1 N1\nx :a\n",
                                 b"3 V1 N1\n1 nocolon\n", b"\xff", b"3 V1 N1\n0 :a\n"])
def test_corrupt_files_raise_uidlist_error(bad: bytes) -> None:
    with pytest.raises(uidlist.UidlistError):
        uidlist.parse(bad)


def test_filename_helpers() -> None:
    assert uidlist.filename_base("1.M2P3Q4.h,S=5:2,FS") == "1.M2P3Q4.h,S=5"
    assert uidlist.filename_flags("1.M2P3Q4.h,S=5:2,FS") == "FS"
    assert uidlist.filename_flags("1.M2P3Q4.h") == ""
    assert uidlist.delivery_order("10.M5P1Q1.h") < uidlist.delivery_order("10.M40P1Q1.h")
    assert uidlist.delivery_order("9.M999999P1Q1.h") < uidlist.delivery_order("10.M1P1Q1.h")


def make_maildir(root: Path, names: list[str], sub: str = "new") -> None:
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / sub / n).write_bytes(b"Subject: x\r\n\r\nbody\r\n")


def test_sync_assigns_uids_in_delivery_order(tmp_path: Path) -> None:
    make_maildir(tmp_path, ["20.M5P1Q0.h", "3.M1P1Q0.h", "20.M40P1Q0.h"])
    u, _files = uidlist.sync(tmp_path, clock=lambda: 1_700_000_000.5)
    assert u.uidvalidity == 1_700_000_000  # UIDVALIDITY: creation time
    assert [(r.uid, r.base) for r in u.by_uid()] == [
        (1, "3.M1P1Q0.h"), (2, "20.M5P1Q0.h"), (3, "20.M40P1Q0.h")]
    text = (tmp_path / "dovecot-uidlist").read_bytes()
    assert text.startswith(b"3 V1700000000 N4 G")
    assert not (tmp_path / "dovecot-uidlist.lock").exists()
    # Moving to cur/ with flags keeps the UID; a new file gets the next one.
    os.rename(tmp_path / "new/3.M1P1Q0.h", tmp_path / "cur/3.M1P1Q0.h:2,S")
    make_maildir(tmp_path, ["30.M1P1Q0.h"])
    u2, files2 = uidlist.sync(tmp_path)
    assert u2.records["3.M1P1Q0.h"].uid == 1
    assert u2.records["30.M1P1Q0.h"].uid == 4
    assert files2["3.M1P1Q0.h"] == "cur/3.M1P1Q0.h:2,S"


def test_sync_forgets_removed_files_and_never_reuses_uids(tmp_path: Path) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h", "2.M1P1Q0.h"])
    uidlist.sync(tmp_path)
    (tmp_path / "new/2.M1P1Q0.h").unlink()
    u, _ = uidlist.sync(tmp_path)
    assert list(u.records) == ["1.M1P1Q0.h"] and u.next_uid == 3
    make_maildir(tmp_path, ["3.M1P1Q0.h"])
    u, _ = uidlist.sync(tmp_path)
    assert u.records["3.M1P1Q0.h"].uid == 3


def test_records_of_removed_files_are_kept_until_a_quarter_of_the_index(
        tmp_path: Path) -> None:
    # As Dovecot (UIDLIST_COMPRESS_PERCENTAGE): an expunge rewrites nothing until records of
    # removed files pass a quarter of the index; readers skip them meanwhile.
    make_maildir(tmp_path, [f"{n}.M1P1Q0.h" for n in range(1, 5)])
    uidlist.sync(tmp_path)
    index_file = tmp_path / "dovecot-uidlist"
    before = index_file.stat().st_ino
    (tmp_path / "new/1.M1P1Q0.h").unlink()
    u, files = uidlist.sync(tmp_path)
    assert "1.M1P1Q0.h" in u.records and "1.M1P1Q0.h" not in files
    assert index_file.stat().st_ino == before  # not rewritten
    make_maildir(tmp_path, ["5.M1P1Q0.h"])
    u, _ = uidlist.sync(tmp_path)
    assert u.records["5.M1P1Q0.h"].uid == 5 and index_file.stat().st_ino == before
    for n in (2, 3):
        (tmp_path / f"new/{n}.M1P1Q0.h").unlink()
    u, _ = uidlist.sync(tmp_path)  # 2 of 5 left: dropped now
    assert sorted(u.records) == ["4.M1P1Q0.h", "5.M1P1Q0.h"] and u.next_uid == 6
    assert uidlist.parse(index_file.read_bytes()).records.keys() == u.records.keys()


def test_sync_without_changes_writes_nothing(tmp_path: Path) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    uidlist.sync(tmp_path)
    before = (tmp_path / "dovecot-uidlist").stat().st_ino
    uidlist.sync(tmp_path)
    assert (tmp_path / "dovecot-uidlist").stat().st_ino == before


def test_live_lock_is_waited_for_then_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    other = subprocess.Popen(["sleep", "60"])  # a live process of this host holds the lock
    try:
        (tmp_path / "dovecot-uidlist.lock").write_text(f"{other.pid}:{os.uname().nodename}\n")
        monkeypatch.setattr(dotlock, "LOCK_WAIT_SECONDS", 0.2)
        with pytest.raises(uidlist.UidlistError, match="held"):
            uidlist.sync(tmp_path)
    finally:
        other.kill()
        other.wait()


def test_stale_lock_is_broken(tmp_path: Path) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    lock = tmp_path / "dovecot-uidlist.lock"
    lock.write_text("garbage")
    old = time.time() - dotlock.LOCK_STALE_SECONDS - 5
    os.utime(lock, (old, old))
    u, _ = uidlist.sync(tmp_path)
    assert u.records and not lock.exists()


def test_lock_of_a_dead_process_is_broken(tmp_path: Path) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    (tmp_path / "dovecot-uidlist.lock").write_text(f"{pid}:{os.uname().nodename}\n")
    u, _ = uidlist.sync(tmp_path)
    assert u.records


# -- session lock --------------------------------------------------------------------------

def test_session_lock_excludes_and_recovers(tmp_path: Path) -> None:
    root = tmp_path / "m"
    assert session_lock.acquire(root)
    assert not session_lock.acquire(root)
    assert (root / "dovecot-pop3-session.lock").exists()
    session_lock.release(root)
    assert session_lock.acquire(root)
    session_lock.release(root)
    # A lock left by a crashed process is stale at once.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    (root / "dovecot-pop3-session.lock").write_text(f"{pid}:{os.uname().nodename}\n")
    assert session_lock.acquire(root)
    session_lock.release(root)
    # Another host's lock: only its age makes it stale.
    (root / "dovecot-pop3-session.lock").write_text("1:elsewhere.example\n")
    assert not session_lock.acquire(root)
    old = time.time() - session_lock.SESSION_LOCK_STALE_SECONDS - 1
    os.utime(root / "dovecot-pop3-session.lock", (old, old))
    assert session_lock.acquire(root)
    session_lock.release(root)


# -- the maildrop API: MaildirStore against MemoryStore ------------------------------------

MESSAGES = [b"Subject: 1\r\n\r\none\r\n", b"Subject: 2\r\n\r\n" + b"x" * 200_000 + b"\r\n",
            b"Subject: 3\r\n\r\n.three\r\n"]


async def exercise(store: MaildirStore | MemoryStore) -> list[object]:
    for m in MESSAGES:
        await store.deliver("bob", m)
    lock = await store.lock_maildrop("bob")
    assert lock is not None
    assert await store.lock_maildrop("bob") is None
    drop = await store.maildrop("bob")
    trace: list[object] = [[(m.uid, m.size, m.seen) for m in drop.messages]]
    bodies = []
    for m in drop.messages:
        chunks = [c async for c in store.read("bob", m.key)]
        assert all(len(c) <= 65536 for c in chunks)
        bodies.append(b"".join(chunks))
    trace.append(bodies == MESSAGES)
    await store.mark_seen("bob", [drop.messages[0].key])
    await store.mark_seen("bob", [drop.messages[0].key])  # idempotent
    trace.append([m.seen for m in (await store.maildrop("bob")).messages])
    trace.append(b"".join([c async for c in store.read("bob", drop.messages[0].key)]))
    trace.append(await store.delete("bob", [drop.messages[1].key, drop.messages[1].key]))
    trace.append(await store.delete("bob", [drop.messages[1].key]))
    with pytest.raises(MessageGone):
        async for _ in store.read("bob", drop.messages[1].key):
            pass
    after = await store.maildrop("bob")
    trace.append([m.uid for m in after.messages])
    await lock.release()
    lock2 = await store.lock_maildrop("bob")
    assert lock2 is not None
    await lock2.release()
    return trace


def test_maildir_store_matches_memory_store(tmp_path: Path) -> None:
    async def both() -> tuple[list[object], list[object]]:
        maildir = MaildirStore(tmp_path)
        try:
            a = await exercise(maildir)
        finally:
            maildir.close()
        return a, await exercise(MemoryStore())

    a, b = asyncio.run(both())
    assert a == b
    cur = sorted(p.name for p in (tmp_path / "mail/bob/cur").iterdir())
    assert len(cur) == 1 and cur[0].endswith(":2,S")  # Dovecot's seen: new/ -> cur/ :2,S
    assert not (tmp_path / "mail/bob/dovecot-pop3-session.lock").exists()


def test_size_of_a_foreign_lf_file_is_its_crlf_size(tmp_path: Path) -> None:
    root = tmp_path / "mail/bob"
    make_maildir(root, [])
    (root / "cur/1.M1P1Q0.other:2,").write_bytes(b"A: b\n\nline\r\nx\n")
    store = MaildirStore(tmp_path)
    try:
        drop = asyncio.run(store.maildrop("bob"))
    finally:
        store.close()
    assert [m.size for m in drop.messages] == [len(b"A: b\r\n\r\nline\r\nx\r\n")]


def test_new_records_are_appended_in_place_like_dovecot(tmp_path: Path) -> None:
    """Dovecot appends new records to dovecot-uidlist (header N left behind) and reads the
    next UID as max(N, highest + 1); so do we, and the file is never rewritten for it."""
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    uidlist.sync(tmp_path)
    path = tmp_path / "dovecot-uidlist"
    inode, header = path.stat().st_ino, path.read_bytes().split(b"\n")[0]
    for n in (2, 3):
        make_maildir(tmp_path, [f"{n}.M1P1Q0.h"])
        u, _ = uidlist.sync(tmp_path)
        assert u.records[f"{n}.M1P1Q0.h"].uid == n
    assert path.stat().st_ino == inode
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == header and b"N2" in header  # the header as first written
    assert lines[-3:] == [b"2 :2.M1P1Q0.h", b"3 :3.M1P1Q0.h", b""]
    assert uidlist.read(tmp_path).next_uid == 4  # type: ignore[union-attr]


def test_an_expunge_rewrites_the_index_without_the_gone_records(tmp_path: Path) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h", "2.M1P1Q0.h"])
    uidlist.sync(tmp_path)
    make_maildir(tmp_path, ["3.M1P1Q0.h"])
    uidlist.sync(tmp_path)  # appended
    (tmp_path / "new/3.M1P1Q0.h").unlink()
    uidlist.sync(tmp_path)
    text = (tmp_path / "dovecot-uidlist").read_bytes()
    assert text.startswith(b"3 V") and b" N4 " in text  # the next UID kept in the header
    assert b"3.M1P1Q0.h" not in text and text.count(b"\n") == 3
    make_maildir(tmp_path, ["4.M1P1Q0.h"])
    u, _ = uidlist.sync(tmp_path)
    assert u.records["4.M1P1Q0.h"].uid == 4  # UID 3 is never handed out again


def test_a_record_still_being_appended_is_not_read(tmp_path: Path) -> None:
    """A reader without the lock may catch a writer mid-line: the line without its newline
    is not there yet (a cut-short base name would otherwise name no file)."""
    data = DOVECOT_V3 + b"5 :1700000004.M5P1"
    u = uidlist.parse(data)
    assert sorted(r.uid for r in u.records.values()) == [1, 3, 4] and u.next_uid == 5


def test_a_failed_append_is_cut_off_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """The write went in but could not be synced (I/O error, quota): the file is cut back to
    what it was, so the next append does not glue a record onto half of one."""
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    uidlist.sync(tmp_path)
    before = (tmp_path / "dovecot-uidlist").read_bytes()

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dotlock.os, "fdatasync", failing)
    make_maildir(tmp_path, ["2.M1P1Q0.h"])
    with pytest.raises(uidlist.UidlistError):
        uidlist.sync(tmp_path)
    assert (tmp_path / "dovecot-uidlist").read_bytes() == before
    monkeypatch.undo()
    u, _ = uidlist.sync(tmp_path)
    assert u.records["2.M1P1Q0.h"].uid == 2
