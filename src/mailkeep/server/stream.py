"""The connection lifecycle shared by the stream-based doors (POP3, IMAP).

One place registers the session for shutdown and load shedding, turns escaping exceptions
into a logged internal error with a generic reply, and releases everything (its connection
slot was taken at accept by server/listener.py). The protocol drivers supply their replies
and their own clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

from mailkeep.config.model import ListenerConfig
from mailkeep.directory.base import Account
from mailkeep.server.deadline import ReadDeadline
from mailkeep.server.listener import Slot
from mailkeep.server.services import SHUTDOWN_ABORT_AFTER, Services, new_connection_id

# After the last reply on a TLS connection, wait this long for the client's close_notify,
# then drop the TCP connection (asyncio would wait 30 s; Dovecot closes in milliseconds).
TLS_CLOSE_LINGER = 0.25


class SessionFinished(Exception):
    """The session ends now (reason in args[0])."""


def tls_version(writer: asyncio.StreamWriter) -> str | None:
    obj = writer.get_extra_info("ssl_object")
    return None if obj is None else (obj.version() or "TLS")


class StreamSession:
    """One client connection of a stream-based door. Subclasses implement _serve()."""

    log = logging.getLogger("mailkeep")
    SHUTDOWN_REPLY = b""

    def __init__(self, services: Services, listener: ListenerConfig,
                 tls_context: ssl.SSLContext, slot: Slot) -> None:
        self.services = services
        self.listener = listener
        self.front_context = tls_context
        self.slot = slot
        self.conn_id = new_connection_id()
        self.peer_ip = slot.address
        self.started = time.monotonic()
        self._last_input = self.started
        self.account: Account | None = None
        self.tls: str | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reading = False      # waiting for the client's next command
        self.read_deadline = ReadDeadline()
        self.stopping = False
        self.closed = False

    # -- what a door supplies --------------------------------------------------------------

    def refusal_reply(self, reason: str) -> bytes:
        raise NotImplementedError

    def shed_reply(self) -> bytes:
        return self.refusal_reply("too many connections")

    def internal_error_reply(self) -> bytes:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _release(self) -> None:
        """The door's own clean-up (locks, per-user counts), before the connection closes."""

    def close_summary(self) -> str:
        """The door's figures for the one log line per connection."""
        return ""

    def last_words(self, data: bytes) -> bytes:
        """A reply written outside the door's own loop (shutdown, shedding, an internal
        error) as it must go on the wire (IMAP: compressed once COMPRESS is active)."""
        return data

    # -- the session as the daemon sees it (shutdown, load shedding) ------------------------

    @property
    def last_input(self) -> float:
        return self._last_input

    def input_arrived(self) -> None:
        self._last_input = time.monotonic()

    def sheddable(self) -> bool:
        return self.account is None and self.reading and not self.closed

    def shed(self) -> None:
        self.slot.release()  # at once: the new connection takes this place
        self.log.info("conn=%s shed: not logged in and idle while the connection cap is "
                      "reached", self.conn_id)
        if self.writer is not None and not self.closed:
            with contextlib.suppress(Exception):
                self.writer.write(self.last_words(self.shed_reply()))
                self.writer.close()
            asyncio.get_running_loop().call_later(TLS_CLOSE_LINGER, self.abort)

    def idle_timeout(self, authenticated: float) -> float:
        """The door's idle timeout once logged in; the short login timeout before."""
        if self.account is None:
            return min(authenticated, self.services.config.security.login_timeout)
        return authenticated

    # -- the lifecycle ---------------------------------------------------------------------

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        services = self.services
        if services.stopping or self.slot.released:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(self.refusal_reply("service shutting down"))
                writer.close()
            self.slot.release()
            return
        services.sessions.add(self)
        self.tls = tls_version(writer)
        reason = "closed"
        try:
            await self._serve(reader, writer)
        except SessionFinished as done:
            reason = str(done.args[0])
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except Exception:
            # Ours, not the client's: logged with the connection id, generic reply.
            self.log.exception("conn=%s internal error", self.conn_id)
            reason = "internal error"
            with contextlib.suppress(Exception):
                self.flush_pending()
                writer.write(self.last_words(self.internal_error_reply()))
        finally:
            await self._finish(writer, reason)

    def flush_pending(self) -> None:
        """Doors that buffer their output hand it to the transport here."""

    async def _finish(self, writer: asyncio.StreamWriter, reason: str) -> None:
        self.closed = True
        self.read_deadline.close()
        with contextlib.suppress(Exception):
            self.flush_pending()  # the last words (BYE) of a session that ends in a raise
        try:
            await self._release()
        except Exception:
            self.log.exception("conn=%s clean-up failed", self.conn_id)
        with contextlib.suppress(Exception):
            writer.close()
        if self.tls is not None:
            # Do not wait 30 s for a close_notify the client may never send.
            asyncio.get_running_loop().call_later(TLS_CLOSE_LINGER, self.abort)
        self.services.sessions.discard(self)
        self.slot.release()
        self.log.info("conn=%s %s close peer=%s listener=%s tls=%s user=%s %s reason=%s "
                      "duration=%.3fs", self.conn_id, self.listener.protocol, self.peer_ip,
                      self.listener.name,
                      self.tls or "none", self.account.name if self.account else "-",
                      self.close_summary(), reason, time.monotonic() - self.started)

    def shutdown(self) -> None:
        """Daemon stopping: say goodbye and close now if waiting for a command, else after
        the command in flight (the door checks `stopping`)."""
        self.stopping = True
        if self.reading and self.writer is not None and not self.closed:
            with contextlib.suppress(Exception):
                self.writer.write(self.last_words(self.SHUTDOWN_REPLY))
                self.writer.close()
            # A TLS client that ignores our close_notify would hold the daemon for the grace.
            asyncio.get_running_loop().call_later(SHUTDOWN_ABORT_AFTER, self.abort)

    def abort(self) -> None:
        """Drop the connection now (aborting an already closed transport is harmless)."""
        if self.writer is not None:
            self.slot.hang_up(self.writer.transport)
