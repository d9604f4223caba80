"""fsync in a helper process, so that no thread of ours waits for the GIL to report it.

A step run off the loop (steps.py) used to be an fsync in a thread. The fsync itself lets
the GIL go, but the thread needs it before and after, and while the event loop is busy every
system call the loop makes wakes the waiting thread, which loses the race and sleeps again:
some 30 context switches and 40 futex calls per APPEND, and the loop's own CPU per command
up by about a fifth (docs/benchmarks.md, fifth pass). A helper process has its own
interpreter: the loop sends it the descriptors to sync over a socket (SCM_RIGHTS; fsync
acts on the file, not the descriptor) and reads the answer when it comes, like any other
socket.

    syncer = Syncer()
    await syncer.sync(fsync=[fd1], fdatasync=[fd2])   # OSError as fsync would raise it

The helper is a fresh `python -I -S` running HELPER below (no import of ours), started on
first use by the process that uses it (after a worker's fork and privilege drop), ended by
close() or when our end of the socket closes. Requests are answered in order. When it
cannot be used (it did not start, it died, the socket is full) Unavailable is raised and
the caller syncs in a thread as before; a request in flight when it dies fails with EIO
(the operation is undone and the client told to try again).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence

log = logging.getLogger("mailkeep.store")

# Descriptors per request (SCM_RIGHTS carries up to 253 on Linux; a step syncs a few).
MAX_FDS = 64
# The helper: one request per packet ("F" fsync / "D" fdatasync per descriptor, in order),
# one answer per request: the first error's errno as 4 bytes, 0 for success.
HELPER = """
import os, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
def serve():
    while True:
        kinds, fds, _, _ = socket.recv_fds(sock, 256, 253)
        if not kinds:
            return
        failed = 0
        for kind, fd in zip(kinds, fds):
            try:
                if not failed:
                    (os.fsync if kind == 70 else os.fdatasync)(fd)
            except OSError as exc:
                failed = exc.errno or 5
            finally:
                os.close(fd)
        sock.sendall(failed.to_bytes(4, "little"))
try:
    serve()
except OSError:
    pass  # our parent is gone: nothing is waiting for an answer
"""


# This process's pid, kept current across fork (os.getpid() is a system call per request).
_pid = os.getpid()


def _forked() -> None:
    global _pid  # noqa: PLW0603 (the module's own record of who we are)
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class Unavailable(Exception):
    """The helper cannot take this request: sync some other way."""


class Syncer:
    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0  # the process that started the helper (a fork must start its own)
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._broken = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def sync(self, fsync: Sequence[int] = (), fdatasync: Sequence[int] = ()) -> None:
        """fsync then fdatasync the descriptors (ours stay open). Unavailable; OSError."""
        kinds = b"F" * len(fsync) + b"D" * len(fdatasync)
        if not kinds:
            return
        if len(kinds) > MAX_FDS:
            raise Unavailable("too many descriptors")
        sock = self._ready()
        try:
            sent = socket.send_fds(sock, [kinds], [*fsync, *fdatasync])
        except OSError as exc:  # BlockingIOError: full; anything else: broken
            if not isinstance(exc, BlockingIOError):
                self._fail(f"cannot send to the sync helper: {exc}")
            raise Unavailable(str(exc)) from None
        if sent != len(kinds):
            self._fail("short send to the sync helper")
            raise Unavailable("short send")
        assert self._loop is not None
        future = self._loop.create_future()
        self._waiting.append(future)
        await future

    def _ready(self) -> socket.socket:
        if self._broken:
            raise Unavailable("sync helper gone")
        if self._sock is not None and self._pid == _pid:
            return self._sock
        self._sock = None  # a copy inherited through fork is the parent's, not ours
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 -- our interpreter, our code
                [sys.executable, "-I", "-S", "-c", HELPER, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)  # ends when our socket does, not on a ^C
        except OSError as exc:
            ours.close()
            self._broken = True
            log.warning("sync helper did not start (%s): fsync in threads instead", exc)
            raise Unavailable(str(exc)) from None
        finally:
            theirs.close()
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._answers)
        self._sock, self._pid, self._loop = ours, _pid, loop
        return ours

    def _answers(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(4)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(f"sync helper socket: {exc}")
                return
            if len(data) != 4:
                self._fail("sync helper ended")
                return
            code = int.from_bytes(data, "little")
            future = self._waiting.popleft()
            if future.done():
                continue  # its waiter was cancelled (steps.drive waits for the answer)
            if code:
                future.set_exception(OSError(code, os.strerror(code)))
            else:
                future.set_result(None)

    def _fail(self, why: str) -> None:
        """The helper is gone: what waits fails with EIO, later requests go elsewhere."""
        if not self._broken:
            log.error("%s: fsync in threads from now on", why)
        self._broken = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(OSError(errno.EIO, "sync helper ended"))
        self._close_socket()

    def _close_socket(self) -> None:
        if self._sock is not None:
            if self._loop is not None and self._pid == _pid:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """End the helper (it sees our end close) and reap it."""
        self._close_socket()
        proc, self._proc = self._proc, None
        if proc is not None and self._pid == _pid:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
