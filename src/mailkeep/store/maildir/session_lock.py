"""The exclusive maildrop lock of a POP3 session (RFC 1939 §4), shared with Dovecot.

Two layers: a process-wide registry (this process's sessions see each other at once), and
the dotlock file `dovecot-pop3-session.lock` in the Maildir, the file Dovecot's
pop3_lock_session uses, so a Dovecot pop3 process and mailkeep exclude each other too.

A crashed holder never blocks forever: the file names its "pid:host"; a dead pid on this
host is stale at once, anything else once the file has not been touched for
SESSION_LOCK_STALE_SECONDS (the holder touches it every SESSION_LOCK_REFRESH_SECONDS).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

SESSION_LOCK_NAME = "dovecot-pop3-session.lock"
# Dovecot pop3 client.c POP3_SESSION_DOTLOCK_STALE_TIMEOUT_SECS: 60*5.
SESSION_LOCK_STALE_SECONDS = 300.0
# Well inside the stale timeout, so a live session's lock never looks stale.
SESSION_LOCK_REFRESH_SECONDS = 60.0

_held: set[Path] = set()
_held_guard = threading.Lock()


def _owner_dead(path: Path) -> bool:
    """True when the lock names a process on this host that no longer runs (or is us)."""
    try:
        text = path.read_bytes()[:300].decode()
    except (OSError, UnicodeDecodeError):
        return False
    pid_text, _, host = text.strip().partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        # Ours, yet not in the registry: left by an earlier daemon in this same process.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _stale(path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return age > SESSION_LOCK_STALE_SECONDS or _owner_dead(path)


def acquire(root: Path) -> bool:
    """Take the lock for the Maildir at `root` (blocking file work: run it off the loop)."""
    key = root.resolve()
    with _held_guard:
        if key in _held:
            return False
        _held.add(key)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = root / SESSION_LOCK_NAME
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if not _stale(path):
                    break
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            try:
                os.write(fd, f"{os.getpid()}:{socket.gethostname()}\n".encode())
            finally:
                os.close(fd)
            return True
    except BaseException:
        with _held_guard:
            _held.discard(key)
        raise
    with _held_guard:
        _held.discard(key)
    return False


def refresh(root: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(root / SESSION_LOCK_NAME)


def release(root: Path) -> None:
    key = root.resolve()
    with _held_guard:
        if key not in _held:
            return
        _held.discard(key)
        with contextlib.suppress(FileNotFoundError):
            (root / SESSION_LOCK_NAME).unlink()
