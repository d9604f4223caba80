"""The idle timeout of a session's reads, at the cost of a float per read.

`async with asyncio.timeout(t)` around every read of every command made and cancelled a
timer and a context manager each time: about 2.6 % of the event loop's samples in the IMAP
command mix (docs/benchmarks.md). An idle timeout is minutes long and almost never fires, so
here one timer per session is armed at the first read and, when it fires, looks at the
deadline the latest read set: passed, the read is cancelled and becomes a TimeoutError;
not yet, the timer is armed again for it. A busy session re-arms its timer once per
timeout period instead of once per command.
"""

from __future__ import annotations

import asyncio


class ReadDeadline:
    """One session's read timeout. close() it when the session ends (the armed timer would
    otherwise keep the session alive until it fires)."""

    def __init__(self) -> None:
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._owner: asyncio.Task[object] | None = None
        self._expired = False

    async def read(self, reader: asyncio.StreamReader, size: int, timeout: float) -> bytes:
        """reader.read(size), or TimeoutError after `timeout` seconds without data."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:  # none yet, or a shorter timeout now
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._check)
        task = self._owner
        if task is None:  # a session reads from its one task: asked once, not per read
            task = self._owner = asyncio.current_task()
        self._task = task
        try:
            return await reader.read(size)
        except asyncio.CancelledError:
            if self._expired and task is not None:
                self._expired = False
                if task.uncancel() == 0:  # ours alone: not also a shutdown's cancel
                    raise TimeoutError from None
            raise
        finally:
            self._task = None

    def _check(self) -> None:
        self._timer = None
        task = self._task
        if task is None:
            return  # not reading now: the next read arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check)
            return
        self._expired = True
        task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
