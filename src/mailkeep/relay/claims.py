"""One spool, several writers (`workers` > 1): who may attempt which entry.

Every worker accepts mail into the same spool and makes the first attempt of what it
accepted itself (local mail is in the INBOX when the client hears 250, as with one
process). One worker, the primary (the one holding spool/.primary; the supervisor holds
the spool's own lock, spool/.lock, for the whole daemon), does everything else: recovery,
retries, `mailkeep queue` requests, and adopting the entries other workers leave pending.

An entry is attempted only under its claim: flock(LOCK_EX) on spool/locks/ID. A worker
takes the claim of a new entry before the entry appears in queue/ and keeps it for its
first attempt; the primary adopts an entry it does not know only if it can take the claim
(then loads it fresh from disk, so it sees every outcome the other worker logged). A
worker that dies lets go of its claims (the kernel drops flocks with the process), so its
entries are adopted, never stranded, and never attempted by two processes at once.

Blocking file work: run these in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from mailkeep.fsmodes import make_private_dirs
from mailkeep.relay.spool import Spool, SpoolEntry, SpoolError

LOCKS = "locks"
PRIMARY = ".primary"
# incoming/ files and claims without an entry older than this are leftovers of a crash;
# younger ones may be another worker's message being written (a few milliseconds).
STALE_AFTER = 600.0


def _path(spool: Spool, entry_id: str) -> str:
    return str(spool.root / LOCKS / entry_id)


def take_primary(spool: Spool) -> int | None:
    """Become the spool's primary: the descriptor holding spool/.primary (with our pid in it,
    for the administrator), or None while another worker is."""
    make_private_dirs(spool.root)
    fd = os.open(spool.root / PRIMARY, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def claim_new(spool: Spool, entry_id: str) -> int:
    """The claim of an entry about to be written (before it is in queue/): its descriptor."""
    path = _path(spool, entry_id)
    make_private_dirs(spool.root / LOCKS)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Still the file at that name? (a clean-up may have removed it in between)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)


def claim(spool: Spool, entry_id: str) -> int | None:
    """The claim of an existing entry, or None when another process holds it."""
    try:
        fd = os.open(_path(spool, entry_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:  # no locks/ folder yet
        make_private_dirs(spool.root / LOCKS)
        return claim(spool, entry_id)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(spool: Spool, entry_id: str, fd: int) -> None:
    """Let go of a claim; its file goes with it once the entry is gone from queue/."""
    if not (spool.queue / entry_id).exists():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(spool, entry_id))
    os.close(fd)


def adopt(spool: Spool, known: set[str]) -> list[SpoolEntry | SpoolError]:
    """Entries in queue/ that are not in `known` and that nobody is attempting, loaded
    fresh after taking (and then releasing) each one's claim."""
    found: list[SpoolEntry | SpoolError] = []
    for entry_id in spool.ids():
        if entry_id in known:
            continue
        fd = claim(spool, entry_id)
        if fd is None:
            continue  # another worker's first attempt: it is adopted when that ends
        try:
            found.append(spool.load(entry_id))
        except SpoolError as exc:
            if (spool.queue / entry_id).exists():
                found.append(exc)
        finally:
            release(spool, entry_id, fd)
    return found


def clean(spool: Spool, now: float | None = None) -> int:
    """The primary's start: remove crash leftovers that no live worker can be writing
    (incoming/ files and claims without an entry, older than STALE_AFTER)."""
    cutoff = (time.time() if now is None else now) - STALE_AFTER
    removed = 0
    for leftover in spool.incoming.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
                removed += 1
    locks = spool.root / LOCKS
    if locks.is_dir():
        for lock in locks.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if lock.stat().st_mtime >= cutoff or (spool.queue / lock.name).exists():
                    continue
                fd = claim(spool, lock.name)
                if fd is not None:
                    release(spool, lock.name, fd)
    return removed
