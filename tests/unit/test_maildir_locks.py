"""Dotlocks (dovecot-uidlist, dovecot-keywords, subscriptions, dovecot-uidvalidity) and the
POP3 session lock: what is stale, what is held, and that no failed write leaves a lock
behind (issue 7, item 7). The full-disk cases use a real full tmpfs (tests/support/fullfs)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.store.maildir import dotlock, flags, folders, session_lock, subscriptions, uidlist
from tests.support.fullfs import SmallFs, mounted_tmpfs

HOST = socket.gethostname()
OURS = f"{os.getpid()}:{HOST}\n"
# Every dotlocked file, and the call that takes its lock.
TARGETS = {
    uidlist.UIDLIST_NAME: lambda root: uidlist.sync(root),
    flags.KEYWORDS_NAME: lambda root: flags.allocate(root, ["Junk"]),
    subscriptions.SUBSCRIPTIONS_NAME: lambda root: subscriptions.change(root, "Sent", True),
    folders.UIDVALIDITY_NAME: lambda root: folders.next_uidvalidity(root),
}


def make_maildir(root: Path, names: list[str]) -> None:
    for d in ("tmp", "new", "cur"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / "new" / n).write_bytes(b"Subject: x\r\n\r\nbody\r\n")


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[SmallFs]:
    """A small real tmpfs (skips when mounting is not permitted)."""
    with mounted_tmpfs(tmp_path / "fs") as mounted:
        yield mounted


@pytest.fixture
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dotlock, "LOCK_WAIT_SECONDS", 0.3)


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A live process of this host that is not us."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


# -- a lock naming our own pid ------------------------------------------------------------

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_lock_naming_our_pid_that_we_do_not_hold_is_stale(tmp_path: Path, target: str,
                                                          short_wait: None) -> None:
    """What a container leaves when the daemon (PID 1) crashed and the new one is PID 1
    again: the lock names us, yet no thread of ours holds it."""
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    (tmp_path / f"{target}.lock").write_text(OURS)  # fresh: only the pid can make it stale
    TARGETS[target](tmp_path)
    assert (tmp_path / target).exists()
    assert not (tmp_path / f"{target}.lock").exists()


def test_lock_held_by_another_thread_of_ours_is_respected(tmp_path: Path,
                                                         short_wait: None) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with dotlock.Dotlock(tmp_path, uidlist.UIDLIST_NAME):
            holding.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert holding.wait(30)
        assert (tmp_path / uidlist.LOCK_NAME).read_text() == OURS
        with pytest.raises(uidlist.UidlistError, match="held"):
            uidlist.sync(tmp_path)
        assert (tmp_path / uidlist.LOCK_NAME).read_text() == OURS  # never broken
    finally:
        done.set()
        t.join(30)
    index, _ = uidlist.sync(tmp_path)
    assert [r.uid for r in index.by_uid()] == [1]


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    """Many threads assigning UIDs at once: each waits for the other, none breaks the
    other's lock (it names the same pid), no UID is given twice."""
    make_maildir(tmp_path, [])
    errors: list[BaseException] = []

    def deliver(n: int) -> None:
        try:
            for i in range(10):
                (tmp_path / "new" / f"{n}{i:02d}.M1P1Q{i}.h").write_bytes(b"x")
                uidlist.sync(tmp_path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(n + 1,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    index, files = uidlist.sync(tmp_path)
    assert len(files) == 40
    assert sorted(r.uid for r in index.records.values()) == list(range(1, 41))


# -- empty locks --------------------------------------------------------------------------

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_empty_lock_older_than_a_few_seconds_is_stale(tmp_path: Path, target: str,
                                                      short_wait: None) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    lock = tmp_path / f"{target}.lock"
    lock.write_bytes(b"")
    age(lock, dotlock.EMPTY_LOCK_STALE_SECONDS + 2)
    TARGETS[target](tmp_path)
    assert not lock.exists()


def test_fresh_empty_lock_is_waited_for(tmp_path: Path, short_wait: None) -> None:
    """Its writer may be about to write its pid: it is not broken at once."""
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    lock = tmp_path / uidlist.LOCK_NAME
    lock.write_bytes(b"")
    with pytest.raises(uidlist.UidlistError, match="held"):
        uidlist.sync(tmp_path)
    assert lock.exists()


def test_live_process_and_other_host_locks_are_respected(tmp_path: Path, live_pid: int,
                                                         short_wait: None) -> None:
    make_maildir(tmp_path, ["1.M1P1Q0.h"])
    lock = tmp_path / uidlist.LOCK_NAME
    for owner in (f"{live_pid}:{HOST}", "1:elsewhere.example"):
        lock.write_text(owner)  # Dovecot writes "pid:host" without a newline
        age(lock, dotlock.EMPTY_LOCK_STALE_SECONDS + 2)
        with pytest.raises(uidlist.UidlistError, match="held"):
            uidlist.sync(tmp_path)
        assert lock.read_text() == owner


# -- full disk: no lock left behind ---------------------------------------------------------

@pytest.mark.parametrize("target", sorted(TARGETS))
def test_failed_pid_write_leaves_no_lock(fs: SmallFs, target: str) -> None:
    root = fs.path / "alice"
    make_maildir(root, ["1.M1P1Q0.h"])
    if target != uidlist.UIDLIST_NAME:
        uidlist.sync(root)
    fs.fill()
    if target == uidlist.UIDLIST_NAME:
        (root / "new" / "2.M1P1Q1.h").touch()  # something to index; the index cannot grow
        index, _ = uidlist.sync(root)  # served from the old index (see test_store_disk_full)
        assert "2.M1P1Q1.h" not in index.records
    else:
        with pytest.raises(dotlock.NoSpace):
            TARGETS[target](root)
    assert not (root / f"{target}.lock").exists()
    # ... so once there is space again nobody has to wait for a stale lock.
    fs.empty()
    TARGETS[target](root)
    assert (root / target).exists()


def test_session_lock_on_a_full_disk(fs: SmallFs) -> None:
    """Without space for the pid the file goes again; the session still gets its lock (held
    in this process) so the user can log in and delete mail."""
    root = fs.path / "alice"
    make_maildir(root, [])
    fs.fill()
    assert session_lock.acquire(root)
    assert not (root / session_lock.SESSION_LOCK_NAME).exists()
    assert not session_lock.acquire(root)  # still exclusive within the process
    session_lock.refresh(root)
    assert not (root / session_lock.SESSION_LOCK_NAME).exists()
    session_lock.release(root)
    fs.empty()
    assert session_lock.acquire(root)
    assert (root / session_lock.SESSION_LOCK_NAME).read_text() == OURS
    session_lock.release(root)


def test_session_lock_release_never_removes_a_lock_it_did_not_write(
        fs: SmallFs) -> None:
    root = fs.path / "alice"
    make_maildir(root, [])
    fs.fill()
    assert session_lock.acquire(root)  # held in the process only
    fs.empty()
    theirs = root / session_lock.SESSION_LOCK_NAME
    theirs.write_text("1:elsewhere.example")  # e.g. a Dovecot pop3 session elsewhere
    session_lock.release(root)
    assert theirs.read_text() == "1:elsewhere.example"


# -- the POP3 session lock ------------------------------------------------------------------

def test_session_lock_stale_cases(tmp_path: Path, live_pid: int) -> None:
    root = tmp_path / "alice"
    make_maildir(root, [])
    path = root / session_lock.SESSION_LOCK_NAME
    # Ours, not held by any session of ours: stale at once.
    path.write_text(OURS)
    assert session_lock.acquire(root)
    session_lock.release(root)
    # Empty, a few seconds old: stale (a crash or a full disk between create and write).
    path.write_bytes(b"")
    age(path, dotlock.EMPTY_LOCK_STALE_SECONDS + 2)
    assert session_lock.acquire(root)
    session_lock.release(root)
    # Empty and fresh, a live process, another host: held.
    path.write_bytes(b"")
    assert not session_lock.acquire(root)
    path.write_text(f"{live_pid}:{HOST}")
    age(path, dotlock.EMPTY_LOCK_STALE_SECONDS + 2)
    assert not session_lock.acquire(root)
    path.write_text("1:elsewhere.example")
    age(path, dotlock.EMPTY_LOCK_STALE_SECONDS + 2)
    assert not session_lock.acquire(root)
    assert path.read_text() == "1:elsewhere.example"
