"""Files and directories created with exact modes, whatever umask the process inherited.

open(2) and mkdir(2) filter the mode they are given through the umask: with umask 000 a
default-mode file is 0666 and a default-mode directory 0777 (world-writable), with umask 0277
a 0700 directory comes out 0500 and we cannot create anything in it. Everything mailkeep
creates for itself (Maildirs, config, users, certificates, locks) therefore gets its mode
set explicitly with chmod/fchmod, which the umask does not touch. What exists already is left
as the administrator made it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

PRIVATE_DIR = 0o700   # Maildirs, the config and certs directories: ours alone
PRIVATE_FILE = 0o600  # messages, indexes, locks, config, users (password hashes), keys
PUBLIC_FILE = 0o644   # a certificate: public, but never writable by others


def make_private_dirs(path: Path, mode: int = PRIVATE_DIR) -> None:
    """`mkdir -p path`; every directory this creates gets exactly `mode`.

    The window between mkdir and chmod is never more open than `mode` (the umask only takes
    bits away)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_private_dirs(path.parent, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return
    os.chmod(path, mode)


def create_file(path: str | Path, flags: int, mode: int = PRIVATE_FILE) -> int:
    """os.open(path, O_CREAT | flags) with exactly `mode`; returns the descriptor.

    fchmod also fixes a leftover file of the same name that O_CREAT (without O_EXCL) reused
    with its old mode."""
    fd = os.open(path, os.O_CREAT | flags, mode)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Create or overwrite `path` with `data` and exactly `mode` (no fsync)."""
    fd = create_file(path, os.O_WRONLY | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def cannot_write(path: Path, exc: OSError, what: str, instead: str = "") -> str:
    """Why `path` (the file meant, not a temporary sibling) could not be written, and what
    to do about it: one sentence for an administrator instead of a traceback. `instead`
    names another way to do it (e.g. keeping users in SQL)."""
    reason = exc.strerror or str(exc)
    # The folder that refused: a temporary sibling's, or one that had to be created first.
    folder = Path(exc.filename).parent if exc.filename else path.parent
    if exc.errno == errno.EROFS:
        fix = (f"{folder} is on a read-only file system (a read-only volume or mount?): "
               "mount it read-write")
    elif exc.errno in (errno.EACCES, errno.EPERM):
        fix = (f"run this as the user that owns {folder} (the user the daemon runs "
               "as, or root), or let that user write there")
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space"
    else:
        fix = ""
    text = f"cannot write {what + ' ' if what else ''}{path}: {reason}"
    if fix:
        text += f"; {fix}"
    if instead:
        text += f"{', or ' if fix else '; '}{instead}"
    return text
