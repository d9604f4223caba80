"""The one way a message reaches a Maildir: tmp/ -> write -> fsync -> rename -> fsync dir.

maildir(5): a file appears in new/ (or cur/) only whole, by rename(), which is atomic; the
directory is fsynced afterwards so a power loss cannot forget the rename. Used by SMTP
delivery and IMAP APPEND alike (APPEND renames under the index lock: mailbox.append).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from mailkeep.fsmodes import PRIVATE_FILE, create_file
from mailkeep.store.maildir import echo


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_tmp(folder: Path, tmp_name: str, data: bytes,
              mtime: float | None = None) -> tuple[str, int]:
    """Write `data` as folder/tmp/tmp_name (mode 0600), not yet synced: its path and the
    still open descriptor (the caller syncs and closes it). On any failure (ENOSPC
    included) the file is removed again."""
    tmp = os.path.join(folder, "tmp", tmp_name)
    fd = create_file(tmp, os.O_WRONLY | os.O_EXCL, PRIVATE_FILE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))  # IMAP INTERNALDATE lives in the file time
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp, fd


def fsync_all(fds: Sequence[int], data_only: Sequence[int] = ()) -> None:
    """fsync `fds`, then fdatasync `data_only`: the whole of a step run off the loop
    (steps.py), with no other system call in it (each one in a thread hands the GIL back
    and forth with the busy event loop)."""
    for fd in fds:
        os.fsync(fd)
    for fd in data_only:
        os.fdatasync(fd)


def write_tmp(folder: Path, tmp_name: str, data: bytes, mtime: float | None = None) -> str:
    """Write `data` durably as folder/tmp/tmp_name (mode 0600); its path. On any failure
    (ENOSPC included) the file is removed again."""
    tmp, fd = stage_tmp(folder, tmp_name, data, mtime)
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_message(folder: Path, tmp_name: str, final: str, data: bytes,
                  mtime: float | None = None) -> None:
    """Write `data` as folder/tmp/tmp_name, then rename it to folder/`final` ("new/NAME...")
    and fsync that directory. On any failure the temp file is removed and nothing shows."""
    tmp = write_tmp(folder, tmp_name, data, mtime)
    target = folder / final
    try:
        echo.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
