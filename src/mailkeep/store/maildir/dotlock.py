"""Dotlocks on Maildir control files, shared with Dovecot (its file-dotlock.c conventions).

`NAME.lock` is created with O_CREAT|O_EXCL and holds "pid:host"; the writer then puts the new
content of NAME into the lock file itself, fsyncs it and renames it over NAME (Dovecot's
file_dotlock_replace()): readers see the old file or the new one, and need no lock. Used for
dovecot-uidlist, dovecot-keywords, subscriptions and dovecot-uidvalidity.

Two layers, so that no thread of this process mistakes another's lock for a stale one:

* a process-wide registry of the locks this process holds right now, taken first;
* the lock file, for other processes (Dovecot, another mailkeep).

A lock file is stale, and is broken, when
* it names a process on this host that no longer runs;
* it names this very process, which does not hold it now (the registry says so): left by a
  daemon that crashed in a container where it was PID 1, as the new one is;
* it is empty and has not changed for EMPTY_LOCK_STALE_SECONDS (its writer died between
  creating it and writing its pid, or could not write for a full disk);
* it has not changed for LOCK_STALE_SECONDS, whatever it says (another host's lock).

A failed write of our pid never leaves the lock file behind: it is removed and the caller
gets NoSpace (disk full) or LockError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from pathlib import Path

from mailkeep.fsmodes import PRIVATE_FILE, create_file

# Dovecot maildir-uidlist.c MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT: 60*2 seconds. A lock older
# than this was left by a crash (a live writer holds it for milliseconds).
LOCK_STALE_SECONDS = 120.0
# DEVIATION (Dovecot file-dotlock.c waits for the full stale timeout on a lock without a
# pid): a writer puts its pid into the lock microseconds after creating it, so an empty lock
# that has not changed for a few seconds was left by a crash or by a full disk, and waiting
# 2 minutes on it makes mailboxes unusable (issue 7: 107-306 s). Dovecot itself trusts a
# fresh lock's pid only after STALE_PID_CHECK_SECS = 2; we give an empty one 5 s, past
# one-second mtime granularity. The cost: a Dovecot process that could not write its pid
# (disk full) and holds the lock longer than 5 s may lose it.
EMPTY_LOCK_STALE_SECONDS = 5.0
# How long a writer waits for another writer before giving up (a temporary error for the
# client). Dovecot waits up to mail_max_lock_timeout / 2 minutes; sessions must not hang so long.
LOCK_WAIT_SECONDS = 10.0
LOCK_POLL_SECONDS = 0.01
# Only the first line of a lock is read ("pid:host"; Dovecot reads 512 octets).
_OWNER_OCTETS = 512
# No space to write: disk full (ENOSPC) or the user's filesystem quota (EDQUOT).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class WouldWait(Exception):
    """Raised instead of waiting for a lock while waiting is not allowed (store work run
    on the event loop, store.py `_run(light=True)`): the caller runs the work again in a
    thread, where waiting is fine. Not a LockError: nothing may treat it as a failure."""


_no_wait = threading.local()


class _WithoutWaiting:
    """Locks taken inside raise WouldWait rather than wait for another holder. (A class,
    not a generator-based context manager: it is entered for every piece of store work run
    on the loop, several times per IMAP command.)"""

    __slots__ = ()

    def __enter__(self) -> None:
        _no_wait.on = True

    def __exit__(self, *exc: object) -> None:
        _no_wait.on = False


_WITHOUT_WAITING = _WithoutWaiting()


def without_waiting() -> _WithoutWaiting:
    """`with without_waiting():` -- locks taken inside raise WouldWait instead of waiting."""
    return _WITHOUT_WAITING


def _waiting_allowed() -> bool:
    return not getattr(_no_wait, "on", False)


class LockError(Exception):
    """A Maildir control file or its lock cannot be read or written: ours, temporary."""


class NoSpace(LockError):
    """Nothing could be written for lack of space (ENOSPC / EDQUOT)."""


def no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


_owner: list[bytes] = []  # owner_line(), made once per process (reset in a forked child)


def _forget_owner() -> None:
    _owner.clear()


os.register_at_fork(after_in_child=_forget_owner)


def owner_line() -> bytes:
    """What we write into a lock: "pid:host" (Dovecot's file_write_pid()). Kept: two system
    calls fewer per lock, and every APPEND takes two or three locks in an I/O thread, where
    each system call is a hand-over of the GIL."""
    if not _owner:
        _owner.append(f"{os.getpid()}:{socket.gethostname()}\n".encode())
    return _owner[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(path: Path, held_here: bool, stale_seconds: float = LOCK_STALE_SECONDS,
                  now: float | None = None) -> bool:
    """Whether the lock file at `path` may be broken (see the module docstring).

    `held_here`: this process holds that lock right now (a lock naming our pid is then live)."""
    try:
        st = path.stat()
        with path.open("rb") as f:
            text = f.read(_OWNER_OCTETS)
    except FileNotFoundError:
        return False  # gone: try to create it again
    except OSError:
        return False
    age = (time.time() if now is None else now) - st.st_mtime
    if age > stale_seconds:
        return True
    if not text.strip():
        return age > EMPTY_LOCK_STALE_SECONDS
    try:
        pid_text, _, host = text.decode().strip().partition(":")
    except UnicodeDecodeError:
        return False
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host's lock (or a foreign format): only its age tells
    pid = int(pid_text)
    if pid == os.getpid():
        return not held_here
    return not pid_alive(pid)


def break_lock(path: Path, judged: os.stat_result | None = None) -> None:
    """Remove a stale lock, unless it was replaced since it was judged (another process
    broke it first and took it: that lock is live)."""
    with contextlib.suppress(FileNotFoundError):
        if judged is not None:
            st = path.stat()
            if (st.st_ino, st.st_mtime_ns) != (judged.st_ino, judged.st_mtime_ns):
                return
        path.unlink()


# -- the process-wide registry ------------------------------------------------------------

_held: set[str] = set()
_held_changed = threading.Condition()


def _claim(key: str, deadline: float) -> bool:
    with _held_changed:
        while key in _held:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _held_changed.wait(remaining)
        _held.add(key)
        return True


def _unclaim(key: str) -> None:
    with _held_changed:
        _held.discard(key)
        _held_changed.notify_all()


class Dotlock:
    """`TARGET.lock` in `root`; `replace(data)` makes `data` the new TARGET."""

    def __init__(self, root: Path, target: str) -> None:
        self.root = root
        self.target = target
        # Strings on the hot path (a lock is taken several times per IMAP command; a Path
        # costs microseconds to make): `path` is made only when asked for.
        self._name = f"{root}/{target}.lock"
        self._target = f"{root}/{target}"
        self.key = self._name if self._name[0] == "/" else os.path.abspath(self._name)
        self.fd = -1
        self.owned = False  # the lock file is ours (until renamed over the target)

    @property
    def path(self) -> Path:
        return Path(self._name)

    def __enter__(self) -> Dotlock:
        waiting = _waiting_allowed()
        deadline = time.monotonic() + (LOCK_WAIT_SECONDS if waiting else 0.0)
        if not _claim(self.key, deadline):
            if not waiting:
                raise WouldWait(self.key)
            raise LockError(f"{self.path.name} held by another session")
        try:
            self._create(deadline)
        except BaseException:
            _unclaim(self.key)
            raise
        return self

    def _create(self, deadline: float) -> None:
        while True:
            try:
                self.fd = create_file(self._name, os.O_RDWR | os.O_EXCL, PRIVATE_FILE)
                break
            except FileExistsError:
                if not _waiting_allowed():
                    raise WouldWait(self.key) from None  # stale or not: the thread judges
                try:
                    judged = self.path.stat()
                except FileNotFoundError:
                    continue
                if lock_is_stale(self.path, held_here=False):
                    break_lock(self.path, judged)
                    continue
                if time.monotonic() > deadline:
                    raise LockError(f"{self.path.name} held by another process") from None
                time.sleep(LOCK_POLL_SECONDS)
            except OSError as exc:
                if no_space(exc):
                    raise NoSpace(f"cannot create {self.path.name}: {exc.strerror}") from exc
                raise LockError(f"cannot create {self.path.name}: {exc.strerror}") from exc
        self.owned = True
        try:
            _write_all(self.fd, owner_line())
        except OSError as exc:
            # Never leave an empty lock behind (it would block everyone for minutes).
            self._drop()
            if no_space(exc):
                raise NoSpace(f"cannot write {self.path.name}: {exc.strerror}") from exc
            raise LockError(f"cannot write {self.path.name}: {exc.strerror}") from exc

    def replace(self, data: bytes, *, durable: bool = True) -> None:
        """Make `data` the new target: into the lock file, fsync, rename over the target.
        NoSpace when it does not fit (the old target stays as it was). `durable=False`
        skips the fsyncs (readers still see the old file or the new one, never a mix; a
        crash may bring back the old one: only for files whose content copes with that)."""
        try:
            os.ftruncate(self.fd, 0)
            _write_all(self.fd, data, at=0)
            if durable:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.rename(self._name, self._target)
            self.owned = False
            if durable:
                dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            if no_space(exc):
                raise NoSpace(f"cannot write {self.target}: {exc.strerror}") from exc
            raise

    def append(self, data: bytes, *, durable: bool = True) -> None:
        """Add `data` at the end of TARGET in place, under the lock (Dovecot appends new
        dovecot-uidlist records so: maildir_uidlist_sync_update()). Readers without the lock
        may see a last line still being written, so formats appended to must ignore a final
        line without its newline. A failed write is cut off again: the file never keeps half
        a line. `durable` fdatasyncs it (Dovecot does, unless fsync_mode = never). NoSpace
        when it does not fit; FileNotFoundError when TARGET does not exist."""
        fd, size = self.append_unsynced(data)
        try:
            if durable:
                os.fdatasync(fd)
        except OSError as exc:
            self._undo_append(fd, size, exc)
            raise
        finally:
            os.close(fd)

    def append_unsynced(self, data: bytes) -> tuple[int, int]:
        """append() without the sync: TARGET's descriptor, still open (the caller syncs,
        cuts back to the size on failure, and closes it), and its size before."""
        fd = os.open(self._target, os.O_WRONLY)
        try:
            size = os.fstat(fd).st_size
            try:
                _write_all(fd, data, at=size)
            except OSError as exc:
                self._undo_append(fd, size, exc)
                raise
        except BaseException:
            os.close(fd)
            raise
        return fd, size

    def _undo_append(self, fd: int, size: int, exc: OSError) -> None:
        """After a failed append: TARGET cut back to `size`; NoSpace for a full disk (the
        caller re-raises anything else)."""
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        if no_space(exc):
            raise NoSpace(f"cannot write {self.target}: {exc.strerror}") from exc

    def _drop(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.owned:
            self.owned = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._name)

    def __exit__(self, *exc: object) -> None:
        try:
            self._drop()
        finally:
            _unclaim(self.key)


def _write_all(fd: int, data: bytes, at: int | None = None) -> None:
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if at is None:
            offset += os.write(fd, view[offset:])
        else:
            offset += os.pwrite(fd, view[offset:], at + offset)
