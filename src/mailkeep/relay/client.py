"""Deliver one message to one destination with aiosmtplib; one result per recipient.

The order of a session (RFC 5321 §3, §4.1.1): connect, greeting, EHLO (HELO when EHLO is
refused), STARTTLS per TLS policy and EHLO again (RFC 3207 §4.2), AUTH for a smarthost (only
inside TLS), MAIL with SIZE / BODY / SMTPUTF8 / DSN parameters, one RCPT per recipient, DATA.

Hosts are tried in order. The next host is tried when this one cannot take the message at all
(no connection, 4xx/5xx greeting, 4xx EHLO, TLS that the policy requires but fails, a lost
connection before DATA). Once a host has answered MAIL, its answers are final for this attempt:
5xx is permanent, 4xx is temporary, per recipient for RCPT, for all accepted ones for DATA.

The TLS promise: with `encrypt` or `verify` nothing after EHLO is ever sent in plaintext; with
`may` STARTTLS is used when offered and plaintext only when it is not (or, logged, after a
failed handshake). Credentials are never sent outside TLS, whatever the route says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from dataclasses import dataclass

import aiosmtplib

from mailkeep.relay.credentials import CredentialsError, load_credentials
from mailkeep.relay.dns import Resolver
from mailkeep.relay.envelope import (
    OutboundMessage,
    Recipient,
    mail_dsn_options,
    needs_smtputf8,
    rcpt_dsn_options,
)
from mailkeep.relay.mtasts import MtaSts
from mailkeep.relay.nexthop import (
    Destination,
    HopPlan,
    NextHops,
    RoutingFailure,
    Target,
    address_problem,
    plan,
)
from mailkeep.relay.results import (
    Delivered,
    PermanentFailure,
    RecipientResult,
    Reply,
    TemporaryFailure,
    failure,
)
from mailkeep.relay.routes import DeliveryConfig, SmarthostRoute, TlsPolicy
from mailkeep.relay.tlsclient import ClientContexts

log = logging.getLogger("mailkeep.relay")

# Connections per delivery. Postfix tries 5 addresses (smtp_mx_address_limit); 10 leaves room
# for MX hosts with both IPv6 and IPv4 addresses and for one plaintext retry under `may`.
MAX_ATTEMPTS = 10
# QUIT is a courtesy once the outcome is known: do not wait long for its reply.
QUIT_TIMEOUT = 5.0
# RFC 5321 §4.2.5: 421 means the server is closing the channel; treat it like a lost connection.
SERVICE_CLOSING = 421


@dataclass(frozen=True, slots=True)
class _NextHost:
    reply: Reply
    remote_host: str | None
    retry_plaintext: bool = False


@dataclass(frozen=True, slots=True)
class _Done:
    results: dict[str, RecipientResult]


_Outcome = _NextHost | _Done
_LOST = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, ConnectionError)


def _lost(target: Target, stage: str, exc: BaseException) -> Reply:
    # RFC 3463 X.4.2 "Bad connection".
    if isinstance(exc, TimeoutError):
        kind = "timed out"
    elif isinstance(exc, (ConnectionError, aiosmtplib.SMTPServerDisconnected)):
        kind = "connection lost"
    else:
        kind = "failed"
    return Reply.local(451, "4.4.2", f"{target}: {kind} {stage}: {exc}")


class OutboundClient:
    """Outbound delivery for the runner: `plan()` recipients, then `deliver()` each group."""

    def __init__(self, config: DeliveryConfig, *, resolver: Resolver | None = None,
                 mta_sts: MtaSts | None = None, contexts: ClientContexts | None = None) -> None:
        self.config = config
        self.resolver = resolver or Resolver(config.dns_servers, timeout=config.dns_timeout,
                                             ipv6=config.ipv6)
        if mta_sts is None and config.mta_sts:
            mta_sts = MtaSts(self.resolver, ca_file=config.ca_file)
        self.mta_sts = mta_sts
        self.hops = NextHops(config, self.resolver, mta_sts)
        self.contexts = contexts or ClientContexts()

    def plan(self, recipients: list[Recipient]
             ) -> tuple[list[Destination], list[RecipientResult]]:
        return plan(self.config, recipients)

    async def deliver(self, destination: Destination,
                      message: OutboundMessage) -> list[RecipientResult]:
        """Try the destination's hosts in turn; a result for every recipient, in order.

        Never raises for the network's or the peer's faults."""
        pending = list(destination.recipients)
        if message.sender and address_problem(message.sender):
            # RFC 3463 X.1.7 "Bad sender's mailbox address syntax".
            reply = Reply.local(553, "5.1.7", f"sender {message.sender!r} cannot be sent")
            return [PermanentFailure(r.address, reply, None) for r in pending]
        try:
            hops = await self.hops.resolve(destination)
        except RoutingFailure as exc:
            log.info("relay[%s] %s: %s", message.id, destination.name, exc.reply)
            return [failure(r.address, exc.reply, None) for r in pending]
        outcome = await self._try_hosts(hops, destination, message, pending)
        if isinstance(outcome, _Done):
            results = outcome.results
        else:
            # RFC 5321 §4.5.4.1: every host failed for now; the queue retries later.
            results = {r.address: TemporaryFailure(r.address, outcome.reply, outcome.remote_host)
                       for r in pending}
        ordered = [results[r.address] for r in pending]
        for result in ordered:
            log.info("relay[%s] %s: %s %s", message.id, result.recipient,
                     type(result).__name__, result.reply)
        return ordered

    async def _try_hosts(self, hops: HopPlan, destination: Destination,
                         message: OutboundMessage, pending: list[Recipient]) -> _Outcome:
        last: _NextHost | None = None
        attempts = 0
        async with contextlib.aclosing(hops.targets()) as targets:
            async for target in targets:
                plaintext = False
                while attempts < MAX_ATTEMPTS:
                    attempts += 1
                    outcome = await self._attempt(target, destination, hops.tls_policy,
                                                  message, pending, plaintext=plaintext)
                    if isinstance(outcome, _Done):
                        return outcome
                    last = outcome
                    log.info("relay[%s] %s: %s", message.id, destination.name, outcome.reply)
                    if not (outcome.retry_plaintext and not plaintext):
                        break
                    plaintext = True
                if attempts >= MAX_ATTEMPTS:
                    break
        if last is None:
            reply = hops.no_target_reply()
            return _Done({r.address: failure(r.address, reply, None) for r in pending})
        return last

    async def _connect(self, target: Target) -> socket.socket:
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)  # OSError when the family is missing
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (target.address, target.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def _attempt(self, target: Target, destination: Destination, policy: TlsPolicy,
                       message: OutboundMessage, pending: list[Recipient], *,
                       plaintext: bool) -> _Outcome:
        try:
            ctx = await self._context(destination, policy)
        except (ssl.SSLError, OSError) as exc:
            # RFC 3463 X.3.5 "System incorrectly configured": our CA file, not their fault.
            reply = Reply.local(451, "4.3.5", f"cannot load the CA certificates: {exc}")
            return _Done({r.address: TemporaryFailure(r.address, reply, None) for r in pending})
        try:
            sock = await self._connect(target)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            # RFC 3463 X.4.1 "No answer from host".
            return _NextHost(Reply.local(451, "4.4.1", f"{target}: cannot connect: {reason}"),
                             None)
        smtp = aiosmtplib.SMTP(hostname=target.host, sock=sock, use_tls=target.implicit_tls,
                               start_tls=False, tls_context=ctx,
                               timeout=self.config.command_timeout,
                               local_hostname=self.config.helo_name)
        session = _Session(self, smtp, target, destination=destination, policy=policy,
                           context=ctx, message=message, pending=pending)
        try:
            return await session.run(plaintext=plaintext)
        except (*_LOST, OSError, aiosmtplib.SMTPException) as exc:  # SSLError is an OSError
            session.broken = True
            return _NextHost(_lost(target, session.stage, exc), str(target))
        except asyncio.CancelledError:
            session.broken = True  # shutting down: no QUIT courtesy
            raise
        finally:
            await session.close()

    async def _context(self, destination: Destination, policy: TlsPolicy) -> ssl.SSLContext:
        route = destination.route
        ca_file = self.config.ca_file
        if isinstance(route, SmarthostRoute) and route.ca_file is not None:
            ca_file = route.ca_file  # a route's own CA (a provider's private CA) wins
        return await self.contexts.get(verify=policy == "verify", ca_file=ca_file)


class _Session:
    """One connection to one target, from greeting to QUIT."""

    def __init__(self, client: OutboundClient, smtp: aiosmtplib.SMTP, target: Target, *,
                 destination: Destination, policy: TlsPolicy, context: ssl.SSLContext,
                 message: OutboundMessage, pending: list[Recipient]) -> None:
        self.client = client
        self.context = context
        self.config = client.config
        self.smtp = smtp
        self.target = target
        self.where = str(target)
        self.destination = destination
        self.policy = policy
        self.message = message
        self.pending = pending
        self.stage = "before the greeting"
        self.tls: str | None = None
        self.log_id = message.id
        self.broken = False  # after a lost connection or failed handshake: no QUIT

    async def close(self) -> None:
        if self.smtp.is_connected and not self.broken:
            with contextlib.suppress(Exception):
                await self.smtp.quit(timeout=QUIT_TIMEOUT)
        self.smtp.close()

    def _all(self, reply: Reply, remote: bool = True) -> _Done:
        host = self.where if remote else None
        return _Done({r.address: failure(r.address, reply, host) for r in self.pending})

    def _tls_description(self, verified: bool) -> str | None:
        obj = self.smtp.get_transport_info("ssl_object")
        if obj is None:
            return None
        cipher = obj.cipher()
        name = cipher[0] if cipher else "?"
        return f"{obj.version()} {name}" + (" (verified)" if verified else "")

    async def run(self, *, plaintext: bool) -> _Outcome:
        smtp, target = self.smtp, self.target
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            # RFC 5321 §3.1: a 554 (or 4xx) greeting means no service here; try the next host.
            return _NextHost(Reply.from_smtp(exc.code, exc.message), self.where)
        except aiosmtplib.SMTPConnectTimeoutError:
            return _NextHost(Reply.local(451, "4.4.1", f"{self.where}: no greeting within "
                                         f"{self.config.command_timeout:g} s"), None)
        except aiosmtplib.SMTPConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                return _NextHost(Reply.local(451, "4.7.5", f"{self.where}: TLS handshake "
                                             f"failed: {_ssl_reason(exc.__cause__)}"), None)
            return _NextHost(Reply.local(451, "4.4.1", f"{self.where}: {exc}"), None)
        if target.implicit_tls:
            self.tls = self._tls_description(self.policy == "verify")
        self.stage = "after the greeting"

        outcome = await self._hello()
        if outcome is not None:
            return outcome
        outcome = await self._starttls(plaintext=plaintext)
        if outcome is not None:
            return outcome
        if self.policy != "may" and self.tls is None:
            # The invariant, checked where it matters: nothing below goes out in plaintext.
            return _NextHost(Reply.local(451, "4.7.10", f"{self.where}: TLS required by "
                                         f"policy {self.policy!r} but not in use"), None)
        outcome = await self._auth()
        if outcome is not None:
            return outcome
        return await self._transaction()

    async def _hello(self) -> _Outcome | None:
        smtp = self.smtp
        self.stage = "after EHLO"
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if exc.code >= 500 and exc.code != 554 and smtp.is_connected:
                # RFC 5321 §3.2: a server that does not know EHLO answers 500/502; use HELO.
                try:
                    await smtp.helo()
                except aiosmtplib.SMTPHeloError as helo_exc:
                    return _NextHost(Reply.from_smtp(helo_exc.code, helo_exc.message),
                                     self.where)
                return None
            return _NextHost(Reply.from_smtp(exc.code, exc.message), self.where)
        return None

    async def _starttls(self, *, plaintext: bool) -> _Outcome | None:
        smtp, route = self.smtp, self.destination.route
        if self.tls is not None:
            return None
        if isinstance(route, SmarthostRoute) and route.tls == "none":
            if self.policy != "may":
                return self._all(Reply.local(451, "4.7.10", f"route {route.name} has tls = "
                                             f'"none" but policy {self.policy!r} needs TLS'),
                                 remote=False)
            return None
        if plaintext:
            log.warning("relay[%s] %s: sending without TLS after a failed handshake "
                        "(policy may)", self.log_id, self.where)
            return None
        if not smtp.supports_extension("starttls"):
            if self.policy == "may":
                log.info("relay[%s] %s: STARTTLS not offered; sending in plaintext (policy "
                         "may)", self.log_id, self.where)
                return None
            # RFC 5248 X.7.10 "Encryption needed".
            return _NextHost(Reply.local(451, "4.7.10", f"{self.where} does not offer "
                                         f"STARTTLS; policy {self.policy!r} requires TLS"),
                             self.where)
        self.stage = "during STARTTLS"
        try:
            await smtp.starttls(server_hostname=self.target.host, tls_context=self.context)
        except aiosmtplib.SMTPResponseException as exc:
            reply = Reply.from_smtp(exc.code, exc.message)
            if self.policy == "may" and smtp.is_connected:
                # RFC 3207 §4: after a refused STARTTLS the session goes on unencrypted.
                log.info("relay[%s] %s: STARTTLS refused (%s); plaintext (policy may)",
                         self.log_id, self.where, reply)
                return None
            return _NextHost(reply, self.where)
        except (ssl.SSLError, *_LOST) as exc:
            self.broken = True
            reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else str(exc)
            reply = Reply.local(451, "4.7.5", f"{self.where}: TLS handshake failed: {reason}")
            if self.policy == "may":
                log.warning("relay[%s] %s: TLS handshake failed (%s); retrying without TLS",
                            self.log_id, self.where, reason)
                return _NextHost(reply, self.where, retry_plaintext=True)
            return _NextHost(reply, self.where)
        self.tls = self._tls_description(self.policy == "verify")
        self.stage = "after STARTTLS"
        # RFC 3207 §4.2: forget what was learnt before TLS and ask again.
        return await self._hello()

    async def _auth(self) -> _Outcome | None:
        route, smtp = self.destination.route, self.smtp
        if not isinstance(route, SmarthostRoute) or route.credentials_file is None:
            return None
        if self.tls is None:
            # RFC 4954 §4 leaves plaintext AUTH to policy; ours is never.
            return self._all(Reply.local(451, "4.7.10", f"refusing to send credentials to "
                                         f"{self.where} without TLS"), remote=False)
        try:
            creds = await load_credentials(route.credentials_file)
        except CredentialsError as exc:
            # RFC 3463 X.3.5 "System incorrectly configured".
            return self._all(Reply.local(451, "4.3.5", str(exc)), remote=False)
        methods = smtp.server_auth_methods
        self.stage = "during AUTH"
        try:
            if "plain" in methods:
                await smtp.auth_plain(creds.username, creds.password)
            elif "login" in methods:
                await smtp.auth_login(creds.username, creds.password)
            else:
                return self._all(Reply.local(451, "4.7.0", f"{self.where} offers no AUTH PLAIN "
                                             "or LOGIN"), remote=False)
        except aiosmtplib.SMTPAuthenticationError as exc:
            reply = Reply.from_smtp(exc.code, exc.message)
            if exc.code < 500:
                return _NextHost(reply, self.where)
            # Rejected credentials are our configuration's fault, not the recipients': keep the
            # mail queued (Postfix smtp_sasl_auth_soft_bounce) until someone fixes the file.
            log.error("relay[%s] %s: AUTH as %s rejected: %s", self.log_id, self.where,
                      creds.username, reply)
            return self._all(Reply.local(451, "4.7.8", f"{self.where}: authentication "
                                         f"rejected: {reply}"), remote=False)
        return None

    async def _transaction(self) -> _Outcome:
        smtp, message = self.smtp, self.message
        utf8 = needs_smtputf8(message, self.pending)
        if utf8 and not smtp.supports_extension("smtputf8"):
            # RFC 6531 §3.2 / RFC 5248: X.6.7 non-ASCII addresses not permitted, X.6.9 UTF-8
            # header message cannot be transferred.
            enhanced = "5.6.9" if message.smtputf8 and _ascii_envelope(message, self.pending) \
                else "5.6.7"
            return self._all(Reply.local(553, enhanced, f"{self.where} does not offer SMTPUTF8, "
                                         "which this message needs"), remote=False)
        eight_bit = message.needs_8bitmime()
        if eight_bit and not smtp.supports_extension("8bitmime"):
            # RFC 6152 §3: no 8-bit data to a server without 8BITMIME; we do not downgrade.
            # RFC 3463 X.6.3 "Conversion required but not supported".
            return self._all(Reply.local(554, "5.6.3", f"{self.where} does not offer 8BITMIME "
                                         "and the message has 8-bit data"), remote=False)
        options: list[str] = []
        if smtp.supports_extension("size"):
            limit = smtp.esmtp_extensions.get("size", "").strip()
            if limit.isdigit() and 0 < int(limit) < len(message.data):
                # RFC 1870 §6.1 ... §4: a fixed limit the message exceeds: 552 5.3.4.
                return self._all(Reply.local(552, "5.3.4", f"message of {len(message.data)} "
                                             f"bytes over {self.where}'s limit of {limit}"),
                                 remote=False)
            options.append(f"SIZE={len(message.data)}")  # RFC 1870 §6
        if eight_bit:
            options.append("BODY=8BITMIME")  # RFC 6152 §2
        if utf8:
            options.append("SMTPUTF8")  # RFC 6531 §3.4
        dsn = smtp.supports_extension("dsn")
        if dsn:
            options += mail_dsn_options(message)  # RFC 3461 §4.3, §4.4
        encoding = "utf-8" if utf8 else "ascii"

        self.stage = "after MAIL"
        try:
            await smtp.mail(message.sender, options=options, encoding=encoding)
        except aiosmtplib.SMTPSenderRefused as exc:
            reply = Reply.from_smtp(exc.code, exc.message)
            if exc.code == SERVICE_CLOSING:
                return _NextHost(reply, self.where)
            return self._all(reply)
        except ValueError as exc:  # aiosmtplib's check: cannot go on a command line
            return self._all(Reply.local(553, "5.1.7", f"sender address: {exc}"), remote=False)

        results: dict[str, RecipientResult] = {}
        accepted: list[Recipient] = []
        self.stage = "after RCPT"
        for rcpt in self.pending:
            rcpt_options = rcpt_dsn_options(rcpt) if dsn else []
            try:
                await smtp.rcpt(rcpt.address, options=rcpt_options, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                reply = Reply.from_smtp(exc.code, exc.message)
                if exc.code == SERVICE_CLOSING:
                    return _NextHost(reply, self.where)
                results[rcpt.address] = failure(rcpt.address, reply, self.where)
                continue
            except ValueError as exc:
                results[rcpt.address] = PermanentFailure(
                    rcpt.address, Reply.local(553, "5.1.3", f"recipient address: {exc}"), None)
                continue
            accepted.append(rcpt)
        if not accepted:
            return _Done(results)

        self.stage = "after DATA"
        try:
            response = await smtp.data(message.data, timeout=self.config.data_timeout)
        except aiosmtplib.SMTPDataError as exc:
            reply = Reply.from_smtp(exc.code, exc.message)
            for rcpt in accepted:
                results[rcpt.address] = failure(rcpt.address, reply, self.where)
            return _Done(results)
        except _LOST as exc:
            self.broken = True
            # The message may have arrived (RFC 1047): retry later, a duplicate beats a loss.
            reply = _lost(self.target, "during DATA; delivery unconfirmed", exc)
            for rcpt in accepted:
                results[rcpt.address] = TemporaryFailure(rcpt.address, reply, self.where)
            return _Done(results)
        reply = Reply.from_smtp(response.code, response.message)
        for rcpt in accepted:
            results[rcpt.address] = Delivered(rcpt.address, reply, self.where, self.tls, dsn)
        return _Done(results)


def _ascii_envelope(message: OutboundMessage, recipients: list[Recipient]) -> bool:
    return message.sender.isascii() and all(r.address.isascii() for r in recipients)


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc)
