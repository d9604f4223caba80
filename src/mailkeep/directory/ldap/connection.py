"""LDAP connections: TLS with verification, a pool, timeouts, and failover across URIs.

ldap3 is synchronous; everything here blocks and runs in the backend's thread pool. Each
connection is used by one thread at a time and goes back to an idle stack afterwards.
Two kinds are pooled apart: "search" connections, bound once as the service account, and
"bind" connections, which only ever carry user binds (a user's bind must never leave a
connection that later searches with that user's rights).

TLS always: ldaps:// is TLS from the first byte, ldap:// gets StartTLS (RFC 4513 §3) before
anything else is sent, and a failed StartTLS never falls back to plaintext. Certificates are
checked by Python's ssl module like every other certificate in mailkeep: the chain against
`ca_file` (or the system store) and the host name against the URI's host.

Failover: URIs are tried in order; one that fails to connect or answer is skipped for
SERVER_RETRY_SECONDS (unless every server is marked down, then all are tried again).
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_exc

from mailkeep.directory.base import DirectoryError, DirectoryUnavailable

log = logging.getLogger("mailkeep.directory")

# A server that failed is left alone this long before it is tried again first.
SERVER_RETRY_SECONDS = 30.0
# RFC 4511 §4.1.9 result codes that mean "this server cannot answer now": busy (51),
# unavailable (52), unwillingToPerform during shutdown is not among them (53 is a refusal).
_TEMPORARY_RESULTS = {3, 51, 52, 80}  # timeLimitExceeded, busy, unavailable, other
INVALID_CREDENTIALS = 49

T = TypeVar("T")


class VerifiedTls(ldap3.Tls):
    """ldap3's Tls with Python's own verification: one SSLContext with check_hostname on
    (ldap3 turns it off and matches names itself, with a deprecated helper)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self.context = context

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        connection.socket = self.context.wrap_socket(
            connection.socket, server_side=False, do_handshake_on_connect=do_handshake,
            server_hostname=connection.server.host)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DirectoryError(f"directory.ca_file: {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(slots=True)
class _Server:
    uri: str
    server: ldap3.Server
    starttls: bool
    down_until: float = 0.0


def parse_uris(uris: Sequence[str]) -> list[tuple[str, str, int, bool]]:
    """(uri, host, port, starttls) per URI; DirectoryError on anything but ldap(s)://."""
    result = []
    for i, uri in enumerate(uris):
        parts = urlsplit(uri)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or \
                parts.path not in ("", "/"):
            raise DirectoryError(f"directory.uri[{i}]: {uri!r} is not ldaps://HOST[:PORT] "
                                 "or ldap://HOST[:PORT] (StartTLS)")
        try:
            port = parts.port or (636 if parts.scheme == "ldaps" else 389)
        except ValueError:
            raise DirectoryError(f"directory.uri[{i}]: {uri!r}: bad port") from None
        result.append((uri, parts.hostname, port, parts.scheme == "ldap"))
    return result


class LdapPool:
    def __init__(self, uris: Sequence[str], *, context: ssl.SSLContext, timeout: float,
                 size: int, bind_dn: str | None, bind_password: str | None) -> None:
        self.timeout = timeout
        self.size = size
        self.bind_dn = bind_dn
        self.bind_password = bind_password
        tls = VerifiedTls(context)
        self.servers = [
            _Server(uri, ldap3.Server(host, port=port, use_ssl=not starttls, tls=tls,
                                      get_info=ldap3.NONE, connect_timeout=timeout),
                    starttls)
            for uri, host, port, starttls in parse_uris(uris)]
        self._idle: dict[str, queue.LifoQueue[tuple[int, ldap3.Connection]]] = {
            "search": queue.LifoQueue(), "bind": queue.LifoQueue()}
        self._lock = threading.Lock()
        self._closed = False

    # -- servers --------------------------------------------------------------------------

    def _order(self) -> list[int]:
        now = time.monotonic()
        up = [i for i, s in enumerate(self.servers) if s.down_until <= now]
        down = [i for i, s in enumerate(self.servers) if s.down_until > now]
        return up + down

    def _mark_down(self, index: int, exc: BaseException) -> None:
        server = self.servers[index]
        if server.down_until <= time.monotonic():
            log.error("ldap: %s unusable, trying the others for %.0fs: %s", server.uri,
                      SERVER_RETRY_SECONDS, exc)
        server.down_until = time.monotonic() + SERVER_RETRY_SECONDS

    # -- connections ------------------------------------------------------------------------

    def _open(self, index: int, kind: str) -> ldap3.Connection:
        server = self.servers[index]
        conn = ldap3.Connection(
            server.server, client_strategy=ldap3.SYNC, auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False, read_only=True, auto_referrals=False,
            receive_timeout=max(1, math.ceil(self.timeout)))
        conn.open(read_server_info=False)
        if server.starttls:
            # RFC 4513 §3.1: StartTLS first; ldap3 raises when the server refuses it, and the
            # handshake verifies the certificate. Nothing else was sent in the clear.
            conn.start_tls(read_server_info=False)
        if kind == "search" and self.bind_dn:
            conn.authentication = ldap3.SIMPLE
            conn.user, conn.password = self.bind_dn, self.bind_password
            if not conn.bind(read_server_info=False):
                result = conn.result or {}
                code = result.get("result")
                conn.unbind()
                if code == INVALID_CREDENTIALS:
                    raise DirectoryUnavailable(
                        "ldap: the service account (bind_dn) was refused: check "
                        "bind_dn and bind_password_file")
                raise DirectoryUnavailable(f"ldap: service bind failed: "
                                           f"{result.get('description')}")
        return conn

    def _release(self, kind: str, index: int, conn: ldap3.Connection) -> None:
        if self._closed or self._idle[kind].qsize() >= self.size:
            self._discard(conn)
        else:
            self._idle[kind].put((index, conn))

    @staticmethod
    def _discard(conn: ldap3.Connection) -> None:
        with contextlib.suppress(Exception):  # a dead connection may fail to say goodbye
            conn.unbind()

    def run(self, kind: str, operation: Callable[[ldap3.Connection], T]) -> T:
        """Blocking: `operation` on a pooled connection of `kind`, failing over between
        servers. DirectoryUnavailable when no server could carry it out."""
        if self._closed:
            raise DirectoryUnavailable("ldap: directory closed")
        errors: list[str] = []
        try:
            attempts: list[tuple[int, ldap3.Connection | None]] = [
                self._idle[kind].get_nowait()]
        except queue.Empty:
            attempts = []
        attempts += [(i, None) for i in self._order()]
        for index, pooled in attempts:
            conn = pooled
            try:
                if conn is None:
                    conn = self._open(index, kind)
                result = operation(conn)
            except (ldap_exc.LDAPCommunicationError, ldap_exc.LDAPStartTLSError,
                    ldap_exc.LDAPSocketOpenError, ldap_exc.LDAPSessionTerminatedByServerError,
                    ldap_exc.LDAPResponseTimeoutError, ldap_exc.LDAPSocketReceiveError,
                    ldap_exc.LDAPSocketSendError, ldap_exc.LDAPMaximumRetriesError,
                    ldap_exc.LDAPSSLConfigurationError, TemporaryResult, OSError,
                    ssl.SSLError) as exc:
                if conn is not None:
                    self._discard(conn)
                if pooled is None:
                    self._mark_down(index, exc)
                errors.append(f"{self.servers[index].uri}: {exc}")
                continue
            except DirectoryUnavailable:
                if conn is not None:
                    self._discard(conn)
                raise
            self.servers[index].down_until = 0.0
            self._release(kind, index, conn)
            return result
        raise DirectoryUnavailable("ldap: no server answered: " + "; ".join(errors))

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while True:
                try:
                    _, conn = idle.get_nowait()
                except queue.Empty:
                    break
                self._discard(conn)


class TemporaryResult(Exception):
    """The server answered "busy" or "unavailable": try the next one."""


def check_result(conn: ldap3.Connection) -> None:
    """Raise TemporaryResult when the last operation's result says "try elsewhere"."""
    code = (conn.result or {}).get("result")
    if code in _TEMPORARY_RESULTS:
        raise TemporaryResult(f"result {code} ({(conn.result or {}).get('description')})")
