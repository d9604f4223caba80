"""POP3 driver (RFC 1939): 995 implicit TLS (RFC 8314), 110 + STLS (RFC 2595) if enabled.

Feeds bytes to proto.pop3.Pop3Machine and carries out its requests: credentials against the
directory (off the loop, throttled), the exclusive maildrop lock, listing and streaming
from the store, removals in the UPDATE state. The single STLS path is server/starttls.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from mailkeep.config.model import ListenerConfig
from mailkeep.proto.pop3 import (
    AUTH,
    IN_USE,
    NEED_DATA,
    SYS_TEMP,
    AuthRequest,
    Close,
    Entry,
    MessageEncoder,
    Pop3Machine,
    Reply,
    Retrieve,
    StartTls,
    Update,
)
from mailkeep.server import auth, starttls
from mailkeep.server.listener import Slot
from mailkeep.server.services import Services
from mailkeep.server.stream import SessionFinished, StreamSession, tls_version
from mailkeep.store.base import MaildropLock, MessageGone, StoreError

log = logging.getLogger("mailkeep.pop3")

# Bytes per read from the socket; the machine bounds each line itself.
READ_SIZE = 64 * 1024
# The maildrop lock is touched this often so that it never looks stale to Dovecot or to us
# (Dovecot treats its pop3 session lock as stale after 5 minutes untouched).
LOCK_REFRESH_SECONDS = 60.0
SHUTDOWN_REPLY = b"-ERR [SYS/TEMP] Server shutting down, try again later.\r\n"
# RFC 1939 §3: on autologout the server closes without entering the UPDATE state.
IDLE_REPLY = b"-ERR Disconnected for inactivity.\r\n"


def uidl(uid: int, uidvalidity: int) -> str:
    """Dovecot's default pop3_uidl_format %08Xu%08Xv, byte for byte as Dovecot sends it: a
    client moving between Dovecot and mailkeep, or between POP3 and IMAP, sees the same
    unique-ids (RFC 1939 §7 UIDL) and downloads nothing twice. Dovecot's %X modifier writes
    lowercase hex ("000000016b0f6384"), whatever the capital X suggests."""
    return f"{uid:08x}{uidvalidity:08x}"


class Pop3Session(StreamSession):
    """One client connection."""

    log = log
    SHUTDOWN_REPLY = SHUTDOWN_REPLY

    def __init__(self, services: Services, listener: ListenerConfig,
                 tls_context: ssl.SSLContext, slot: Slot) -> None:
        super().__init__(services, listener, tls_context, slot)
        self.lock: MaildropLock | None = None
        self.machine: Pop3Machine | None = None
        self.counts = {"retr": 0, "top": 0, "deleted": 0, "bytes": 0}
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle (server/stream.py runs it) -------------------------------------------------

    @staticmethod
    def refusal_reply_text(reason: str) -> bytes:
        return f"-ERR [SYS/TEMP] {reason}, try again later.\r\n".encode()

    def refusal_reply(self, reason: str) -> bytes:
        return self.refusal_reply_text(reason)

    def internal_error_reply(self) -> bytes:
        return b"-ERR [SYS/TEMP] Internal error, try again later.\r\n"

    async def _release(self) -> None:
        # No UPDATE state here: DELE marks are dropped, nothing is removed (RFC 1939 §6).
        await self._unlock()

    async def _unlock(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        lock, self.lock = self.lock, None
        if lock is not None:
            await lock.release()

    def close_summary(self) -> str:
        c = self.counts
        errors = self.machine.total_errors if self.machine else 0
        return (f"retr={c['retr']} top={c['top']} deleted={c['deleted']} "
                f"bytes={c['bytes']} errors={errors}")

    # -- the loop -----------------------------------------------------------------------------

    def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        self.counts["bytes"] += len(data)
        writer.write(data)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        # A client that stops reading is as idle as one that stops writing.
        # asyncio.timeout, not wait_for: no extra task, and no trip through the event loop when
        # the buffer is below its high-water mark (STLS relies on that: see _starttls).
        try:
            timeout = self.idle_timeout(self.services.config.pop3.idle_timeout)
            async with asyncio.timeout(timeout):
                await writer.drain()
        except TimeoutError:
            raise SessionFinished("idle timeout while sending") from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.services.config.pop3
        machine = self.machine = Pop3Machine(
            tls_active=self.listener.tls == "implicit",
            starttls_offered=self.listener.tls == "starttls",
            max_line=cfg.max_line_length, max_errors=cfg.max_errors)
        self._write(writer, machine.greeting())
        while True:
            event = machine.next_event()
            if event is NEED_DATA:
                if self.stopping:
                    self._write(writer, SHUTDOWN_REPLY)
                    raise SessionFinished("shutdown")
                await self._drain(writer)
                timeout = self.idle_timeout(cfg.idle_timeout)
                machine.receive_data(await self._read(reader, writer, timeout))
            elif isinstance(event, Reply):
                self._write(writer, event.data)
            elif isinstance(event, AuthRequest):
                await self._authenticate(machine, event)
            elif isinstance(event, StartTls):
                await self._starttls(machine, event, reader, writer)
            elif isinstance(event, Retrieve):
                await self._retrieve(machine, event, writer)
            elif isinstance(event, Update):
                await self._update(machine, event)
            elif isinstance(event, Close):
                with contextlib.suppress(ConnectionError, OSError):
                    await self._drain(writer)
                raise SessionFinished(event.reason)
            else:  # PAUSED: a request was not answered (a bug in this driver)
                raise RuntimeError(f"machine paused unexpectedly: {event!r}")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    timeout: float) -> bytes:
        self.reading = True
        try:
            async with asyncio.timeout(timeout):
                data = await reader.read(READ_SIZE)
            self.input_arrived()
            return data
        except TimeoutError:
            self._write(writer, IDLE_REPLY)
            with contextlib.suppress(ConnectionError, OSError):
                await self._drain(writer)
            raise SessionFinished("idle timeout") from None
        finally:
            self.reading = False

    # -- requests -------------------------------------------------------------------------------

    async def _authenticate(self, machine: Pop3Machine, request: AuthRequest) -> None:
        services = self.services
        outcome = await auth.login(services, peer_ip=self.peer_ip, creds=request.credentials,
                                   service="pop3", mechanism=request.mechanism,
                                   conn_id=self.conn_id)
        if outcome.failure is auth.Failure.BLOCKED:
            machine.auth_failed(SYS_TEMP, "Too many failed logins from your address, "
                                          "try again later.")
            return
        if outcome.failure is auth.Failure.UNAVAILABLE:
            machine.auth_failed(SYS_TEMP, "Authentication temporarily unavailable, "
                                          "try again later.")
            return
        account = outcome.account
        if account is None:
            # RFC 3206 §4: [AUTH] says the credentials were wrong.
            machine.auth_failed(AUTH, "Authentication failed.")
            return
        try:
            lock = await services.store.lock_maildrop(account.name)
        except StoreError as exc:
            log.error("conn=%s maildrop lock for %s failed: %s", self.conn_id, account.name, exc)
            machine.auth_failed(SYS_TEMP, "Mailbox unavailable, try again later.")
            return
        if lock is None:
            # RFC 2449 §8.1.1: [IN-USE] when the maildrop is locked by another session.
            machine.auth_failed(IN_USE, "Mailbox is locked by another POP3 session.")
            return
        try:
            drop = await services.store.maildrop(account.name)
        except StoreError as exc:
            await lock.release()
            log.error("conn=%s listing %s failed: %s", self.conn_id, account.name, exc)
            machine.auth_failed(SYS_TEMP, "Mailbox unavailable, try again later.")
            return
        self.account, self.lock = account, lock
        self._refresher = asyncio.create_task(self._refresh_lock(lock))
        machine.auth_succeeded([Entry(m.key, m.size, uidl(m.uid, drop.uidvalidity))
                                for m in drop.messages])

    async def _refresh_lock(self, lock: MaildropLock) -> None:
        while True:
            await asyncio.sleep(LOCK_REFRESH_SECONDS)
            try:
                await lock.refresh()
            except Exception:
                log.exception("conn=%s maildrop lock refresh failed", self.conn_id)

    async def _starttls(self, machine: Pop3Machine, request: StartTls,
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await starttls.upgrade(reader, writer, self.front_context,
                                   self.services.config.tls.handshake_timeout, request.reply,
                                   metrics=self.services.metrics, listener=self.listener.name)
        except starttls.PipelinedPlaintext:
            log.warning("conn=%s plaintext pipelined behind STLS: refused, closing",
                        self.conn_id)
            if self.tls is None and not writer.transport.is_closing():
                self._write(writer, b"-ERR [SYS/PERM] Commands pipelined behind STLS "
                                    b"refused.\r\n")
            raise SessionFinished("plaintext pipelined behind STLS") from None
        except starttls.HandshakeFailed as exc:
            log.info("conn=%s TLS handshake failed: %s", self.conn_id, exc)
            machine.tls_failed()
            return
        self.tls = tls_version(writer)
        machine.tls_started()

    async def _retrieve(self, machine: Pop3Machine, request: Retrieve,
                        writer: asyncio.StreamWriter) -> None:
        assert self.account is not None
        store = self.services.store
        mailbox = self.account.name
        encoder = MessageEncoder(request.lines)
        stream = store.read(mailbox, request.key)
        sent = False
        try:
            first = await anext(stream, b"")
            self._write(writer, machine.retrieve_started(request))
            sent = True
            self._write(writer, encoder.feed(first))
            while not encoder.done:
                chunk = await anext(stream, None)
                if chunk is None:
                    break
                self._write(writer, encoder.feed(chunk))
                await self._drain(writer)
            self._write(writer, encoder.finish())
        except MessageGone:
            machine.retrieve_failed("", f"Message {request.number} was removed by another "
                                        "client.", sent=sent)
            return
        except StoreError as exc:
            log.error("conn=%s reading %s of %s failed: %s", self.conn_id, request.key,
                      mailbox, exc)
            machine.retrieve_failed(SYS_TEMP, "Cannot read the message, try again later.",
                                    sent=sent)
            return
        finally:
            aclose = getattr(stream, "aclose", None)  # async generators: close the file now
            if aclose is not None:
                await aclose()
        if request.lines is None:
            self.counts["retr"] += 1
            # Dovecot marks RETRieved (not TOPped) messages \Seen: new/ -> cur/NAME:2,S.
            try:
                await store.mark_seen(mailbox, [request.key])
            except StoreError as exc:
                log.error("conn=%s marking %s seen failed: %s", self.conn_id, request.key, exc)
        else:
            self.counts["top"] += 1
        machine.retrieve_done()

    async def _update(self, machine: Pop3Machine, request: Update) -> None:
        assert self.account is not None
        failed = 0
        if request.deleted:
            try:
                self.counts["deleted"] = await self.services.store.delete(
                    self.account.name, list(request.deleted))
            except StoreError as exc:
                log.error("conn=%s removing %d messages of %s failed: %s", self.conn_id,
                          len(request.deleted), self.account.name, exc)
                failed = len(request.deleted)
        # The maildrop is let go before QUIT is answered: a client that logs in again as soon
        # as it reads the +OK must not find its own old session's lock ([IN-USE]).
        await self._unlock()
        machine.update_done(failed)


def refusal_line(reason: str) -> bytes:
    """What a client refused at accept time is told (plaintext doors only)."""
    return Pop3Session.refusal_reply_text(reason)


def session_factory(services: Services, listener: ListenerConfig,
                    context: ssl.SSLContext) -> Callable[[Slot], asyncio.Protocol]:
    """One StreamReaderProtocol per accepted connection (server/listener.py)."""

    def factory(slot: Slot) -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=READ_SIZE)
        session = Pop3Session(services, listener, context, slot)
        return asyncio.StreamReaderProtocol(reader, session.run)

    return factory
