"""Accepting connections: every connection is counted at accept, before any TLS work.

asyncio's create_server(ssl=...) hands a connection to the protocol only after the TLS
handshake, so connections that never finish a handshake were invisible to the budget: 4,000
of them from one address held 4,000 descriptors (outside testing). Here each listening
socket has its own accept loop: the peer is counted (per address and in total) the moment
the socket is accepted, refused at once when over budget (or room is made by shedding an
idle unauthenticated session), and only then is TLS started, with a short handshake timeout,
by connect_accepted_socket(). A connection that fails its handshake gives its slot back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from mailkeep.config.model import BindAddress, ListenerConfig
from mailkeep.observe.metrics import ConnectionRefusal
from mailkeep.proto import proxy as proxy_header
from mailkeep.proto.connector import client_allowed
from mailkeep.security.budget import TOO_MANY, TOO_MANY_FROM_YOU
from mailkeep.server.services import Services

log = logging.getLogger("mailkeep")

# listen(2) backlog: connections the kernel queues while we are busy (Postfix uses 100,
# nginx 511; SOMAXCONN caps it).
BACKLOG = 511
# accept() failing for lack of descriptors or memory: wait this long before trying again
# rather than spin (asyncio's own server does the same for one second).
ACCEPT_RETRY_SECONDS = 0.1
# A trusted proxy sends its PROXY header at once (HAProxy: before any client data); one that
# has not within this time is broken.
PROXY_HEADER_TIMEOUT = 5.0
# Refusals are logged at most once per this many seconds per reason and address, with a
# count of the ones not logged (a flood must not flood the log as well).
REFUSAL_LOG_INTERVAL = 10.0
_RETRYABLE_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                            errno.ECONNABORTED, errno.EPROTO, errno.EAGAIN}
SHUTTING_DOWN = "service shutting down"
# admit()'s reasons as the metrics name them.
_REFUSAL_KINDS: dict[str, ConnectionRefusal] = {
    SHUTTING_DOWN: "shutting_down", TOO_MANY: "too_many",
    TOO_MANY_FROM_YOU: "too_many_from_address"}


class Slot:
    """One connection's place in the connection budget, given back exactly once, and its
    socket (for hang_up)."""

    __slots__ = ("_services", "address", "released", "sock")

    def __init__(self, services: Services, address: str,
                 sock: socket.socket | None = None) -> None:
        self._services = services
        self.address = address
        self.released = False
        self.sock = sock

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._services.budget.release(self.address)

    def hang_up(self, transport: asyncio.BaseTransport | None) -> None:
        """Close the connection now, whatever state its TLS layer is in.

        transport.abort() alone is not enough: on Python 3.11 a second close() of an
        asyncio TLS transport (aiosmtpd closes it twice after QUIT) detaches it from its TLS
        layer, after which abort() does nothing and the TCP connection stays open until the
        peer leaves. Shutting the socket down sends the FIN regardless; the event loop then
        sees the connection end and cleans up."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if transport is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                cast(asyncio.WriteTransport, transport).abort()


ProtocolFactory = Callable[[Slot], asyncio.BaseProtocol]


class PendingHandshake:
    """A connection still in its TLS handshake, as the daemon's session registry sees it:
    it has not logged in and is waiting for the client, so it may be shed (the socket is
    shut down, which makes the handshake fail and the slot come back)."""

    __slots__ = ("conn", "last_input", "slot")

    def __init__(self, conn: socket.socket, slot: Slot) -> None:
        self.conn = conn
        self.slot = slot
        self.last_input = time.monotonic()

    def sheddable(self) -> bool:
        return True

    def shed(self) -> None:
        self.slot.release()
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)

    def shutdown(self) -> None:
        self.shed()

    def abort(self) -> None:
        self.shed()


