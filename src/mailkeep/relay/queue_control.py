"""`mailkeep queue retry|delete|hold|release` as the daemon carries them out: the requests
relay/queue_admin.py drops into the spool's control/ folder are read every CONTROL_INTERVAL
by the runner that holds the queue (the primary worker) and applied to its entries.

Mixed into DeliveryRunner (relay/runner.py), as relay/sharing.py is; the attributes and
methods named below are the runner's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailkeep.relay.spool import Spool, SpoolEntry

log = logging.getLogger("mailkeep.queue")

# How often the control folder (`mailkeep queue ...` requests) is looked at.
CONTROL_INTERVAL = 1.0
# How long a request for an entry another worker is attempting waits for the primary to
# adopt it: longer than any one attempt (RFC 5321 §4.5.3.2 timeouts add up to about half
# an hour), then dropped with a warning.
HOLD_BACK_LIMIT = 3600.0


class QueueControlMixin:
    """Mixed into DeliveryRunner; the attributes and methods below are the runner's."""

    spool: Spool
    entries: dict[str, SpoolEntry]
    clock: Callable[[], float]
    shared: bool
    _running: dict[str, asyncio.Task[None]]
    _held_back: dict[tuple[str, str], float]

    if TYPE_CHECKING:  # the runner's and relay/sharing.py's (no stubs here: they would
        # come first in DeliveryRunner's method order and hide the real ones)
        def _schedule(self, entry_id: str, when: float) -> None: ...

        async def _adopt(self) -> None: ...

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(CONTROL_INTERVAL)
            await self.take_requests()

    async def take_requests(self) -> None:
        """Act on the requests waiting in control/, and on those held back for entries
        another worker was still attempting."""
        try:
            requests = await asyncio.to_thread(self.spool.requests)
        except OSError as exc:
            log.error("queue control folder unreadable: %s", exc)
            return
        now = self.clock()
        for key, until in list(self._held_back.items()):
            if until <= now:
                del self._held_back[key]
                log.warning("queue: %s %s dropped: another worker kept the entry for %g s",
                            *key, HOLD_BACK_LIMIT)
            elif key not in requests:
                requests.append(key)
        for op, target in requests:
            applied = await self.control(op, target)
            if applied or not self._busy_elsewhere(target):
                self._held_back.pop((op, target), None)
            else:
                self._held_back.setdefault((op, target), now + HOLD_BACK_LIMIT)

    def _busy_elsewhere(self, target: str) -> bool:
        """An entry in queue/ that this (primary) runner could not adopt yet: another
        worker is making its first attempt and lets go when that ends."""
        return (self.shared and target != "all" and target not in self.entries
                and (self.spool.queue / target).exists())

    async def control(self, op: str, target: str) -> bool:
        """retry ID|all, delete ID, hold ID, release ID. True if it applied to something."""
        if self.shared and target not in self.entries:
            await self._adopt()  # another worker may have left it pending a moment ago
        if op == "retry":
            chosen = list(self.entries) if target == "all" else [target]
            found = False
            for entry_id in chosen:
                entry = self.entries.get(entry_id)
                if entry is None or entry.hold:
                    continue
                found = True
                entry.next_attempt = self.clock()
                self._schedule(entry_id, entry.next_attempt)
            return found
        entry = self.entries.get(target)
        if entry is None:
            return False
        if op == "delete":
            running = self._running.get(target)
            if running is not None:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            await asyncio.to_thread(self.spool.remove, target)
            self.entries.pop(target, None)
            log.info("id=%s deleted from the queue by the administrator", target)
            return True
        if op in ("hold", "release"):
            entry.hold = op == "hold"
            await asyncio.to_thread(self.spool.record, target, [{"hold": entry.hold}])
            if not entry.hold:
                # Due now: the scheduler drops heap items older than next_attempt.
                entry.next_attempt = self.clock()
                self._schedule(target, entry.next_attempt)
            return True
        return False
