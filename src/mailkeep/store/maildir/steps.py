"""Durable Maildir work as steps: the quick file work on the event loop, only the fsyncs off it.

An APPEND to a small folder is some 30 quick system calls (create, write, rename, a short
listing, a lock file, one line added to the index) and three slow ones (fsync the message,
fsync new/, fdatasync the index). Run whole in an I/O thread, every one of the quick calls
handed the GIL to the thread and back while the event loop was busy with other sessions:
about 60 context switches per APPEND, a third of the daemon's CPU in the IMAP command mix
(docs/benchmarks.md). Written as steps, the work is a generator that does the quick calls
itself and yields each slow part as a callable, in the order the crash safety needs (the
message is durable before it is renamed into new/; the rename and its index record are
durable before the lock is released and the client is answered):

    def append_steps(...) -> Steps[Appended]:
        ...write tmp/ files, descriptors kept open...
        yield Sync(files=(fd,))                 # a barrier: runs off the loop
        ...rename, index record...
        yield Sync(files=(new_dir,), data=(index_fd,))

`run()` drives such a generator in the calling thread (each callable inline: the work is
exactly the old synchronous function); `drive()` runs the steps on the event loop, each Sync
in the sync helper process (syncer.py) and any other callable (a rewrite of the index) in a
thread of its own pool (habit 7: the loop never waits for an fsync). A yielded callable must
never wait for a lock: the loop side holds them, and the pool is separate from the store's
I/O threads, which may be waiting for a lock the steps hold.

Steps run on the loop under dotlock.without_waiting(): a lock held by someone else raises
WouldWait at once, before anything is changed for good (the generator's own cleanup undoes
its tmp/ files), and the caller runs the whole operation in a thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from mailkeep.store.maildir.dotlock import without_waiting
from mailkeep.store.maildir.durable import fsync_all
from mailkeep.store.maildir.syncer import Syncer, Unavailable

T = TypeVar("T")

# A generator that yields callables to run off the loop and returns the operation's result;
# what a callable returns is sent back in.
Steps = Generator[Callable[[], Any], Any, T]


@dataclass(frozen=True, slots=True)
class Sync:
    """A step that is fsyncs only: fsync `files`, then fdatasync `data` (descriptors the
    steps keep open and close). drive() hands it to the sync helper process (syncer.py)."""

    files: tuple[int, ...] = ()
    data: tuple[int, ...] = ()

    def __call__(self) -> None:
        fsync_all(self.files, self.data)


def run(steps: Steps[T]) -> T:
    """The steps in this thread, each yielded callable inline (blocking)."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            value = request()
        except BaseException as exc:  # handed to the steps to unwind
            error = exc


async def drive(steps: Steps[T], executor: Executor, syncer: Syncer | None = None) -> T:
    """The steps on the event loop (without waiting for locks); each Sync step in the sync
    helper process when there is one, any other callable (or a Sync the helper cannot
    take) in `executor`. A cancellation while a callable runs in a thread waits for that
    callable to end (it may be renaming under the steps' lock) and is then thrown into the
    steps, so they undo what they did and let their locks go before it goes on."""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                with without_waiting():
                    request = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            value, error = None, None
            try:
                value = await _perform(request, executor, syncer)
            except (Exception, asyncio.CancelledError) as exc:  # handed to the steps
                error = exc
    finally:
        # Only after an unexpected error in this driver: the steps' own handlers clean up.
        with contextlib.suppress(Exception), without_waiting():
            steps.close()


async def _perform(request: Callable[[], Any], executor: Executor,
                   syncer: Syncer | None) -> Any:
    if syncer is not None and isinstance(request, Sync):
        try:
            # Cancelled, the helper still syncs (its own copies of the descriptors): the
            # steps may undo their work meanwhile, an fsync cannot get in the way of that.
            return await syncer.sync(request.files, request.data)
        except Unavailable:
            pass
    future = asyncio.get_running_loop().run_in_executor(executor, request)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await _settled(future)
        raise


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait until `future` is done, whatever cancels the waiting (bounded by one fsync)."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future})
