"""The daemon's small HTTP/1.1 server (h11), shared by its HTTP listeners: account
autoconfiguration (server/autoconfig.py) and the administration endpoints (server/admin.py).

A site supplies one coroutine, respond(Request) -> Answer (the routing itself is sans-IO, in
proto/); this module reads requests, enforces the limits and writes the answers. Connections
come through server/listener.py like every other door: counted at accept (per address and
in total), refused over budget, the TLS handshake under its timeout, shed first when the
daemon is full (no client here ever logs in).

Limits: request line and headers at most MAX_HEAD_OCTETS (431 past it), a body at most
MAX_BODY_OCTETS (413), the whole request within REQUEST_TIMEOUT, keep-alive for at most
MAX_REQUESTS_PER_CONNECTION requests with KEEPALIVE_TIMEOUT of silence between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ssl
from collections.abc import Callable
from dataclasses import replace
from http import HTTPStatus
from typing import NoReturn

import h11

from mailkeep.config.model import ListenerConfig
from mailkeep.proto.http import Answer, Request, plain
from mailkeep.server.listener import Slot
from mailkeep.server.services import Services
from mailkeep.server.stream import SessionFinished, StreamSession

# Request line and headers: 8 KiB, Apache's LimitRequestLine/LimitRequestFieldSize and
# nginx's large_client_header_buffers (8k). A client here sends a few hundred bytes.
MAX_HEAD_OCTETS = 8 * 1024
# The largest body read: an Outlook autodiscover POST is about 350 bytes.
MAX_BODY_OCTETS = 8 * 1024
# Bytes per read; h11 buffers at most MAX_HEAD_OCTETS + READ_SIZE of an unfinished head.
READ_SIZE = 4096
# A whole request (head and body) within this many seconds of its first byte or of the
# connection's start (nginx client_header_timeout/client_body_timeout are 60 s; a client
# that fetches a 2 KB document needs well under a second).
REQUEST_TIMEOUT = 10.0
# Silence allowed between requests on a kept-alive connection (Apache KeepAliveTimeout 5 s).
KEEPALIVE_TIMEOUT = 5.0
# Requests on one connection before it is closed (nginx keepalive_requests was 100).
MAX_REQUESTS_PER_CONNECTION = 100
# RFC 9112 §9.6: a server that closes while the client may still be sending should stop
# writing first and keep reading a while, or the client's TCP stack, hit by a reset, may
# throw away the response it has not read yet (nginx lingering_close: 30 s / 5 s). At most
# this long and this much, then the connection is closed regardless.
LINGER_SECONDS = 2.0
LINGER_OCTETS = 64 * 1024


def _http_date() -> str:
    # RFC 9110 §6.6.1: an origin server with a clock MUST send Date.
    return email.utils.formatdate(usegmt=True)


class HttpSession(StreamSession):
    """One HTTP connection: requests in, answers out, then close. Subclasses implement
    respond()."""

    def __init__(self, services: Services, listener: ListenerConfig,
                 tls_context: ssl.SSLContext, slot: Slot) -> None:
        super().__init__(services, listener, tls_context, slot)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_OCTETS)
        self.requests = 0
        self.last_status = 0
        self.reader: asyncio.StreamReader | None = None

    async def respond(self, request: Request) -> Answer:
        raise NotImplementedError

    # -- StreamSession ---------------------------------------------------------------------

    @staticmethod
    def refusal_bytes(reason: str) -> bytes:
        """503 with Retry-After (RFC 9110 §15.6.4): over budget or shutting down."""
        text = f"503 Service Unavailable: {reason}\n".encode()
        return (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 60\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text)

    def refusal_reply(self, reason: str) -> bytes:
        return self.refusal_bytes(reason)

    def shed_reply(self) -> bytes:
        # Between requests: a client may send its next request as we close; closing without
        # a word is what RFC 9112 §9.5 allows for an idle connection.
        return b""

    def internal_error_reply(self) -> bytes:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""  # a response was already started: only closing is left
        return (b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n"
                b"Content-Length: 0\r\n\r\n")

    def close_summary(self) -> str:
        return f"requests={self.requests} status={self.last_status or '-'}"

    # -- HTTP ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        while True:
            request = await self._read_request(reader)
            if request is None:
                return
            self.requests += 1
            result = await self.respond(request)
            if self.requests >= MAX_REQUESTS_PER_CONNECTION or self.stopping:
                result = replace(result, close=True)
            await self._send(writer, result, head_only=request.method == "HEAD")
            self.log.debug("conn=%s %s %s -> %d", self.conn_id, request.method,
                           request.target.partition("?")[0][:200], result.status)
            if result.close:
                await self._linger(reader, writer)  # pipelined requests may be unread
                return
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # the client asked to close, or spoke HTTP/1.0
            self.conn.start_next_cycle()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        """The next complete request, or None when the connection is over (closed by the
        client, idle, or answered with an error here)."""
        loop = asyncio.get_running_loop()
        first = self.requests == 0
        # Pipelined bytes left from the previous request count towards this one's head.
        fed = len(self.conn.trailing_data[0])
        # Nobody here ever logs in: security.login_timeout bounds every wait.
        limit = min(REQUEST_TIMEOUT, self.services.config.security.login_timeout)
        deadline: float | None = loop.time() + limit if first or fed else None
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                # The peer's fault: 400 (bad syntax) or 431 (head too long), then close.
                await self._refuse(exc.error_status_hint, f"bad request: {exc}")
            if event is h11.NEED_DATA:
                data = await self._receive(reader, deadline, idle=request is None and not fed)
                if data is None:
                    return None
                if deadline is None:
                    deadline = loop.time() + limit
                fed += len(data)
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                head = fed - len(self.conn.trailing_data[0])
                if head > MAX_HEAD_OCTETS:
                    # h11 limits only a head still incomplete; one that arrives whole in a
                    # single read is measured here.
                    await self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                       "head too long")
                length = dict(event.headers).get(b"content-length", b"0")
                if length.isdigit() and int(length) > MAX_BODY_OCTETS:
                    await self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_OCTETS:
                    await self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                # h11 gives field names lower-cased; values are latin-1 (RFC 9110 §5.5).
                headers = tuple((k.decode("ascii", "replace"), v.decode("latin-1"))
                                for k, v in request.headers)
                return Request(request.method.decode("ascii", "replace"),
                               request.target.decode("ascii", "replace"), headers,
                               bytes(body))
            else:  # ConnectionClosed, PAUSED
                return None

    async def _receive(self, reader: asyncio.StreamReader, deadline: float | None,
                       *, idle: bool) -> bytes | None:
        """Bytes from the client (b"" at EOF mid-request); None when the connection is over:
        idle too long, closed between requests, or the daemon stopping."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            timeout = min(KEEPALIVE_TIMEOUT, self.services.config.security.login_timeout)
        else:
            timeout = max(deadline - loop.time(), 0.0)
        self.reading = idle
        try:
            data = await asyncio.wait_for(reader.read(READ_SIZE), timeout)
        except TimeoutError:
            if not idle:
                # RFC 9110 §15.5.9: 408 for a request that took too long to arrive.
                await self._refuse(HTTPStatus.REQUEST_TIMEOUT, "request timeout")
            return None  # silent between requests: closed without a word (RFC 9112 §9.5)
        finally:
            self.reading = False
        self.input_arrived()
        if self.stopping and idle:
            return None
        if not data and idle:
            return None  # the client closed between requests
        return data  # b"" (EOF) mid-request: h11 reports the truncated request

    async def _refuse(self, status: int, reason: str) -> NoReturn:
        self.log.debug("conn=%s %s", self.conn_id, reason)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            assert self.writer is not None and self.reader is not None
            await self._send(self.writer, plain(status, close=True), head_only=False)
            await self._linger(self.reader, self.writer)
        raise SessionFinished(reason)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close (where the transport can: not inside TLS), then read and drop what the
        client still sends, until it closes or LINGER_SECONDS / LINGER_OCTETS run out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        drained = 0
        with contextlib.suppress(TimeoutError, OSError, ConnectionError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
            while drained < LINGER_OCTETS:
                chunk = await asyncio.wait_for(reader.read(READ_SIZE),
                                               max(deadline - loop.time(), 0.0))
                if not chunk:
                    break
                drained += len(chunk)

    async def _send(self, writer: asyncio.StreamWriter, result: Answer, *,
                    head_only: bool) -> None:
        self.last_status = result.status
        headers = [("Date", _http_date()), ("Content-Type", result.content_type),
                   ("Content-Length", str(len(result.body))),
                   ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                   *result.headers]
        if result.close:
            headers.append(("Connection", "close"))
        data = self.conn.send(h11.Response(status_code=result.status, headers=headers,
                                           reason=result.reason.encode()))
        if not head_only and result.body:
            data += self.conn.send(h11.Data(data=result.body))
        data += self.conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()


def refusal_line(reason: str) -> bytes:
    """What a client refused at accept time is told (plain HTTP only)."""
    return HttpSession.refusal_bytes(reason)


def stream_factory(make: Callable[[Slot], HttpSession]) -> Callable[[Slot], asyncio.Protocol]:
    """One StreamReaderProtocol per accepted connection (server/listener.py)."""

    def factory(slot: Slot) -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=READ_SIZE)
        return asyncio.StreamReaderProtocol(reader, make(slot).run)

    return factory
