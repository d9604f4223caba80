"""The SMTP server of every connector, on aiosmtpd: submission (587 + STARTTLS per RFC
3207, 465 implicit TLS per RFC 8314), the inbound MX (25) and application relays.

aiosmtpd runs the command loop; this driver adds what a mail server must be: AUTH only inside
TLS and verified off the loop, our own MAIL/RCPT/DATA (null sender, DSN parameters, exact
SIZE, the input budget), the connector's policy (server/smtp_transaction.py), the spool,
limits and logging.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, syntax

from mailkeep.config.model import ListenerConfig
from mailkeep.directory.base import Account
from mailkeep.proto import sasl, smtp_path
from mailkeep.proto.printable import printable
from mailkeep.proto.smtp_reply import enhance, reply_code
from mailkeep.proto.submission import (
    TlsInfo,
)
from mailkeep.server import auth, quickack, smtp_data, smtp_setup, smtp_transaction, starttls
from mailkeep.server.listener import Slot
from mailkeep.server.services import SHUTDOWN_ABORT_AFTER, Services, new_connection_id
from mailkeep.server.stream import TLS_CLOSE_LINGER

log = logging.getLogger("mailkeep.smtp")

# aiosmtpd logs every command line at INFO, AUTH payloads included (habit 8), and warns about
# its own deprecations on every login: only its errors reach our log.
logging.getLogger("mail.log").setLevel(logging.ERROR)

IDENT = "ESMTP mailkeep"
# RFC 5321 §4.5.3.1.4: 512 octets per command line; MAIL grows with SIZE= and SMTPUTF8.
COMMAND_SIZE_LIMIT = 512
MAIL_COMMAND_SIZE_LIMIT = 512 + 26 + 10
SHUTDOWN_REPLY = "421 4.3.2 Service shutting down, try again later"
_TLS_ACTIVE = object()  # stands in for aiosmtpd's SSLProtocol once we upgraded ourselves


def _tls_info(transport: asyncio.BaseTransport | None) -> TlsInfo | None:
    if transport is None:
        return None
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return None
    cipher = obj.cipher()
    version = obj.version() or "TLS"
    if cipher is None:
        return TlsInfo(version, "unknown", 0)
    return TlsInfo(version, cipher[0], int(cipher[2]))


class SmtpSession(SMTP):
    """One client connection to one SMTP connector (listener)."""

    def __init__(self, services: Services, listener: ListenerConfig,
                 tls_context: ssl.SSLContext, slot: Slot) -> None:
        cfg = services.config.submission
        self.services = services
        self.listener = listener
        self.slot = slot
        self.implicit_tls = listener.tls == "implicit"
        self.conn_id = new_connection_id()
        self.front_context = tls_context
        # Per-instance limits (aiosmtpd keeps these on the class and grows them on every EHLO).
        self.command_size_limits = collections.defaultdict(lambda: COMMAND_SIZE_LIMIT)
        # +1: RFC 5321 §4.5.2 transparency dot on top of 1000 octets per line. The exact limit
        # is checked on the unstuffed message in handle_DATA.
        self.line_length_limit = cfg.max_line_length + 1
        self.max_message_size = listener.max_message_size or cfg.max_message_size
        self.max_line_length = cfg.max_line_length
        self.starttls_offered = listener.tls == "starttls"
        # RFC 6409 §4.3: submission requires AUTH; a relay connector when it says so.
        self.auth_required = listener.auth == "required"
        self.rate_limiter = services.rate_limiters.get(listener.name)
        self.txn: smtp_transaction.Transaction | None = None
        # aiosmtpd's SMTP.__init__, without its per-connection introspection.
        smtp_setup.init_smtp(
            self, SmtpHandler(self),
            # DATA is read by our own smtp_DATA (server/smtp_data.py), with exact limits.
            data_size_limit=self.max_message_size,
            enable_SMTPUTF8=True,          # RFC 6531
            decode_data=False,             # 8BITMIME: keep the bytes as sent
            hostname=services.config.hostname,
            ident=IDENT,
            tls_context=tls_context if self.starttls_offered else None,
            # RFC 3207 §4: 530 before STARTTLS, where the connector demands TLS; the inbound
            # MX only offers it (RFC 3207 §4: a publicly referenced server must not require).
            require_starttls=self.starttls_offered and listener.protocol != "smtp",
            # Before AUTH the short login timeout; authenticated_session() lengthens it.
            timeout=min(cfg.idle_timeout, services.config.security.login_timeout)
            if listener.auth != "none" else cfg.idle_timeout,
            auth_required=self.auth_required,
            auth_require_tls=True,
            loop=asyncio.get_running_loop(),
        )
        if self.implicit_tls:
            # RFC 8314 §3.3: on 465 the whole connection is TLS, so AUTH is offered at once
            # (aiosmtpd only recognises TLS it negotiated itself through STARTTLS).
            self._auth_require_tls = False
        self.peer_ip = slot.address
        self.refused = False
        self.errors = 0
        self.messages = 0
        self.started = time.monotonic()
        self._last_input = self.started
        self.raw_replies = False
        # The lines of a multiline reply before its last (RFC 5321 §4.2.1: "250-..."), sent
        # with the last in one write: one TLS record and one send() per reply, not per line
        # (EHLO was 10 of each; a third of the daemon's CPU per submission session).
        self._reply_lines: list[bytes] = []
        self.closing = False
        self.tls: TlsInfo | None = None
        self.account: Account | None = None

    # -- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:  # never: our STARTTLS does not re-enter here
            super().connection_made(transport)
            return
        if self.services.stopping or self.slot.released:
            self.refused = True
            self.slot.release()
            # RFC 5321 §3.1: a server may answer 421 instead of the greeting and close.
            line = f"421 4.3.2 {self.hostname} service shutting down, try again later\r\n"
            cast(asyncio.WriteTransport, transport).write(line.encode())
            transport.close()
            return
        self.services.sessions.add(self)
        self.tls = _tls_info(transport)
        log.info("conn=%s open peer=%s listener=%s%s", self.conn_id, self.peer_ip,
                 self.listener.name, f" tls={self.tls.version}" if self.tls else "")
        super().connection_made(transport)
        if self.tls is not None and self.session is not None:
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}

    def eof_received(self) -> bool | None:
        # The client closed its side: close ours at once. (aiosmtpd keeps a plaintext
        # connection half-open, and when the client left before the greeting nothing ever
        # closed it: it sat in CLOSE-WAIT, holding its slot, until the idle timeout.)
        super().eof_received()
        return False

    def authenticated_session(self) -> None:
        """AUTH succeeded: from now on the RFC 5321 idle timeout applies, not the short
        login timeout."""
        self._timeout_duration = self.services.config.submission.idle_timeout
        self._reset_timeout()

    # -- the session as the daemon sees it (shutdown, load shedding) ------------------------

    @property
    def last_input(self) -> float:
        return self._last_input

    def sheddable(self) -> bool:
        return self.account is None and self.transport is not None \
            and not self.transport.is_closing()

    def shed(self) -> None:
        self.slot.release()  # at once: the new connection takes this place
        log.info("conn=%s shed: not logged in while the connection cap is reached",
                 self.conn_id)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.closing = True
        with contextlib.suppress(AttributeError, OSError, RuntimeError):
            cast(asyncio.WriteTransport, transport).write(
                f"421 4.7.0 {self.hostname} too many connections, try again later\r\n"
                .encode())
        transport.close()
        self._linger_then_abort()

    def _linger_then_abort(self) -> None:
        """After our last words on TLS, do not wait 30 s for the client's close_notify."""
        if self.tls is not None:
            asyncio.get_running_loop().call_later(TLS_CLOSE_LINGER, self.abort)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        # The idle timeout runs from the last bytes received, not from the last command
        # (Postfix smtpd_timeout does the same): a large DATA upload on a slow link is not idle.
        self._last_input = time.monotonic()
        self._reset_timeout()
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.services.sessions.discard(self)
        self.slot.release()
        log.info("conn=%s close peer=%s listener=%s tls=%s user=%s messages=%d errors=%d "
                 "duration=%.3fs", self.conn_id, self.peer_ip, self.listener.name,
                 self.tls.version if self.tls else "none",
                 self.account.name if self.account else "-", self.messages, self.errors,
                 time.monotonic() - self.started)
        super().connection_lost(error)

    def shutdown(self) -> None:
        """Daemon stopping: close now if idle, else after the transaction in flight."""
        transport = self.transport
        if self.in_transaction() or transport is None or transport.is_closing():
            return
        self.closing = True
        # The peer may have gone away while we were stopping; then there is no one to tell.
        with contextlib.suppress(AttributeError, OSError, RuntimeError):
            cast(asyncio.WriteTransport, transport).write(SHUTDOWN_REPLY.encode() + b"\r\n")
        transport.close()
        asyncio.get_running_loop().call_later(SHUTDOWN_ABORT_AFTER, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.slot.hang_up(self.transport)

    def in_transaction(self) -> bool:
        return self.txn is not None

    def _set_rset_state(self) -> None:
        """RSET, EHLO, STARTTLS and the end of DATA end the transaction (RFC 5321 §4.1.1)."""
        self.txn = None
        super()._set_rset_state()  # type: ignore[no-untyped-call]

    @property
    def helo_name(self) -> str:
        return (self.session.host_name if self.session is not None else None) or "unknown"

    @property
    def may_relay(self) -> bool:
        """May this session send to other domains? Submission (logged in, as required);
        a relay connector with may_relay; never the inbound MX."""
        return self.listener.may_relay

    # -- replies ---------------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if text.startswith("500 Line too long"):
            text = self._line_too_long()
        if not self.raw_replies:
            text = enhance(text)
        code = reply_code(text)
        # Replies may quote the client's own bytes (kept as surrogate escapes): escape them
        # rather than fail to encode, which would turn a refusal into an internal error;
        # control characters (ESC, BEL, BS...) are never echoed raw to a terminal either.
        data = printable(text).encode("utf-8", "backslashreplace")
        if data[3:4] == b"-":  # not the last line of its reply
            self._reply_lines.append(data + b"\r\n")
            return
        if self._reply_lines:
            data = b"".join(self._reply_lines) + data
            self._reply_lines.clear()
        await super().push(data)
        if code in (334, 354):  # the client's next input (AUTH, the message) follows at once
            quickack.ack_next_input(self.transport)
        if code >= 400 and not self.closing:
            self.errors += 1
            if self.errors >= self.services.config.submission.max_errors:
                # Postfix smtpd_hard_error_limit: a client that keeps failing is hung up on.
                log.warning("conn=%s too many errors (%d), closing", self.conn_id, self.errors)
                await self._close_with("421 4.7.0 Too many errors, closing connection")
                return
        if self.services.stopping and not self.in_transaction() and not self.closing \
                and code not in (221, 354, 334):
            await self._close_with(SHUTDOWN_REPLY)

    def _line_too_long(self) -> str:
        return (f"500 5.5.6 Line too long: at most {self.max_line_length} octets per line "
                "(RFC 5321 §4.5.3.1.6)")

    async def _close_with(self, reply: str) -> None:
        self.closing = True
        await super().push(reply)
        if self.transport is not None:
            self.transport.close()
            self._linger_then_abort()

    async def smtp_QUIT(self, arg: str) -> None:
        await super().smtp_QUIT(arg)
        if self.transport is not None and self.transport.is_closing():
            self._linger_then_abort()

    # -- commands --------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, made total: the stdlib parser under it raises
        IndexError or AttributeError on some junk ("x@", "a@["), which became a 451
        internal error with a traceback. Junk is a syntax error (501), not our fault."""
        try:
            return super()._getaddr(arg)
        except Exception:
            return None, None

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034 §3: the EHLO reply itself carries no enhanced codes.
        self.raw_replies = True
        self.command_size_limits.clear()
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self.raw_replies = False
            self.command_size_limits["MAIL"] = MAIL_COMMAND_SIZE_LIMIT

    async def smtp_AUTH(self, arg: str) -> None:
        if self.listener.auth == "none":
            # An anonymous connector (the inbound MX, an open application relay): no AUTH.
            await self.push("502 5.5.1 AUTH is not available on this port")
            return
        await super().smtp_AUTH(arg)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """RFC 5321 §4.1.1.2. Our own: aiosmtpd refuses the null sender <> (which every
        bounce uses), rejects RET/ENVID, and upper-cases parameter values (ENVID is
        case-sensitive xtext)."""
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        if self.txn is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        try:
            path = smtp_path.parse_mail_argument(arg or "", utf8=True)
            if "SMTPUTF8" not in path.params:
                path = smtp_path.parse_mail_argument(arg or "", utf8=False)
        except smtp_path.PathError as exc:
            await self.push(exc.reply)
            return
        self.txn, reply = smtp_transaction.mail(self, path)
        await self.push(reply)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        """RFC 5321 §4.1.1.3, with RFC 3461 NOTIFY and ORCPT kept per recipient."""
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        txn = self.txn
        if txn is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        try:
            path = smtp_path.parse_rcpt_argument(arg or "", utf8=txn.smtputf8)
        except smtp_path.PathError as exc:
            await self.push(exc.reply)
            return
        await self.push(await smtp_transaction.rcpt(self, txn, path))

    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if self.implicit_tls or self._tls_protocol is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        assert self.transport is not None
        try:
            await starttls.upgrade(self._reader, self._writer, self.front_context,
                                   self.services.config.tls.handshake_timeout,
                                   b"220 2.0.0 Ready to start TLS\r\n",
                                   metrics=self.services.metrics, listener=self.listener.name)
        except starttls.PipelinedPlaintext:
            log.warning("conn=%s plaintext pipelined behind STARTTLS: refused, closing",
                        self.conn_id)
            await self._close_with("554 5.5.1 Data pipelined behind STARTTLS refused")
            return
        except starttls.HandshakeFailed as exc:
            log.info("conn=%s TLS handshake failed: %s", self.conn_id, exc)
            self.closing = True
            if self.transport is not None:
                self.transport.close()
            return
        self.transport = self._writer.transport
        self._tls_protocol = _TLS_ACTIVE  # type: ignore[assignment]
        self.tls = _tls_info(self.transport)
        # RFC 3207 §4.2: discard all knowledge from before TLS; the client must EHLO again.
        assert self.session is not None
        self.session.host_name = None
        self.session.extended_smtp = False
        self.session.ssl = {"ssl_object": self.transport.get_extra_info("ssl_object")}
        self._set_rset_state()
        log.info("conn=%s starttls %s %s", self.conn_id, self.tls.version if self.tls else "?",
                 self.tls.cipher if self.tls else "?")

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """RFC 5321 §4.1.1.4, read by smtp_data.receive(): exact SIZE, the daemon-wide input
        budget, and the reply only after the final dot."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        txn = self.txn
        if txn is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not txn.recipients:
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        budget = self.services.input_budget
        result = await smtp_data.receive(self._reader, max_size=self.max_message_size,
                                         max_line=self.max_line_length, budget=budget)
        try:
            if result.outcome is smtp_data.DataOutcome.TRUNCATED:
                return  # the client went away; nothing to answer
            if result.outcome is smtp_data.DataOutcome.TOO_BIG:
                reply = smtp_transaction.refused(self, "size", "552 5.3.4 Message too big "
                                                 "for this server")
            elif result.outcome is smtp_data.DataOutcome.LINE_TOO_LONG:
                reply = smtp_transaction.refused(self, "line_too_long", self._line_too_long())
            elif result.outcome is smtp_data.DataOutcome.BUSY:
                log.warning("conn=%s DATA refused: %d octets of uploads held by all sessions",
                            self.conn_id, budget.held)
                # RFC 3463 X.3.1: the mail system is full (here: its memory for uploads).
                reply = smtp_transaction.refused(self, "busy", "452 4.3.1 Insufficient "
                                                 "system resources, try again later")
            else:
                reply = await smtp_transaction.data(self, txn, result.content)
        finally:
            result.release(budget)
            # The transaction is over before its reply goes out (a stopping daemon closes
            # the session right after it).
            self._set_rset_state()
        await self.push(reply)

    # -- AUTH (RFC 4954), verified off the loop ---------------------------------------------

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        """RFC 4954 §4: one "334" challenge and the client's base64 response.

        Replaces aiosmtpd's, which let an over-long response escape as an exception (a 451
        "internal error" for the client's mistake) and split it into stray commands."""
        raw = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (base64.b64encode(raw) if encode_to_b64 else raw))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._drain_line(exc.consumed)
            await self.push("500 5.5.6 Authentication response too long")
            return MISSING
        except asyncio.IncompleteReadError:
            return MISSING  # the client went away mid-exchange
        blob = line.strip()
        if blob == b"*":  # RFC 4954 §4: the client cancels
            await self.push("501 5.7.0 Authentication aborted")
            return MISSING
        try:
            return sasl.decode_base64(blob)
        except sasl.SaslError:
            await self.push("501 5.5.2 Cannot decode base64")
            return MISSING

    async def _drain_line(self, consumed: int) -> None:
        """Habit 6: stay in sync. Discard the rest of an over-long line before answering."""
        await self._reader.readexactly(consumed)
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
            assert isinstance(blob, bytes)
        else:
            try:
                # RFC 4954 §4: "=" is an empty initial response.
                blob = b"" if args[1] == "=" else sasl.decode_base64(args[1])
            except sasl.SaslError:
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        try:
            creds = sasl.parse_plain(blob)
        except sasl.SaslError as exc:
            await self.push(f"501 5.5.2 Malformed PLAIN response: {exc}")
            return AuthResult(success=False, handled=True)
        return await self._verify(creds.login, creds.password, creds.authzid)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        try:
            if len(args) == 1:
                raw = await self.challenge_auth("Username:")
                if raw is MISSING:
                    return AuthResult(success=False, handled=True)
                assert isinstance(raw, bytes)
            else:
                raw = sasl.decode_base64(args[1])
            login = sasl.parse_login_field(raw, "login")
            raw_pw = await self.challenge_auth("Password:")
            if raw_pw is MISSING:
                return AuthResult(success=False, handled=True)
            assert isinstance(raw_pw, bytes)
            password = sasl.parse_login_field(raw_pw, "password")
        except sasl.SaslError as exc:
            await self.push(f"501 5.5.2 Malformed LOGIN response: {exc}")
            return AuthResult(success=False, handled=True)
        return await self._verify(login, password, "")

    async def _verify(self, login: str, password: str, authzid: str) -> AuthResult:
        outcome = await auth.login(self.services, peer_ip=self.peer_ip,
                                   creds=sasl.Credentials(authzid, login, password),
                                   service=self.listener.protocol, mechanism="AUTH",
                                   conn_id=self.conn_id,
                                   required_groups=self.listener.auth_groups)
        if outcome.failure is auth.Failure.BLOCKED:
            await self.push("454 4.7.0 Too many failed logins from your address, "
                            "try again later")
            return AuthResult(success=False, handled=True)
        if outcome.failure is auth.Failure.UNAVAILABLE:
            # RFC 4954 §6: 454 4.7.0 Temporary authentication failure.
            await self.push("454 4.7.0 Temporary authentication failure, try again later")
            return AuthResult(success=False, handled=True)
        if outcome.account is None:
            return AuthResult(success=False, handled=False,
                              message="535 5.7.8 Authentication credentials invalid")
        self.account = outcome.account
        self.authenticated_session()
        return AuthResult(success=True, auth_data=outcome.account,
                          message="235 2.7.0 Authentication successful")


class SmtpHandler:
    """aiosmtpd's EHLO hook: the extensions this connector offers."""

    def __init__(self, session: SmtpSession) -> None:
        self.s = session

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        listener = self.s.listener
        # RFC 1870: advertise the real limit, not aiosmtpd's wire allowance.
        responses = [f"250-SIZE {self.s.max_message_size}" if r.startswith("250-SIZE ") else r
                     for r in responses]
        if listener.auth == "none":
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        # RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES, RFC 3461 DSN.
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN"]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        # Our fault, not the client's: log it with the connection id, answer generically.
        log.error("conn=%s internal error", self.s.conn_id, exc_info=error)
        return "451 4.3.0 Internal error, try again later"


def refusal_line(hostname: str, reason: str) -> bytes:
    """What a client refused at accept time is told (RFC 5321 §3.1: 421 instead of 220)."""
    return f"421 4.7.0 {hostname} {reason}, try again later\r\n".encode()


def session_factory(services: Services, listener: ListenerConfig,
                    context: ssl.SSLContext) -> Callable[[Slot], asyncio.Protocol]:
    def factory(slot: Slot) -> asyncio.Protocol:
        return SmtpSession(services, listener, context, slot)

    return factory
