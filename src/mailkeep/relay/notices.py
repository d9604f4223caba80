"""Reports owed to senders (RFC 3464 DSNs), made durable before their entry is forgotten.

The runner (relay/runner.py) logs a numbered notice in the same fsynced append as the
outcomes that call for it (a permanent failure, expiry, a delay, a success the sender asked
for: relay/spool.py Notice). Here each owed notice becomes a DSN spooled under a fixed id
(spool.notice_id), and only once every one of them is on disk are the notices logged done.
A crash at any point leaves the notice owed; the next start finds its DSN already spooled
(by that id) or builds it again from the log. A DSN is not started before its notice is
logged done, so a DSN that has already left the queue belongs to a notice the log calls
done: a bounce is never lost and never sent twice.

Never a report to <> (relay/dsn.py says NoDsn), and never one handed through split
delivery to an address that carries a route (proto/connector.py fallback_refusal).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailkeep.config.model import Config
from mailkeep.directory.base import DirectoryUnavailable, UserDirectory
from mailkeep.proto.address import canonical
from mailkeep.proto.connector import fallback_refusal
from mailkeep.proto.printable import printable
from mailkeep.relay import reports
from mailkeep.relay.dsn import Dsn
from mailkeep.relay.spool import Notice, Spool, SpoolEntry, SpoolRecipient, new_id, notice_id
from mailkeep.store.base import DeliveryError

log = logging.getLogger("mailkeep.queue")


@dataclass
class Notices:
    config: Config
    spool: Spool
    directory: UserDirectory
    entries: dict[str, SpoolEntry]       # the runner's queue (shared, not copied)
    clock: Callable[[], float]
    # How an entry is spooled (the runner's: a worker claims it first, relay/claims.py).
    accept: Callable[[SpoolEntry, bytes], Awaitable[None]] | None = None

    async def spool_owed(self, entry: SpoolEntry, message: bytes | None) -> dict[str, bytes]:
        """Spool every report `entry` owes, then log them done. Returns the DSNs spooled
        now ({id: content}) for the caller to start; a report that could not be spooled
        (disk full, directory down) stays owed and is tried again at the next attempt."""
        owed = entry.owed_notices()
        if not owed:
            return {}
        spooled: dict[str, bytes] = {}
        settled: list[Notice] = []
        for notice in owed:
            dsn_id = notice_id(entry.id, notice.n)
            if dsn_id not in self.entries:
                if message is None:
                    message = await asyncio.to_thread(self.spool.message, entry.id)
                try:
                    built = await self._spool_notice(entry, message, notice, dsn_id)
                except (DeliveryError, DirectoryUnavailable) as exc:
                    log.error("id=%s %s notice not queued, will try again: %s", entry.id,
                              notice.action, exc)
                    continue
                if built is not None:
                    spooled[dsn_id] = built
            settled.append(notice)
        if settled:
            await asyncio.to_thread(self.spool.record, entry.id,
                                    [{"notice_done": n.n} for n in settled])
            for notice in settled:
                notice.done = True
        return spooled

    async def _spool_notice(self, entry: SpoolEntry, message: bytes, notice: Notice,
                            dsn_id: str) -> bytes | None:
        """Build the notice's DSN and spool it as `dsn_id` (not started); its content, or
        None when there is nothing to send (relay/dsn.py said no, or no usable address)."""
        action = notice.action
        built = reports.for_notice(entry, message, notice, hostname=self.config.hostname,
                                   max_lifetime=self.config.queue.max_lifetime)
        if not isinstance(built, Dsn):
            log.info("id=%s no %s notice: %s", entry.id, action, built.reason.value)
            return None
        dsn_entry = await self.new_entry(mail_from="", recipients=[built.envelope_recipient],
                                         size=len(built.message), smtputf8=built.needs_smtputf8,
                                         body_8bit=built.needs_8bitmime,
                                         source={"dsn_for": entry.id, "notice": str(notice.n)},
                                         entry_id=dsn_id, arrival=notice.at)
        if dsn_entry is None:
            log.warning("id=%s %s notice for <%s> not sent: the address cannot be used",
                        entry.id, action, printable(built.envelope_recipient))
            return None
        if self.accept is not None:
            await self.accept(dsn_entry, built.message)
        else:
            await asyncio.to_thread(self.spool.accept, dsn_entry, built.message)
        self.entries[dsn_id] = dsn_entry
        log.info("id=%s %s notice queued as %s to <%s>", entry.id, action, dsn_id,
                 printable(built.envelope_recipient))
        return built.message

    async def new_entry(self, *, mail_from: str, recipients: list[str], size: int,
                        smtputf8: bool = False, body_8bit: bool = False,
                        source: dict[str, str] | None = None, entry_id: str | None = None,
                        arrival: float | None = None) -> SpoolEntry | None:
        """An entry for mail we send ourselves (DSNs): local recipients resolved now; None
        when a recipient cannot be used. DirectoryUnavailable passes through."""
        fallback_routes = self.config.queue.fallback_routes
        out: list[SpoolRecipient] = []
        for address in recipients:
            domain = address.rpartition("@")[2].lower().rstrip(".")
            if not domain:
                return None
            if self.config.is_local_domain(domain):
                account = await self.directory.lookup(canonical(address))
                if account is None:
                    if domain not in fallback_routes or fallback_refusal(address) is not None:
                        return None  # a report nobody here reads, or a route to relay on
                    out.append(SpoolRecipient(address, "remote"))
                    continue
                out.append(SpoolRecipient(address, "local", account.name))
            else:
                out.append(SpoolRecipient(address, "remote"))
        now = self.clock() if arrival is None else arrival
        return SpoolEntry(id=entry_id or new_id(now), mail_from=mail_from, recipients=out,
                          arrival=now, size=size, smtputf8=smtputf8, body_8bit=body_8bit,
                          source=source or {})
