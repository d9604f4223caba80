"""Our own file changes in new/ and cur/, so that their inotify echo is not taken for
someone else's.

The folder watcher (store/watcher.py) publishes every inotify event in a watched folder as
an EXTERNAL change, and every session on the folder then looks at it again. For a change
this process made that look is wasted: the store has already told the feed what it did
(with its kind), and the session that made it has looked at the end of its command. In the
IMAP command mix those echoes caused about one extra folder scan in four commands.

So the store's renames and unlinks in new/ and cur/ go through here: the (directory, name)
of each is registered before the system call (an echo can never arrive first) and taken
off when its event comes back; an event without a registration is someone else's. A call
that fails takes its registration back at once; one whose event never comes (the folder
is not watched) expires after ECHO_SECONDS. Matching is by exact name, so a change made by
another process is never hidden: even one with the same name as ours (the same flags put
on the same message at the same moment) leaves the folder as our own change did, and our
change was published.

Thread-safe: the store's threads and the loop register, the loop's watcher takes.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

# An echo arrives within milliseconds; one not seen by then is never coming (an unwatched
# folder), and its registration is dropped.
ECHO_SECONDS = 5.0
# Expired registrations are swept once this many are held, and then again only when the
# registry has doubled (so a burst of changes in folders nobody watches, whose echoes never
# come back, costs amortized O(1) per change). Past MAX_EXPECTED live ones (more than
# ~13,000 changes a second for ECHO_SECONDS) all are dropped: their echoes then count as
# EXTERNAL, one extra look per folder, which is only what happened before this module.
SWEEP_AT = 4096
MAX_EXPECTED = 65_536
_WATCHED = frozenset({"new", "cur"})

_expected: dict[tuple[str, str], list[float]] = {}
_next_sweep = SWEEP_AT
_guard = threading.Lock()


def _expect(path: str | Path) -> tuple[str, str] | None:
    directory, name = os.path.split(path)
    if os.path.basename(directory) not in _WATCHED:
        return None
    key = (directory, name)
    deadline = time.monotonic() + ECHO_SECONDS
    with _guard:
        if len(_expected) >= _next_sweep:
            _sweep(time.monotonic())
        _expected.setdefault(key, []).append(deadline)
    return key


def _withdraw(key: tuple[str, str] | None) -> None:
    if key is None:
        return
    with _guard:
        deadlines = _expected.get(key)
        if deadlines:
            deadlines.pop()
            if not deadlines:
                del _expected[key]


def _sweep(now: float) -> None:
    global _next_sweep  # noqa: PLW0603 (the registry's own bookkeeping, under _guard)
    for key in [k for k, d in _expected.items() if d[-1] < now]:
        del _expected[key]
    if len(_expected) > MAX_EXPECTED:
        _expected.clear()
    _next_sweep = max(SWEEP_AT, 2 * len(_expected))


def rename(src: str | Path, dst: str | Path) -> None:
    """os.rename, its two events registered as ours."""
    keys = (_expect(src), _expect(dst))
    try:
        os.rename(src, dst)
    except BaseException:
        for key in keys:
            _withdraw(key)
        raise


def unlink(path: str | Path) -> None:
    """os.unlink, its event registered as ours."""
    key = _expect(path)
    try:
        os.unlink(path)
    except BaseException:
        _withdraw(key)
        raise


def ours(directory: str, name: str) -> bool:
    """Is this event (in `directory`, of file `name`) the echo of one of our changes? A
    yes takes the registration off."""
    key = (directory, name)
    with _guard:
        deadlines = _expected.get(key)
        if not deadlines:
            return False
        now = time.monotonic()
        while deadlines and deadlines[0] < now:
            deadlines.pop(0)
        if not deadlines:
            del _expected[key]
            return False
        deadlines.pop(0)
        if not deadlines:
            del _expected[key]
        return True


def forget() -> None:
    """Drop every registration (tests)."""
    global _next_sweep  # noqa: PLW0603
    with _guard:
        _expected.clear()
        _next_sweep = SWEEP_AT


def held() -> int:
    """How many registrations are held (tests, and a look at the bound)."""
    with _guard:
        return len(_expected)


__all__ = ["ECHO_SECONDS", "MAX_EXPECTED", "forget", "held", "ours", "rename", "unlink"]
