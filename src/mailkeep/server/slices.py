"""CPU-bound work on the event loop in time slices, with a CPU budget.

DESIGN: the event loop never blocks; CPU-heavy work runs off the loop or in slices. A
session's long loop over messages (SEARCH evaluation, FETCH and STORE responses) computes
between start() and stop(), asks due() as it goes, and awaits pause() when the slice is used
up, which lets every other session have a turn:

    clock = Slices(budget=10.0)
    clock.start()
    for message in messages:
        work(message)
        if clock.due():
            await clock.pause()        # TooExpensive once the budget is spent
    clock.stop()

Only this thread's CPU time inside slices counts, plus what charge() adds (work done in
worker threads); time spent awaiting (store reads, other sessions' turns) never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# Our choice: a slice of a few milliseconds keeps a LOGIN or NOOP in another session prompt
# (it waits for at most one slice per busy session) and costs little in task switches.
SLICE_SECONDS = 0.005


class TooExpensive(Exception):
    """The work used up its CPU budget."""


# The first this many seconds of a command's slices are charged at their wall time (an upper
# bound of their CPU time, read from the fast clock); after that each slice reads the thread
# CPU clock, a system call. Most commands end well within it and never pay for that call.
UNMETERED_SECONDS = SLICE_SECONDS


class Slices:
    def __init__(self, budget: float = float("inf"),
                 slice_seconds: float = SLICE_SECONDS) -> None:
        self.budget = budget
        self.slice_seconds = slice_seconds
        self.spent = 0.0
        self._wall = 0.0
        self._cpu = 0.0
        self._metered = False

    def start(self) -> None:
        self._wall = time.perf_counter()
        if self._metered:
            self._cpu = time.thread_time()

    def stop(self) -> None:
        """End a slice (before awaiting anything else): its CPU time is charged."""
        if self.budget == float("inf"):
            return
        if self._metered:
            self.charge(time.thread_time() - self._cpu)
            return
        self.charge(time.perf_counter() - self._wall)
        self._metered = self.spent >= UNMETERED_SECONDS

    def charge(self, cpu_seconds: float) -> None:
        self.spent += cpu_seconds
        if self.spent > self.budget:
            raise TooExpensive(f"{self.spent:.1f} s of CPU")

    def due(self) -> bool:
        return time.perf_counter() - self._wall >= self.slice_seconds

    async def pause(self) -> None:
        self.stop()
        await asyncio.sleep(0)
        self.start()


def cpu_seconds(work: Callable[[], object]) -> float:
    """Run `work` (in a worker thread) and say how much CPU time it took there."""
    start = time.thread_time()
    work()
    return time.thread_time() - start
