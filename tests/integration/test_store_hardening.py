"""Storage faults found by outside testing (issue 7), attacked from the client side over
real TLS sockets against the real daemon:

* item 6: APPEND answered NO while the index lock was held by someone else, yet the message
  showed up later, so the client's retry made a duplicate;
* item 7: a lock naming the daemon's own pid (a crashed container's daemon was PID 1, the
  new one is PID 1 too) or an empty lock blocked POP3 login and SELECT for minutes;
* item 8: on a full disk (a real tmpfs, tests/support/fullfs) submission answers
  452 4.3.1, and users can still log in, SELECT, read, and delete mail to make room.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.store.maildir import dotlock, session_lock, uidlist
from mailkeep.store.maildir.layout import unique_name
from tests.support.daemon import (
    RunningDaemon,
    start_process_daemon,
    start_thread_daemon,
    write_config,
)
from tests.support.fullfs import SmallFs, mounted_tmpfs

HOST = socket.gethostname()


def message(subject: str, body: bytes = b"hello\r\n") -> bytes:
    return (f"From: alice@example.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
            f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@example.test>"
            "\r\n\r\n").encode() + body


def submit(d: RunningDaemon, subject: str) -> None:
    with d.smtp() as s:
        s.login("alice", "alice-secret-pw")
        s.sendmail("alice@example.test", ["alice@example.test"], message(subject))


def imap_login(d: RunningDaemon, user: str = "alice",
               password: str = "alice-secret-pw") -> imaplib.IMAP4_SSL:
    c = d.imaps()
    c.login(user, password)
    return c


def pop3_login(d: RunningDaemon, user: str = "alice",
               password: str = "alice-secret-pw") -> poplib.POP3_SSL:
    p = d.pop3s()
    p.user(user)
    p.pass_(password)
    return p


def exists(c: imaplib.IMAP4_SSL, folder: str = "INBOX") -> int:
    typ, data = c.select(folder)
    assert typ == "OK", data
    return int(data[0] or b"0")


def maildir(d: RunningDaemon, user: str = "alice") -> Path:
    return d.data_dir / "mail" / user


def listing(root: Path, sub: str) -> list[str]:
    return sorted(os.listdir(root / sub))


def drop_in(root: Path, subject: str) -> str:
    """A message put into new/ behind our back (another deliverer): it has no UID yet."""
    data = message(subject)
    name = unique_name(len(data))
    (root / "new" / name).write_bytes(data)
    return name


# -- item 6: APPEND refused means not stored ----------------------------------------------

@pytest.fixture
def imap_daemon_here(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True)
    running = start_thread_daemon(config, ca, "asyncio")
    try:
        yield running
    finally:
        running.stop()


def test_append_refused_for_a_held_index_lock_is_not_stored(
        imap_daemon_here: RunningDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    d = imap_daemon_here
    monkeypatch.setattr(dotlock, "LOCK_WAIT_SECONDS", 0.5)  # the daemon runs in this process
    c = imap_login(d)
    typ, _ = c.append("INBOX", None, None, message("first"))
    assert typ == "OK"
    assert exists(c) == 1
    c.logout()
    holder = subprocess.Popen(["sleep", "60"])  # e.g. a Dovecot process busy on the index
    lock = maildir(d) / uidlist.LOCK_NAME
    try:
        lock.write_text(f"{holder.pid}:{HOST}")
        c = imap_login(d)
        typ, data = c.append("INBOX", None, None, message("second"))
        assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
        c.logout()
    finally:
        holder.kill()
        holder.wait()
        lock.unlink(missing_ok=True)
    # The holder is gone: the client that was told NO looks, and retries.
    c = imap_login(d)
    assert exists(c) == 1, "a refused APPEND must not be stored"
    typ, _ = c.append("INBOX", None, None, message("second"))
    assert typ == "OK"
    assert exists(c) == 2
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [part[1].strip() for part in data if isinstance(part, tuple)]
    assert subjects == [b"Subject: first", b"Subject: second"]
    c.logout()


# -- item 7: locks left by a crashed daemon of the same pid, and empty locks ---------------

@pytest.fixture
def process_daemon(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    """`mailkeep serve` as its own process: its pid is the one a crashed predecessor in a
    container would have left in the locks (both are PID 1 there)."""
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True)
    running = start_process_daemon(config, ca)
    try:
        yield running
    finally:
        running.stop()


def test_locks_naming_the_daemons_own_pid_do_not_lock_users_out(
        process_daemon: RunningDaemon) -> None:
    d = process_daemon
    assert d.proc is not None
    own = f"{d.proc.pid}:{HOST}\n"
    submit(d, "one")
    root = maildir(d)
    # The daemon "crashed" while indexing and while a POP3 session was open.
    (root / uidlist.LOCK_NAME).write_text(own)
    (root / session_lock.SESSION_LOCK_NAME).write_text(own)
    p = pop3_login(d)
    assert p.stat()[0] == 1
    p.quit()
    submit(d, "two")  # something new to index, so SELECT must take the index lock
    (root / uidlist.LOCK_NAME).write_text(own)
    c = imap_login(d)
    assert exists(c) == 2
    c.logout()
    assert not (root / uidlist.LOCK_NAME).exists()


def test_empty_locks_left_by_a_full_disk_do_not_lock_users_out(
        process_daemon: RunningDaemon) -> None:
    d = process_daemon
    submit(d, "one")
    root = maildir(d)
    old = time.time() - dotlock.EMPTY_LOCK_STALE_SECONDS - 5
    for name in (uidlist.LOCK_NAME, session_lock.SESSION_LOCK_NAME):
        (root / name).write_bytes(b"")
        os.utime(root / name, (old, old))
    p = pop3_login(d)
    assert p.stat()[0] == 1
    p.quit()
    submit(d, "two")
    (root / uidlist.LOCK_NAME).write_bytes(b"")
    os.utime(root / uidlist.LOCK_NAME, (old, old))
    c = imap_login(d)
    assert exists(c) == 2
    c.logout()


# -- item 8: a full disk --------------------------------------------------------------------

@pytest.fixture
def full_disk_daemon(tmp_path: Path, ca: trustme.CA) -> Iterator[tuple[RunningDaemon, SmallFs]]:
    """The daemon with its data_dir on a small tmpfs of its own."""
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True)
    with mounted_tmpfs(tmp_path / "data") as fs:
        running = start_thread_daemon(config, ca, "asyncio")
        try:
            yield running, fs
        finally:
            running.stop()


def test_full_disk(full_disk_daemon: tuple[RunningDaemon, SmallFs]) -> None:
    d, fs = full_disk_daemon
    for i in range(3):
        submit(d, f"m{i}")
    c = imap_login(d)
    c.create("Archive")
    assert exists(c) == 3  # indexed: UIDs 1..3
    c.logout()
    root = maildir(d)
    late = drop_in(root, "late")  # arrived just before the disk filled up: no UID yet
    fs.fill()

    # Submission: RFC 3463 X.3.1, the client keeps the message and tries later.
    with d.smtp() as s:
        s.login("alice", "alice-secret-pw")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail("alice@example.test", ["alice@example.test"], message("refused"))
    assert refused.value.smtp_code == 452
    assert refused.value.smtp_error.startswith(b"4.3.1"), refused.value.smtp_error
    assert not os.listdir(root / "tmp")

    # POP3 login and listing work, from the UIDs already written.
    p = pop3_login(d)
    assert p.stat()[0] == 3
    uidls = [line.split()[1] for line in p.uidl()[1]]
    assert len(uidls) == 3
    assert b"Subject: m0" in p.retr(1)[1]
    p.quit()

    # IMAP: STATUS, SELECT, FETCH work; APPEND and COPY are refused and leave nothing.
    c = imap_login(d)
    typ, data = c.status("INBOX", "(MESSAGES UIDNEXT)")
    assert typ == "OK" and b"MESSAGES 3" in data[0] and b"UIDNEXT 4" in data[0], data
    assert exists(c) == 3
    typ, data = c.fetch("1:*", "(UID)")
    assert typ == "OK" and len(data) == 3
    new_before = listing(root, "new") + listing(root, "cur")
    typ, data = c.append("INBOX", None, None, message("appended"))
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
    typ, data = c.copy("1", "Archive")
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]"), data
    assert listing(root, "new") + listing(root, "cur") == new_before
    assert not os.listdir(root / "tmp")
    assert not listing(root / ".Archive", "new") and not listing(root / ".Archive", "tmp")
    assert exists(c) == 3
    assert exists(c, "Archive") == 0
    assert exists(c) == 3

    # Deleting mail frees space: IMAP EXPUNGE ...
    free = fs.available()
    typ, _ = c.store("1", "+FLAGS", "(\\Deleted)")
    assert typ == "OK"
    typ, data = c.expunge()
    assert typ == "OK" and data == [b"1"], data
    assert fs.available() > free
    c.logout()
    # ... and POP3 DELE + QUIT.
    fs.fill()
    free = fs.available()
    p = pop3_login(d)
    count = p.stat()[0]
    assert count >= 2
    p.dele(1)
    p.quit()
    assert fs.available() > free

    # Space is back: delivery works, and the late message gets its UID at last.
    fs.empty()
    submit(d, "after")
    c = imap_login(d)
    assert exists(c) == 3  # m2, late, after
    typ, data = c.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    got: list[tuple[int, bytes]] = []
    for part in data:
        if isinstance(part, tuple):
            m = re.search(rb"UID (\d+)", part[0])
            assert m is not None
            got.append((int(m.group(1)), part[1].strip()))
    assert [s for _, s in got] == [b"Subject: m2", b"Subject: late", b"Subject: after"]
    assert got[0][0] == 3 and got[1][0] == 4  # the late one got its UID once space was back
    c.logout()
    index = uidlist.read(root)
    assert index is not None and index.records[late].uid == got[1][0]
    assert uidls[2] in [line.split()[1] for line in pop3_uidls(d)]


def pop3_uidls(d: RunningDaemon) -> list[bytes]:
    p = pop3_login(d)
    try:
        return p.uidl()[1]
    finally:
        p.quit()
