"""IMAP driver (RFC 3501): 993 implicit TLS (RFC 8314), 143 + STARTTLS if enabled.

Feeds bytes to proto.imap.ImapMachine and carries out its requests: credentials against
the directory (off the loop, throttled, per-user session limit), the one STARTTLS path
(server/starttls.py), and every store command through server/imap_commands.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from mailkeep.config.model import ListenerConfig
from mailkeep.proto.imap import extensions
from mailkeep.proto.imap.events import (
    NEED_DATA,
    AuthRequest,
    ClientId,
    Close,
    Execute,
    Idle,
    IdleDone,
    Outcome,
    Reply,
    StartCompression,
    StartTls,
)
from mailkeep.proto.imap.machine import AUTHENTICATIONFAILED, UNAVAILABLE, ImapMachine
from mailkeep.proto.imap.render import untagged_status
from mailkeep.proto.imap.session import Selected
from mailkeep.server import auth, quickack, starttls
from mailkeep.server.compress import CompressionError, Deflate
from mailkeep.server.imap_commands import ImapExecutor
from mailkeep.server.imap_folders import ImapOptions
from mailkeep.server.listener import Slot
from mailkeep.server.services import Services
from mailkeep.server.stream import SessionFinished, StreamSession, tls_version
from mailkeep.store.quota import Quota

log = logging.getLogger("mailkeep.imap")

# Bytes per read from the socket; the receiver bounds lines and literals itself.
READ_SIZE = 64 * 1024
SHUTDOWN_REPLY = untagged_status("BYE", "Server shutting down, try again later.")
# Output compressed (RFC 4978) in slices of this size; a whole slice is compressed in a
# worker thread (about 5 ms of zlib at level 6), anything smaller on the loop.
DEFLATE_SLICE = 256 * 1024
# RFC 3501 §5.4: autologout after (at least 30 minutes of) inactivity, with a BYE.
IDLE_REPLY = untagged_status("BYE", "Autologout; idle for too long.")


class ImapSession(StreamSession):
    """One client connection."""

    log = log
    SHUTDOWN_REPLY = SHUTDOWN_REPLY

    def __init__(self, services: Services, listener: ListenerConfig,
                 tls_context: ssl.SSLContext, slot: Slot) -> None:
        super().__init__(services, listener, tls_context, slot)
        self.machine: ImapMachine | None = None
        self.executor: ImapExecutor | None = None
        # The selected mailbox (also inside machine.session): kept here so that the change
        # subscription is closed however the session ends.
        self.selected: Selected | None = None
        self.bytes_out = 0
        self.deflate: Deflate | None = None  # RFC 4978, once COMPRESS DEFLATE succeeded
        # Responses written since the last drain, handed to TLS as one write: one record and
        # one send() per command instead of one per response line (FETCH 1:10 was 11); once
        # COMPRESS is active they are compressed at the drain (_deflate_out).
        self._out: list[bytes] = []
        # A continuation ("+") was written: ACK the client's next input at once (quickack.py).
        self._go_ahead = False

    # -- lifecycle (server/stream.py runs it) -------------------------------------------------

    @staticmethod
    def refusal_reply_text(reason: str) -> bytes:
        return untagged_status("BYE", f"{reason}, try again later.", UNAVAILABLE)

    def refusal_reply(self, reason: str) -> bytes:
        return self.refusal_reply_text(reason)

    def internal_error_reply(self) -> bytes:
        return untagged_status("BYE", "Internal error, try again later.", UNAVAILABLE)

    async def _release(self) -> None:
        if self.selected is not None:
            self.selected.leave()
            self.selected = None
        if self.machine is not None:
            self.machine.release()
        if self.account is not None:
            self.services.imap_sessions.release(self.account.name, self.peer_ip)

    @property
    def idling(self) -> bool:
        """In IDLE now (RFC 2177): counted by the metrics (Services.idle_sessions)."""
        return self.machine is not None and self.machine.idling and not self.closed

    def close_summary(self) -> str:
        m = self.machine
        summary = (f"commands={m.commands if m else 0} errors={m.total_errors if m else 0} "
                   f"bytes={self.bytes_out}")
        if self.deflate is not None:
            summary += (f" deflate_in={self.deflate.octets_in} "
                        f"deflate_out={self.deflate.octets_out}")
        return summary

    def last_words(self, data: bytes) -> bytes:
        # Anything still buffered went out first (flush_pending), through the same stream.
        if self.deflate is None:
            return data
        return self.deflate.compress(data) + self.deflate.flush()

    # -- the loop ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._out.append(data)

    def flush_pending(self) -> None:
        """Hand what was written so far to the transport at once (before STARTTLS, on a
        close; _drain otherwise). Compressed on the loop when COMPRESS is active: only a
        session's last responses come this way, not a long FETCH."""
        if self._out and self.writer is not None:
            out = self._out
            self._out = []
            data = out[0] if len(out) == 1 else b"".join(out)
            if self.deflate is not None:
                data = self.deflate.compress(data) + self.deflate.flush()
            self.writer.write(data)

    async def _deflate_out(self) -> None:
        """Compress what was written since the last drain and end with a sync flush (RFC 4978
        §3: the client can read every response so far). Large data (a FETCH of a 25 MiB
        message) is compressed a slice at a time in a worker thread (zlib lets go of the
        GIL), never in one long stretch on the event loop."""
        assert self.writer is not None and self.deflate is not None
        pending, self._out = self._out, []
        # One write per drain as without COMPRESS, except that what is compressed is handed
        # over every DEFLATE_SLICE octets, so a long FETCH is not held twice in memory.
        chunks: list[bytes] = []
        held = 0
        for data in pending:
            view = memoryview(data)
            for start in range(0, len(view), DEFLATE_SLICE):
                piece = view[start:start + DEFLATE_SLICE]
                if len(piece) == DEFLATE_SLICE:
                    out = await asyncio.to_thread(self.deflate.compress, piece)
                else:
                    out = self.deflate.compress(piece)
                if out:
                    chunks.append(out)
                    held += len(out)
                if held >= DEFLATE_SLICE:
                    self.writer.write(b"".join(chunks))
                    chunks, held = [], 0
        chunks.append(self.deflate.flush())
        self.writer.write(b"".join(chunks))

    async def _drain(self) -> None:
        assert self.writer is not None
        if self.deflate is not None:
            await self._deflate_out()
        else:
            self.flush_pending()
        transport = self.writer.transport
        if self._go_ahead:
            self._go_ahead = False
            quickack.ack_next_input(transport)
        if transport.get_write_buffer_size() == 0 and not transport.is_closing():
            return  # all handed to the socket: nothing to wait for (the common case)
        try:
            timeout = self.idle_timeout(self.services.config.imap.idle_timeout)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError:
            raise SessionFinished("idle timeout while sending") from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cfg = self.services.config.imap
        machine = self.machine = ImapMachine(
            tls_active=self.listener.tls == "implicit",
            starttls_offered=self.listener.tls == "starttls",
            max_line=cfg.max_line_length, max_literal=cfg.max_literal_size,
            unauthenticated_max_literal=cfg.unauthenticated_max_literal_size,
            max_errors=cfg.max_errors, budget=self.services.input_budget)
        self._write(machine.greeting())
        while True:
            event = machine.next_event()
            if event is NEED_DATA:
                if self.stopping:
                    self._write(SHUTDOWN_REPLY)
                    raise SessionFinished("shutdown")
                await self._drain()
                if self.deflate is not None and self.deflate.pending:
                    # The rest of a large inflation, before anything new is read.
                    machine.receive_data(self._inflate(b""))
                    continue
                timeout = self.idle_timeout(cfg.idle_timeout)
                if machine.idling:
                    data = await self._idle_read(reader, timeout)
                else:
                    data = await self._read(reader, timeout)
                if self.deflate is not None and data:
                    data = self._inflate(data)
                    if not data:
                        continue  # b"" would mean the end of input
                machine.receive_data(data)
            elif isinstance(event, Reply):
                self._write(event.data)
                if event.data.startswith(b"+"):  # RFC 3501 §7.5: only continuations do
                    self._go_ahead = True
            elif isinstance(event, Idle):
                # Changes since the last command are reported at once (RFC 2177 §3).
                if self.selected is not None and self.selected.watch is not None \
                        and self.selected.watch.pending():
                    await self._idle_update(self.selected)
            elif isinstance(event, IdleDone):
                pass
            elif isinstance(event, AuthRequest):
                await self._authenticate(machine, event)
            elif isinstance(event, StartTls):
                await self._starttls(machine, event, reader, writer)
            elif isinstance(event, StartCompression):
                self._write(event.reply)
                await self._drain()
                self.deflate = Deflate()
                machine.compression_started()
            elif isinstance(event, ClientId):
                log.debug("conn=%s client ID %s", self.conn_id,
                          extensions.id_for_log(event.fields))
            elif isinstance(event, Execute):
                await self._execute(machine, event)
            elif isinstance(event, Close):
                with contextlib.suppress(ConnectionError, OSError):
                    await self._drain()
                raise SessionFinished(event.reason)
            else:  # PAUSED: a request was not answered (a bug in this driver)
                raise RuntimeError(f"machine paused unexpectedly: {event!r}")

    def _inflate(self, data: bytes) -> bytes:
        """RFC 4978: the client's DEFLATE stream, at most compress.INFLATE_CHUNK at a time."""
        assert self.deflate is not None
        try:
            return self.deflate.inflate(data)
        except CompressionError as exc:
            log.info("conn=%s corrupt DEFLATE stream from the client: %s", self.conn_id, exc)
            raise SessionFinished("corrupt DEFLATE stream") from None

    async def _idle_read(self, reader: asyncio.StreamReader, timeout: float) -> bytes:
        """RFC 2177 IDLE: wait on the socket and on the selected mailbox's change feed at
        once; changes are told to the client as they come, until it sends DONE."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        session = self.selected
        watch = session.watch if session is not None else None
        self.reading = True
        read = asyncio.ensure_future(reader.read(READ_SIZE))
        try:
            while True:
                change = asyncio.ensure_future(watch.next()) if watch is not None else None
                waiting: set[asyncio.Future[Any]] = {read}
                if change is not None:
                    waiting.add(change)
                done, _ = await asyncio.wait(waiting, timeout=max(0.0, deadline - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if change is not None and not change.done():
                    change.cancel()
                if read in done:
                    self.input_arrived()
                    return read.result()
                if change is not None and change in done and session is not None:
                    await self._idle_update(session)
                    continue
                self._write(IDLE_REPLY)  # RFC 2177 §3: idle too long, logged out
                with contextlib.suppress(ConnectionError, OSError):
                    await self._drain()
                raise SessionFinished("idle timeout")
        finally:
            self.reading = False
            if not read.done():
                read.cancel()

    async def _idle_update(self, session: Selected) -> None:
        assert self.executor is not None
        closing = await self.executor.sync(session, allow_expunge=True)
        await self.executor.flush()
        if closing is not None:
            self.selected = None
            raise SessionFinished(closing)

    async def _read(self, reader: asyncio.StreamReader, timeout: float) -> bytes:
        self.reading = True
        try:
            data = await self.read_deadline.read(reader, READ_SIZE, timeout)
            self.input_arrived()
            return data
        except TimeoutError:
            self._write(IDLE_REPLY)
            with contextlib.suppress(ConnectionError, OSError):
                await self._drain()
            raise SessionFinished("idle timeout") from None
        finally:
            self.reading = False

    # -- requests ---------------------------------------------------------------------------

    async def _authenticate(self, machine: ImapMachine, request: AuthRequest) -> None:
        services = self.services
        outcome = await auth.login(services, peer_ip=self.peer_ip, creds=request.credentials,
                                   service="imap", mechanism=request.mechanism,
                                   conn_id=self.conn_id)
        if outcome.failure is auth.Failure.BLOCKED:
            machine.auth_failed(request.tag, UNAVAILABLE, "Too many failed logins from your "
                                                          "address, try again later.")
            return
        if outcome.failure is auth.Failure.UNAVAILABLE:
            machine.auth_failed(request.tag, UNAVAILABLE, "Authentication temporarily "
                                                          "unavailable, try again later.")
            return
        account = outcome.account
        if account is None:
            machine.auth_failed(request.tag, AUTHENTICATIONFAILED, "Authentication failed.")
            return
        refusal = services.imap_sessions.acquire(account.name, self.peer_ip)
        if refusal is not None:
            log.warning("conn=%s imap login of %s refused: %s", self.conn_id, account.name,
                        refusal)
            # RFC 5530 §3: [LIMIT] -- the operation ran into a server limit.
            machine.auth_failed(request.tag, "LIMIT", refusal[0].upper() + refusal[1:] + ".")
            return
        self.account = account
        config = services.config
        options = ImapOptions(quota=Quota(config.store.quota, config.store.quota_messages),
                              special_use=config.imap.special_use)
        self.executor = ImapExecutor(services.store, account.name,
                                     services.mime_cache, self._write, self._drain,
                                     conn_id=self.conn_id, session_id=id(self),
                                     options=options)
        machine.auth_succeeded(request.tag, account.name)

    async def _starttls(self, machine: ImapMachine, request: StartTls,
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.flush_pending()  # answers to commands before STARTTLS go out first, in clear
        try:
            await starttls.upgrade(reader, writer, self.front_context,
                                   self.services.config.tls.handshake_timeout, request.reply,
                                   metrics=self.services.metrics, listener=self.listener.name)
        except starttls.PipelinedPlaintext:
            log.warning("conn=%s plaintext pipelined behind STARTTLS: refused, closing",
                        self.conn_id)
            if self.tls is None and not writer.transport.is_closing():
                self._write(untagged_status("BYE", "Commands pipelined behind STARTTLS "
                                                   "refused."))
            raise SessionFinished("plaintext pipelined behind STARTTLS") from None
        except starttls.HandshakeFailed as exc:
            log.info("conn=%s TLS handshake failed: %s", self.conn_id, exc)
            machine.tls_failed()
            return
        self.tls = tls_version(writer)
        machine.tls_started()

    async def _execute(self, machine: ImapMachine, request: Execute) -> None:
        if self.executor is None:  # the state table admits no store command before login
            raise RuntimeError("store command before login")
        command = request.command
        try:
            outcome = await self.executor.run(command, request.session)
        except (ConnectionError, OSError, SessionFinished):
            raise
        except Exception:
            log.exception("conn=%s %s failed", self.conn_id, command.name)
            machine.executed(Outcome("NO", "Internal error, try again.", UNAVAILABLE))
            return
        if outcome.session is not None:
            self.selected = outcome.session if isinstance(outcome.session, Selected) else None
        machine.executed(outcome)


def refusal_line(reason: str) -> bytes:
    """What a client refused at accept time is told (plaintext doors only)."""
    return ImapSession.refusal_reply_text(reason)


def session_factory(services: Services, listener: ListenerConfig,
                    context: ssl.SSLContext) -> Callable[[Slot], asyncio.Protocol]:
    """One StreamReaderProtocol per accepted connection (server/listener.py)."""

    def factory(slot: Slot) -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=READ_SIZE)
        session = ImapSession(services, listener, context, slot)
        return asyncio.StreamReaderProtocol(reader, session.run)

    return factory
