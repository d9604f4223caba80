"""The exclusive maildrop lock of a POP3 session (RFC 1939 §4), shared with Dovecot.

Two layers: a process-wide registry (this process's sessions see each other at once), and
the dotlock file `dovecot-pop3-session.lock` in the Maildir, the file Dovecot's
pop3_lock_session uses, so a Dovecot pop3 process and mailkeep exclude each other too.

A crashed holder never blocks for long (dotlock.lock_is_stale): the file names its
"pid:host"; a dead pid on this host, or our own pid when no session of ours holds the lock
(a daemon that crashed as PID 1 in a container, restarted as PID 1), is stale at once; an
empty file once it is EMPTY_LOCK_STALE_SECONDS old; anything else once the file has not been
touched for SESSION_LOCK_STALE_SECONDS (the holder touches it every
SESSION_LOCK_REFRESH_SECONDS).

On a full disk the pid cannot be written: the file is removed again and the session holds
the lock in the registry alone (see _unfiled).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from mailkeep.fsmodes import PRIVATE_FILE, create_file, make_private_dirs
from mailkeep.store.maildir.dotlock import break_lock, lock_is_stale, no_space, owner_line

log = logging.getLogger(__name__)

SESSION_LOCK_NAME = "dovecot-pop3-session.lock"
# Dovecot pop3 client.c POP3_SESSION_DOTLOCK_STALE_TIMEOUT_SECS: 60*5.
SESSION_LOCK_STALE_SECONDS = 300.0
# Well inside the stale timeout, so a live session's lock never looks stale.
SESSION_LOCK_REFRESH_SECONDS = 60.0
# Attempts to create the file when stale locks keep getting in the way.
CREATE_ATTEMPTS = 3

# Maildirs whose lock a session of this process holds -> whether the lock file is ours.
_held: dict[Path, bool] = {}
_held_guard = threading.Lock()


def _stale(path: Path) -> tuple[bool, os.stat_result | None]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return True, None
    # We hold the registry entry for this Maildir: no session of ours holds the file.
    return lock_is_stale(path, held_here=False, stale_seconds=SESSION_LOCK_STALE_SECONDS,
                         now=time.time()), st


def _unfiled(root: Path) -> bool:
    # DEVIATION (RFC 1939 §4, the exclusive-access lock): without space for the lock file
    # only this process's sessions are kept out, not a Dovecot POP3 session. Refusing every
    # POP3 login until space returns would keep users from deleting mail to make room.
    log.warning("%s: no space for %s, holding the lock in this process only", root,
                SESSION_LOCK_NAME)
    return True


def acquire(root: Path) -> bool:
    """Take the lock for the Maildir at `root` (blocking file work: run it off the loop)."""
    key = root.resolve()
    with _held_guard:
        if key in _held:
            return False
        _held[key] = False
    try:
        make_private_dirs(root)
        path = root / SESSION_LOCK_NAME
        for _ in range(CREATE_ATTEMPTS):
            try:
                fd = create_file(path, os.O_WRONLY | os.O_EXCL, PRIVATE_FILE)
            except FileExistsError:
                stale, judged = _stale(path)
                if not stale:
                    break
                break_lock(path, judged)
                continue
            except OSError as exc:
                if not no_space(exc):
                    raise
                return _unfiled(root)
            try:
                try:
                    os.write(fd, owner_line())
                finally:
                    os.close(fd)
            except OSError as exc:
                # Never leave an empty lock behind: it would lock the user out for minutes.
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                if not no_space(exc):
                    raise
                return _unfiled(root)
            with _held_guard:
                _held[key] = True
            return True
    except BaseException:
        with _held_guard:
            _held.pop(key, None)
        raise
    with _held_guard:
        _held.pop(key, None)
    return False


def refresh(root: Path) -> None:
    with _held_guard:
        filed = _held.get(root.resolve(), False)
    if filed:
        with contextlib.suppress(OSError):
            os.utime(root / SESSION_LOCK_NAME)


def release(root: Path) -> None:
    key = root.resolve()
    with _held_guard:
        if key not in _held:
            return
        filed = _held.pop(key)
        if filed:
            with contextlib.suppress(FileNotFoundError):
                (root / SESSION_LOCK_NAME).unlink()
