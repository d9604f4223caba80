"""The delivery runner's part in a spool shared by several workers (relay/claims.py).

A worker's runner is the primary when it holds spool/.primary: it then adopts entries the
other workers leave pending, retries, and takes `mailkeep queue` requests. Any other worker's
runner makes the first attempt of what its worker accepted, under the entry's claim, then
forgets the entry; it tries now and then to become the primary (the primary died).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from mailkeep.fsmodes import make_private_dirs
from mailkeep.relay import claims
from mailkeep.relay.spool import Spool, SpoolEntry, SpoolError

log = logging.getLogger("mailkeep.queue")

# How often the primary looks for entries to adopt, and how often another worker tries to
# become the primary.
ADOPT_INTERVAL = 1.0
TAKEOVER_INTERVAL = 1.0


class SharedSpoolMixin:
    """Mixed into DeliveryRunner; the attributes and methods below are the runner's."""

    spool: Spool
    entries: dict[str, SpoolEntry]
    clock: Callable[[], float]
    shared: bool
    primary: bool
    _claims: dict[str, int]
    _recovered: set[str]
    _tasks: list[asyncio.Task[None]]
    _lock_fd: int | None
    _stopping: bool
    _adopting: asyncio.Lock

    def _schedule(self, entry_id: str, when: float) -> None:
        raise NotImplementedError

    async def _scheduler(self) -> None:
        raise NotImplementedError

    async def _control_loop(self) -> None:
        raise NotImplementedError

    async def _start_shared(self) -> None:
        """A worker: primary if the spool's lock is free, else try again now and then."""
        fd = await asyncio.to_thread(claims.take_primary, self.spool)
        if fd is None:
            self._tasks = [asyncio.create_task(self._takeover(), name="queue-takeover")]
            return
        await self._become_primary(fd)

    async def _become_primary(self, fd: int) -> None:
        self._lock_fd, self.primary = fd, True
        try:
            removed = await asyncio.to_thread(self._prepare_shared)
        except BaseException:
            os.close(fd)
            self._lock_fd, self.primary = None, False
            raise
        if removed:
            log.info("removed %d half-written spool files", removed)
        log.info("worker %d: delivering the queue (the spool's primary)", os.getpid())
        await self._adopt()
        self._tasks += [asyncio.create_task(self._scheduler(), name="queue-scheduler"),
                        asyncio.create_task(self._control_loop(), name="queue-control"),
                        asyncio.create_task(self._adopt_loop(), name="queue-adopt")]

    def _prepare_shared(self) -> int:
        for folder in (self.spool.incoming, self.spool.queue, self.spool.control):
            make_private_dirs(folder)
        return claims.clean(self.spool)

    async def _takeover(self) -> None:
        while not self.primary:
            await asyncio.sleep(TAKEOVER_INTERVAL)
            try:
                fd = await asyncio.to_thread(claims.take_primary, self.spool)
            except OSError as exc:
                log.error("spool: cannot take %s: %s", claims.PRIMARY, exc)
                continue
            if fd is not None:
                await self._become_primary(fd)

    async def _adopt_loop(self) -> None:
        while True:
            await asyncio.sleep(ADOPT_INTERVAL)
            try:
                await self._adopt()
            except OSError as exc:
                log.error("queue: cannot look for entries to adopt: %s", exc)

    async def _adopt(self) -> None:
        """Entries other workers left pending (or held when they died): ours now."""
        # One look at a time: two (the adopt loop's and a queue request's) would each find
        # the claim the other holds for a moment, and the request would miss its entry.
        async with self._adopting:
            known = set(self.entries) | set(self._claims)
            found = await asyncio.to_thread(claims.adopt, self.spool, known)
        for item in found:
            if isinstance(item, SpoolError):
                log.error("spool entry set aside: %s", item)
                continue
            if item.id in self.entries or self._stopping:
                continue
            self.entries[item.id] = item
            self._recovered.add(item.id)  # a first attempt may have been cut short
            self._schedule(item.id, min(item.next_attempt, self.clock()) if not item.attempts
                           else item.next_attempt)

    async def _claimed(self, entry_id: str, attempt: Coroutine[Any, Any, None]) -> None:
        """A worker's attempt: then let go of the entry's claim, and of the entry itself
        unless this worker is the primary (which adopts it otherwise)."""
        try:
            await attempt
        finally:
            if not self.primary:
                self.entries.pop(entry_id, None)
                self._recovered.discard(entry_id)
            await self._release(entry_id)

    async def _accept(self, entry: SpoolEntry, message: bytes) -> None:
        """Spool an entry (Spool.accept); a worker claims it first, so that nobody adopts
        it while this worker makes its first attempt."""
        if self.shared:
            self._claims[entry.id] = await asyncio.to_thread(claims.claim_new, self.spool,
                                                             entry.id)
        try:
            await asyncio.to_thread(self.spool.accept, entry, message)
        except BaseException:
            await self._release(entry.id)
            raise

    async def _release(self, entry_id: str) -> None:
        fd = self._claims.pop(entry_id, None)
        if fd is not None:
            await asyncio.to_thread(claims.release, self.spool, entry_id, fd)
