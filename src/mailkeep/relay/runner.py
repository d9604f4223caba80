"""The delivery runner: takes spooled messages to their recipients, and keeps at it.

Postfix's model: accepting a message means it is durably queued (relay/spool.py); delivery
is a separate agent that can be stopped and restarted at any point. Here:

* enqueue() writes the entry and starts its first attempt at once: local recipients are in
  their INBOX milliseconds after the client's 250;
* local recipients get one copy per account, named after the entry and recipient
  (SpoolEntry.local_name), so a delivery repeated after a crash is recognised, not doubled;
* remote recipients are grouped per destination by relay/client.py; each outcome is logged
  (fsynced) before it counts, so a restart resumes where the log ends;
* temporary failures are retried on `[delivery] retry_schedule` until `max_lifetime`, with
  one delay notice after `delay_warning`; permanent failures and expiry bounce (RFC 3464 DSN
  to the sender, from <>, never to <>). A report is logged with the outcome that calls for
  it and spooled before the entry can be forgotten, so a crash never loses a bounce;
* start() loads the queue left by the last run (kill -9 included) and resumes it.

The clock is injectable (tests move time instead of sleeping).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from mailkeep.config.model import Config
from mailkeep.directory.base import DirectoryUnavailable, UserDirectory
from mailkeep.observe.metrics import Metrics
from mailkeep.proto.address import canonical
from mailkeep.proto.connector import fallback_refusal
from mailkeep.proto.printable import printable
from mailkeep.relay.client import OutboundClient
from mailkeep.relay.dsn import Action
from mailkeep.relay.envelope import OutboundMessage, Recipient
from mailkeep.relay.notices import Notices
from mailkeep.relay.queue_admin import age_text
from mailkeep.relay.queue_control import QueueControlMixin
from mailkeep.relay.results import Delivered, PermanentFailure, RecipientResult
from mailkeep.relay.sharing import SharedSpoolMixin
from mailkeep.relay.spool import Notice, Spool, SpoolEntry, SpoolError, SpoolRecipient
from mailkeep.store.base import DeliveryError, DiskFull, StoreError
from mailkeep.store.maildir import MaildirStore
from mailkeep.store.quota import Quota

log = logging.getLogger("mailkeep.queue")

# How often the queue's size and oldest entry are logged while it is not empty.
QUEUE_REPORT_INTERVAL = 300.0
# An entry whose file cannot be read is retried this much later (an administrator may fix
# it; it is never deleted on our own).
BROKEN_ENTRY_RETRY = 3600.0
# Seconds to wait for the spool's lock at start: a `mailkeep queue` command acting on a
# stopped daemon's spool holds it for milliseconds; a daemon holding it never lets go.
SPOOL_LOCK_WAIT = 5.0


def local_name(entry: SpoolEntry, index: int, size: int) -> str:
    """The Maildir file name of local copy `index` of an entry: fixed by the entry, so a
    repeated delivery finds the first. Dovecot's S=/W= size fields as usual; the time part
    keeps delivery order (layout.delivery_order reads "sec.M<usec>")."""
    sec = int(entry.arrival)
    usec = int((entry.arrival - sec) * 1_000_000)
    return f"{sec}.M{usec}K{entry.id}R{index}.mailkeep,S={size},W={size}"


def return_path(mail_from: str) -> bytes:
    """RFC 5321 §4.4: the final delivery records the reverse-path first."""
    return f"Return-Path: <{mail_from}>\r\n".encode("utf-8", "surrogateescape")


@dataclass
class _Stats:
    delivered: int = 0
    bounced: int = 0
    deferred: int = 0


class DeliveryRunner(QueueControlMixin, SharedSpoolMixin):
    def __init__(self, config: Config, spool: Spool, store: MaildirStore,
                 directory: UserDirectory, client: OutboundClient | None = None, *,
                 clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, shared: bool = False) -> None:
        self.config = config
        self.queue_config = config.queue
        self.spool = spool
        self.store = store
        self.directory = directory
        self.client = client or OutboundClient(config.delivery)
        self.clock = clock
        # Local delivery times and remote outcomes (the daemon's; a runner of its own alone).
        self.metrics = metrics if metrics is not None else Metrics(process=False)
        self.entries: dict[str, SpoolEntry] = {}
        self.notices = Notices(config, spool, directory, self.entries, clock,
                               accept=self._accept)
        self.stats = _Stats()
        self._due: list[tuple[float, str]] = []     # heap of (when, id); stale ones skipped
        self._running: dict[str, asyncio.Task[None]] = {}
        self._remote_slots = asyncio.Semaphore(self.queue_config.concurrency)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._recovered: set[str] = set()          # loaded at start: check before redelivery
        self._last_report = 0.0
        self._lock_fd: int | None = None
        # One of several workers on this spool (relay/claims.py): only the primary (the
        # spool lock's holder) retries and adopts; the others make first attempts only.
        self.shared = shared
        self.primary = not shared
        self._claims: dict[str, int] = {}          # entry id -> its claim's descriptor
        self._adopting = asyncio.Lock()            # one look for orphans at a time
        # Requests naming an entry another worker is still attempting: (op, id) -> give up
        # at; tried again each queue_control.CONTROL_INTERVAL until the primary holds it.
        self._held_back: dict[tuple[str, str], float] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Take the spool's lock (SpoolBusy: another daemon uses it), clean up, resume."""
        if self.shared:
            await self._start_shared()
            return
        # Held until stop(): `mailkeep queue` sees it and sends its requests here instead
        # of changing the spool under our feet; a second daemon on this spool cannot start.
        self._lock_fd = await asyncio.to_thread(self.spool.lock, SPOOL_LOCK_WAIT)
        try:
            removed = await asyncio.to_thread(self.spool.prepare)
            loaded = await asyncio.to_thread(lambda: list(self.spool.entries()))
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise
        if removed:
            log.info("removed %d half-written spool files", removed)
        for item in loaded:
            if isinstance(item, SpoolError):
                log.error("spool entry set aside: %s", item)
                continue
            self.entries[item.id] = item
            self._recovered.add(item.id)
        # Reports the last run decided on but may not have spooled (a crash in between):
        # settled before anything is delivered, so a DSN found in the queue now is known
        # to be that report's (see _send_notices).
        for entry in [e for e in self.entries.values() if e.owed_notices()]:
            try:
                await self._send_notices(entry, None)
            except (OSError, SpoolError) as exc:
                log.error("id=%s reports owed to the sender not queued yet: %s", entry.id, exc)
            except Exception:
                # One entry's report must not keep the daemon from starting; it stays owed.
                log.exception("id=%s reports owed to the sender not queued yet", entry.id)
        for item in list(self.entries.values()):
            self._schedule(item.id, min(item.next_attempt, self.clock()) if not item.attempts
                           else item.next_attempt)
        if self.entries:
            log.info("queue: resuming %d messages left by the last run", len(self.entries))
        self._tasks = [asyncio.create_task(self._scheduler(), name="queue-scheduler"),
                       asyncio.create_task(self._control_loop(), name="queue-control")]

    async def stop(self, grace: float) -> None:
        """Start nothing new; let attempts in flight finish for `grace` seconds, then cancel
        them (a cancelled remote attempt is simply retried at the next start)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        running = list(self._running.values())
        if running:
            _done, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the spool is the next daemon's (or the CLI's) now
            self._lock_fd = None
        for fd in self._claims.values():
            os.close(fd)  # pending entries: the next primary adopts them
        self._claims.clear()

    def reconfigure(self, config: Config, directory: UserDirectory) -> None:
        """A reloaded configuration (domains, [delivery], the directory) for the attempts
        that start from now on; attempts in flight finish under the old one. A changed
        `concurrency` gets a new pool of slots: the attempts holding old slots let them go
        into the old pool, so for a while both may run."""
        old, self.config, self.queue_config = self.config, config, config.queue
        self.directory = directory
        if config.delivery != old.delivery:
            self.client = OutboundClient(config.delivery)
        if config.queue.concurrency != old.queue.concurrency:
            self._remote_slots = asyncio.Semaphore(config.queue.concurrency)

    def kick(self) -> None:
        """Look at the queue now (tests after moving the clock; `queue flush`)."""
        self._wake.set()

    # -- accepting -------------------------------------------------------------------------

    async def enqueue(self, entry: SpoolEntry, message: bytes) -> asyncio.Future[None]:
        """Spool durably (DiskFull / DeliveryError), then start the first attempt at once.

        Returns a future that is done when the local recipients have been attempted (the
        SMTP session waits for it briefly, so a sender's 250 normally means "in the INBOX"
        for local mail, as users expect); remote deliveries go on without it."""
        await self._accept(entry, message)
        self.entries[entry.id] = entry
        log.info("queued id=%s from=<%s> rcpts=%d size=%d", entry.id, printable(entry.mail_from),
                 len(entry.recipients), entry.size)
        local_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._stopping:
            local_done.set_result(None)
        else:
            self._start(entry.id, message, local_done)
        return local_done

    # -- scheduling ------------------------------------------------------------------------

    def _schedule(self, entry_id: str, when: float) -> None:
        if not self.primary:
            return  # a worker's first attempt is over: the primary adopts the rest
        heapq.heappush(self._due, (when, entry_id))
        self._wake.set()

    def _start(self, entry_id: str, message: bytes | None = None,
               local_done: asyncio.Future[None] | None = None) -> None:
        if entry_id in self._running or self._stopping:
            if local_done is not None and not local_done.done():
                local_done.set_result(None)
            return
        attempt = self._attempt(entry_id, message, local_done)
        task = asyncio.create_task(self._claimed(entry_id, attempt) if self.shared
                                   else attempt, name=f"deliver-{entry_id}")
        self._running[entry_id] = task
        task.add_done_callback(lambda _t: self._running.pop(entry_id, None))

    async def _scheduler(self) -> None:
        while True:
            now = self.clock()
            while self._due and self._due[0][0] <= now:
                when, entry_id = heapq.heappop(self._due)
                entry = self.entries.get(entry_id)
                if entry is None or entry.hold or entry.next_attempt > when:
                    continue  # gone, held, or rescheduled since this was pushed
                self._start(entry_id)
            self._report(now)
            timeout = QUEUE_REPORT_INTERVAL
            if self._due:
                timeout = min(timeout, max(0.0, self._due[0][0] - now))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _report(self, now: float) -> None:
        if not self.entries or now - self._last_report < QUEUE_REPORT_INTERVAL:
            return
        self._last_report = now
        oldest = min(e.arrival for e in self.entries.values())
        log.info("queue: %d messages, oldest %s old", len(self.entries),
                 age_text(now - oldest))

    def size(self) -> tuple[int, float]:
        """(messages queued, age in seconds of the oldest)."""
        if not self.entries:
            return 0, 0.0
        return len(self.entries), self.clock() - min(e.arrival for e in self.entries.values())

    # -- one attempt -----------------------------------------------------------------------

    async def _attempt(self, entry_id: str, message: bytes | None,
                       local_done: asyncio.Future[None] | None = None) -> None:
        entry = self.entries.get(entry_id)
        if entry is None:
            return
        try:
            if message is None:
                message = await asyncio.to_thread(self.spool.message, entry_id)
            outcomes: list[dict[str, object]] = []
            try:
                await self._deliver_local(entry, message, outcomes)
            finally:
                if local_done is not None and not local_done.done():
                    local_done.set_result(None)
            if any(entry.recipients[i].kind == "remote" for i in entry.pending()):
                async with self._remote_slots:
                    await self._deliver_remote(entry, message, outcomes)
            await self._settle(entry, message, outcomes)
        except asyncio.CancelledError:
            raise
        except (OSError, SpoolError) as exc:
            log.error("id=%s cannot be read from the spool: %s (retry in %.0f s)", entry_id,
                      exc, BROKEN_ENTRY_RETRY)
            entry.next_attempt = self.clock() + BROKEN_ENTRY_RETRY
            self._schedule(entry_id, entry.next_attempt)
        except Exception:
            log.exception("id=%s delivery attempt failed", entry_id)
            entry.next_attempt = self.clock() + self.queue_config.retry_delay(1)
            self._schedule(entry_id, entry.next_attempt)

    async def _deliver_local(self, entry: SpoolEntry, message: bytes,
                             outcomes: list[dict[str, object]]) -> None:
        by_account: dict[str, list[int]] = defaultdict(list)
        for i in entry.pending():
            rcpt = entry.recipients[i]
            if rcpt.kind != "local":
                continue
            try:
                account = await self.directory.lookup(canonical(rcpt.address))
            except DirectoryUnavailable as exc:
                self._defer(entry, i, f"451 4.4.3 directory unavailable: {exc}", outcomes)
                continue
            if account is None:
                domain = rcpt.address.rpartition("@")[2].lower()
                if domain in self.queue_config.fallback_routes:
                    refusal = fallback_refusal(rcpt.address)
                    if refusal is not None:  # a route the legacy server might follow
                        self._outcome(entry, i, "failed", refusal, "5.7.1", "", outcomes)
                    else:  # split delivery: no account here (any more): the legacy server's
                        rcpt.kind, rcpt.account = "remote", None
                    continue
                # RFC 3463 X.1.1: the mailbox does not exist (removed since RCPT).
                self._outcome(entry, i, "failed", "550 5.1.1 no such user here", "5.1.1",
                              "", outcomes)
                continue
            by_account[account.name].append(i)
        head = return_path(entry.mail_from)
        for account_name, indexes in by_account.items():
            data = head + message
            name = local_name(entry, indexes[0], len(data))
            # A copy delivered before a crash must not be refused for the room it takes.
            if entry.id not in self._recovered:
                refusal = await self._over_quota(entry, account_name, len(data))
                if refusal is not None:
                    for i in indexes:
                        if refusal.startswith("5"):
                            self._outcome(entry, i, "failed", refusal, "5.2.2", "", outcomes)
                        else:
                            self._defer(entry, i, refusal, outcomes)
                    continue
            began = time.monotonic()
            try:
                await self.store.deliver_once(account_name, data, name,
                                              check=entry.id in self._recovered)
            except DiskFull as exc:
                for i in indexes:
                    self._defer(entry, i, f"452 4.3.1 {exc}", outcomes)
                continue
            except DeliveryError as exc:
                for i in indexes:
                    self._defer(entry, i, f"451 4.3.0 {exc}", outcomes)
                continue
            self.metrics.local_delivery(time.monotonic() - began)
            for i in indexes:
                self._outcome(entry, i, "delivered", f"250 2.0.0 delivered to {account_name}",
                              "2.0.0", "", outcomes, log_it=False)
            log.info("delivered id=%s to=%s account=%s", entry.id,
                     ",".join(f"<{printable(entry.recipients[i].address)}>" for i in indexes),
                     account_name)

    async def _over_quota(self, entry: SpoolEntry, account: str, size: int) -> str | None:
        """The reply for a local copy the account's quota (RFC 9208, `[store]`) has no room
        for, or None: 452 4.2.2 while the message is younger than quota_full_retry, then
        552 5.2.2 (RFC 3463 X.2.2 "mailbox full": a bounce to the sender)."""
        settings = self.config.store
        quota = Quota(settings.quota, settings.quota_messages)
        if not quota.limited:
            return None
        try:
            usage = await self.store.usage(account)
        except StoreError as exc:
            return f"451 4.3.0 quota of {account} unknown: {exc}"
        resource = quota.exceeded(usage, size, 1)
        if resource is None:
            return None
        if self.clock() - entry.arrival < settings.quota_full_retry:
            return f"452 4.2.2 mailbox of {account} is full ({resource} quota), retrying"
        return f"552 5.2.2 mailbox of {account} is full ({resource} quota)"

    async def _deliver_remote(self, entry: SpoolEntry, message: bytes,
                              outcomes: list[dict[str, object]]) -> None:
        indexes = [i for i in entry.pending() if entry.recipients[i].kind == "remote"]
        by_address = {entry.recipients[i].address: i for i in indexes}
        recipients = [_outbound_recipient(entry.recipients[i]) for i in indexes]
        destinations, refused = self.client.plan(recipients)
        outbound = OutboundMessage(sender=entry.mail_from, data=message,
                                   ret=entry.ret if entry.ret in ("FULL", "HDRS")
                                   else None,  # type: ignore[arg-type]
                                   envid=entry.envid, smtputf8=entry.smtputf8, id=entry.id)
        results: list[RecipientResult] = list(refused)
        if destinations:
            batches = await asyncio.gather(*(self.client.deliver(d, outbound)
                                             for d in destinations))
            for batch in batches:
                results.extend(batch)
        for result in results:
            i = by_address.get(result.recipient)
            if i is None:
                continue
            if isinstance(result, Delivered):
                notify = entry.recipients[i].notify or []
                relayed = not result.remote_dsn and "SUCCESS" in notify
                self.metrics.remote_delivery("relayed" if relayed else "delivered")
                self._outcome(entry, i, "relayed" if relayed else "delivered",
                              str(result.reply), result.reply.status, result.remote_host,
                              outcomes)
            elif isinstance(result, PermanentFailure):
                self.metrics.remote_delivery("failed")
                self._outcome(entry, i, "failed", str(result.reply), result.status,
                              result.remote_host or "", outcomes)
            else:
                self.metrics.remote_delivery("deferred")
                self._defer(entry, i, str(result.reply), outcomes,
                            status=result.reply.status, remote=result.remote_host or "")

    # -- outcomes --------------------------------------------------------------------------

    def _outcome(self, entry: SpoolEntry, i: int, status: str, reply: str,  # noqa: PLR0917
                 dsn_status: str, remote: str, outcomes: list[dict[str, object]],
                 log_it: bool = True) -> None:
        rcpt = entry.recipients[i]
        rcpt.status = status  # type: ignore[assignment]
        rcpt.reply, rcpt.dsn_status, rcpt.remote_mta = reply, dsn_status, remote
        outcomes.append({"i": i, "status": status, "reply": reply, "dsn_status": dsn_status,
                         "remote_mta": remote, "local": rcpt.kind == "local"})
        if status == "failed":
            self.stats.bounced += 1
        else:
            self.stats.delivered += 1
        if log_it:
            log.info("%s id=%s to=<%s> relay=%s reply=%s", status, entry.id,
                     printable(rcpt.address), printable(remote or "-"), printable(reply))

    def _defer(self, entry: SpoolEntry, i: int, reply: str,
               outcomes: list[dict[str, object]], *, status: str = "",
               remote: str = "") -> None:
        rcpt = entry.recipients[i]
        rcpt.reply = reply
        rcpt.dsn_status = status or _status_of(reply) or "4.0.0"
        rcpt.remote_mta = remote
        outcomes.append({"i": i, "status": "pending", "reply": reply,
                         "dsn_status": rcpt.dsn_status, "remote_mta": remote})
        self.stats.deferred += 1
        log.info("deferred id=%s to=<%s> relay=%s reply=%s", entry.id, printable(rcpt.address),
                 printable(remote or "-"), printable(reply))

    async def _settle(self, entry: SpoolEntry, message: bytes,
                      outcomes: list[dict[str, object]]) -> None:
        """After an attempt: log outcomes with the reports they call for, spool those
        reports, then reschedule or forget the entry."""
        now = self.clock()
        owed: list[tuple[Action, list[int]]] = []
        if not entry.done():
            if now - entry.arrival >= self.queue_config.max_lifetime:
                for i in entry.pending():
                    # RFC 3463 X.4.7: delivery time expired.
                    self._outcome(entry, i, "failed", f"{entry.recipients[i].reply} "
                                  "(gave up: too long in the queue)".strip(), "5.4.7",
                                  entry.recipients[i].remote_mta, outcomes)
            else:
                entry.attempts += 1
                entry.next_attempt = now + self.queue_config.retry_delay(entry.attempts)
                outcomes.append({"attempts": entry.attempts, "next": entry.next_attempt})
                warning = self.queue_config.delay_warning
                if warning and not entry.delay_notified and now - entry.arrival >= warning:
                    entry.delay_notified = True
                    outcomes.append({"delay_notified": True})
                    owed.append((Action.DELAYED, entry.pending()))
        fresh = list(dict.fromkeys(int(str(o["i"])) for o in outcomes if "i" in o))
        status = {int(str(o["i"])): o["status"] for o in outcomes if "i" in o}
        failed = [i for i in fresh if status[i] == "failed"]
        # RFC 3461 §5.2.1-5.2.3: a success report is ours to send for a final (local)
        # delivery or a relay to a hop without DSN; a hop that offered DSN was given NOTIFY
        # and reports the success itself (a report from us too would be a duplicate).
        local = {int(str(o["i"])) for o in outcomes if o.get("local")}
        succeeded = [i for i in fresh
                     if (status[i] == "relayed" or (status[i] == "delivered" and i in local))
                     and "SUCCESS" in (entry.recipients[i].notify or [])]
        if failed:
            owed.append((Action.FAILED, failed))
        if succeeded:
            owed.append((Action.DELIVERED, succeeded))
        for action, indexes in owed:
            # Logged in the same append as the outcomes that call for it: a crash before
            # its DSN is spooled leaves it owed, and the next start sends it.
            notice = Notice(len(entry.notices), action.value,  # type: ignore[arg-type]
                            indexes, now)
            entry.notices.append(notice)
            outcomes.append({"notice": notice.n, "action": notice.action,
                             "rcpts": notice.recipients, "at": notice.at})
        # Log what a restart must not repeat. A fully delivered entry of local copies only
        # needs no log: it is removed next, and its copies are found by name if it is not.
        only_local = all(o.get("local") and o["status"] == "delivered"
                         for o in outcomes if "i" in o)
        if not (entry.done() and only_local and not owed):
            await asyncio.to_thread(self.spool.record, entry.id,
                                    [{k: v for k, v in o.items() if k != "local"}
                                     for o in outcomes])
        await self._send_notices(entry, message)
        if entry.finished():
            await asyncio.to_thread(self.spool.remove, entry.id)
            self.entries.pop(entry.id, None)
            self._recovered.discard(entry.id)
        elif entry.done():
            # A report could not be spooled (disk full, directory down): it stays owed in
            # the log and the entry waits; the next attempt tries to send it again.
            entry.next_attempt = now + self.queue_config.retry_delay(1)
            self._schedule(entry.id, entry.next_attempt)
        else:
            self._schedule(entry.id, entry.next_attempt)

    async def _send_notices(self, entry: SpoolEntry, message: bytes | None) -> None:
        """Spool the reports `entry` owes (relay/notices.py), then start their DSNs."""
        for dsn_id, data in (await self.notices.spool_owed(entry, message)).items():
            self._start(dsn_id, data)

    async def new_entry(self, *, mail_from: str, recipients: list[str], size: int,
                        smtputf8: bool = False, body_8bit: bool = False,
                        source: dict[str, str] | None = None) -> SpoolEntry | None:
        """An entry for mail we send ourselves (see Notices.new_entry)."""
        return await self.notices.new_entry(mail_from=mail_from, recipients=recipients,
                                            size=size, smtputf8=smtputf8, body_8bit=body_8bit,
                                            source=source)


def _outbound_recipient(rcpt: SpoolRecipient) -> Recipient:
    if rcpt.notify is None:
        notify: tuple[str, ...] = ()
    elif not rcpt.notify:
        notify = ("NEVER",)
    else:
        notify = tuple(rcpt.notify)
    orcpt = rcpt.orcpt[1] if rcpt.orcpt else None
    return Recipient(rcpt.address, notify=notify, orcpt=orcpt)


def _status_of(reply: str) -> str:
    parts = reply.split(" ", 2)
    if len(parts) >= 2 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    return ""