@dataclass
class _RefusalLog:
    last: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def note(self, listener: str, address: str, reason: str) -> None:
        key = (address, reason)
        now = time.monotonic()
        when, suppressed = self.last.get(key, (0.0, 0))
        if now - when < REFUSAL_LOG_INTERVAL:
            self.last[key] = (when, suppressed + 1)
            return
        if len(self.last) > 10_000:  # bounded: forget everything old
            self.last = {k: v for k, v in self.last.items()
                         if now - v[0] < REFUSAL_LOG_INTERVAL}
        self.last[key] = (now, 0)
        more = f" (and {suppressed} more since the last report)" if suppressed else ""
        log.warning("refused peer=%s listener=%s: %s%s", address, listener, reason, more)


_refusals = _RefusalLog()


async def _read_proxy_header(conn: socket.socket) -> bytes:
    """Exactly the PROXY header: peek until it is complete, then read only its octets, so
    the client's first bytes (a TLS ClientHello) stay for the TLS layer."""
    loop = asyncio.get_running_loop()
    while True:
        ready = loop.create_future()
        loop.add_reader(conn.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(conn.fileno())
        peek = conn.recv(proxy_header.V2_MAX_PAYLOAD + 16, socket.MSG_PEEK)
        if not peek:
            raise proxy_header.ProxyError("the proxy closed the connection")
        length = proxy_header.header_length(peek)
        if length is not None and len(peek) >= length:
            return conn.recv(length)
        await asyncio.sleep(0.01)  # a header split across segments: wait for the rest


def admit(services: Services, address: str, sock: socket.socket | None = None) -> Slot | str:
    """A slot for a new connection from `address`, or the reason it is refused. When the
    total cap is what refuses it, the longest-silent unauthenticated session is shed."""
    if services.stopping:
        return SHUTTING_DOWN
    refusal = services.budget.acquire(address)
    if refusal == TOO_MANY and services.shed_one():
        refusal = services.budget.acquire(address)
    if refusal is not None:
        return refusal
    return Slot(services, address, sock)


def bind_hint(exc: OSError, addr: BindAddress) -> str:
    """Why `addr` could not be bound, and the fix, for an administrator."""
    if exc.errno == errno.EACCES and addr.port < 1024:
        return ("permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
                "use a port above 1024 or grant the capability")
    if exc.errno == errno.EADDRINUSE:
        return "address already in use: another server (Postfix? Dovecot?) listens there"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine: check the IP"
    return exc.strerror or str(exc)


def bind_socket(addr: BindAddress, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket for host:port (IPv6 sockets are IPv6-only, so "[::]:587" and
    "0.0.0.0:587" can both be bound). OSError when it cannot be bound."""
    infos = socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """The accept loop of one listening socket of one configured listener."""

    def __init__(self, services: Services, config: ListenerConfig, sock: socket.socket, *,
                 context: ssl.SSLContext, factory: ProtocolFactory,
                 refusal_line: Callable[[str], bytes], bind: BindAddress | None = None) -> None:
        self.services = services
        self.config = config
        self.sock = sock
        # The configured address (port 0 stays 0 here; `address` has the port bound).
        self.bind = bind
        self.context = context
        self.factory = factory
        self.refusal_line = refusal_line
        self.implicit_tls = config.tls == "implicit"
        self._task: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def serving(self) -> bool:
        """Bound and accepting (the admin listener's /readyz asks)."""
        return self._task is not None and not self._task.done() and self.sock.fileno() >= 0

    def _refused(self, reason: ConnectionRefusal) -> None:
        self.services.metrics.connection_refused(self.config.name, self.config.protocol,
                                                 reason)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in _RETRYABLE_ACCEPT_ERRORS:
                    _refusals.note(self.config.name, "-", f"accept failed: {exc.strerror}")
                    await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                    continue
                raise
            self._accepted(conn, peer)

    def _accepted(self, conn: socket.socket, peer: tuple[str, int] | str) -> None:
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if self.config.proxy_protocol:
            if not client_allowed(address, self.services.config.trusted_proxies):
                # A PROXY header is believed only from trusted_proxies: anyone else could
                # claim any address and walk around every per-address limit.
                _refusals.note(self.config.name, address, "PROXY header from an untrusted "
                               "address (not in trusted_proxies)")
                self._refused("untrusted_proxy")
                conn.close()
                return
            task = asyncio.get_running_loop().create_task(self._proxied(conn, address))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
            return
        self._admit(conn, address)

    async def _proxied(self, conn: socket.socket, proxy: str) -> None:
        """Read the PROXY header (HAProxy's spec, v1 or v2), then go on with the real
        client's address as if it had connected directly."""
        try:
            async with asyncio.timeout(PROXY_HEADER_TIMEOUT):
                header = await _read_proxy_header(conn)
            info = proxy_header.parse(header)
        except (TimeoutError, OSError, proxy_header.ProxyError) as exc:
            _refusals.note(self.config.name, proxy, f"no valid PROXY header: {exc}")
            self._refused("bad_proxy_header")
            conn.close()
            return
        self._admit(conn, info.source or proxy)

    def _admit(self, conn: socket.socket, address: str) -> None:
        clients = self.config.clients
        if clients and not client_allowed(address, clients):
            # An application connector serves its `clients` networks only: anyone else is
            # refused before any TLS or SMTP work (Exchange receive connectors do the same).
            _refusals.note(self.config.name, address, "not in this connector's clients")
            self._refused("not_allowed")
            with contextlib.suppress(OSError):
                if not self.implicit_tls:
                    conn.setblocking(False)
                    conn.send(f"554 5.7.1 {self.services.config.hostname} {address} may not "
                              "use this service\r\n".encode())
            conn.close()
            return
        admitted = admit(self.services, address, conn)
        if isinstance(admitted, str):
            _refusals.note(self.config.name, address, admitted)
            self._refused(_REFUSAL_KINDS.get(admitted, "too_many"))
            self._refuse(conn, admitted)
            return
        self.services.metrics.connection_accepted(self.config.name, self.config.protocol)
        task = asyncio.get_running_loop().create_task(self._connect(conn, admitted))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        """Over budget: no TLS work at all. A plaintext door says why in one line (best
        effort, never waiting); an implicit-TLS door can only close."""
        with contextlib.suppress(OSError):
            if not self.implicit_tls:
                conn.setblocking(False)
                conn.send(self.refusal_line(reason))
        conn.close()

    async def _connect(self, conn: socket.socket, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        tls = self.context if self.implicit_tls else None
        pending = PendingHandshake(conn, slot) if tls else None
        if pending is not None:
            self.services.sessions.add(pending)
        metrics = self.services.metrics
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: self.factory(slot), conn, ssl=tls,
                ssl_handshake_timeout=self.services.config.tls.handshake_timeout
                if tls else None)
            if tls is not None:
                ssl_object = transport.get_extra_info("ssl_object")
                metrics.tls_handshake(self.config.name,
                                      ssl_object.version() if ssl_object else None)
        except asyncio.CancelledError:
            slot.release()
            conn.close()
            raise
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            # The handshake failed or timed out: the session never started.
            if tls is not None:
                metrics.tls_handshake_failed(self.config.name)
            slot.release()
            conn.close()
            log.debug("peer=%s listener=%s TLS handshake failed: %s", slot.address,
                      self.config.name, exc)
        except Exception:
            slot.release()
            conn.close()
            log.exception("peer=%s listener=%s: connection setup failed", slot.address,
                          self.config.name)
        finally:
            if pending is not None:
                self.services.sessions.discard(pending)

    def reconfigure(self, config: ListenerConfig, *, context: ssl.SSLContext,
                    factory: ProtocolFactory, refusal_line: Callable[[str], bytes]) -> None:
        """A reload: connections accepted from now on get the new policy, TLS context and
        sessions; the listening socket and every connection already accepted stay as they
        are (no client is refused in between)."""
        self.config = config
        self.context = context
        self.factory = factory
        self.refusal_line = refusal_line
        self.implicit_tls = config.tls == "implicit"

    def stop_accepting(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.sock.close()

    async def close(self) -> None:
        """Stop accepting and abandon handshakes still in progress."""
        task = self._task
        self.stop_accepting()
        for pending in list(self._starting):
            pending.cancel()
        waiting = [t for t in (task, *self._starting) if t is not None]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

