"""Linux inotify(7) for the folder watcher: the three system calls, and a reader that takes
every queued event in one read and parses it with one struct.

asyncinotify did this before, and in the IMAP command mix its reader cost more than the
events were worth: for each batch of at most ten events it added and removed the
descriptor in epoll (two epoll_ctl calls) and made a future, and for each event a Path, an
enum.IntFlag and a weakref; with the echo matching after it, about 6 % of the event loop's
samples (docs/benchmarks.md). Here an event is a (watch descriptor, mask, name) tuple of
plain ints and bytes, read when the loop says the descriptor is readable.

The system calls go through ctypes on the C library already loaded in the process (glibc
and musl both export inotify_init1, inotify_add_watch and inotify_rm_watch). Linux only:
Inotify() raises OSError elsewhere, and the watcher then polls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

IN_MOVED_FROM = 0x0000_0040
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_DELETE = 0x0000_0200
IN_Q_OVERFLOW = 0x0000_4000
IN_IGNORED = 0x0000_8000  # the watch is gone (removed, or its directory deleted)
IN_ONLYDIR = 0x0100_0000

# struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }
_EVENT = struct.Struct("iIII")
# One read takes every queued event up to this size; the kernel never splits an event.
READ_SIZE = 64 * 1024

Event = tuple[int, int, bytes]  # watch descriptor, mask, name (b"" for none)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except AttributeError:
        raise OSError(errno.ENOSYS, "inotify is not available here") from None
    return libc


def _error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


class Inotify:
    """One inotify instance (non-blocking, close-on-exec)."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise _error("inotify_init1")
        self.fd: int = fd

    def add_watch(self, path: str, mask: int) -> int:
        """Watch a directory; its watch descriptor (the same one again for the same
        directory)."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise _error(f"inotify_add_watch {path}")
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop watching; gone already (its directory was deleted) is no error. The kernel
        queues an IN_IGNORED event for it."""
        if self._libc.inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            raise _error("inotify_rm_watch")

    def read_events(self) -> list[Event]:
        """Every event queued now (none: an empty list). Never blocks."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return events
            if not data:
                return events
            offset, end = 0, len(data)
            while offset < end:
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset:offset + length].split(b"\0", 1)[0] if length else b""
                offset += length
                events.append((wd, mask, name))
            if end < READ_SIZE - _EVENT.size - 256:
                return events  # not a full read: the queue was emptied (NAME_MAX is 255)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
