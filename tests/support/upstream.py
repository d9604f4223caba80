"""Fake upstream SMTP servers for outbound delivery tests, built on aiosmtpd.

Each `Upstream` listens on 127.0.0.1 (ephemeral port) from a thread with its own event loop, so
it serves tests on any loop (asyncio or uvloop) and sync tests alike:

    with Upstream(starttls=server_context(ca, "mx1.partner.test"), dsn=True) as up:
        ...deliver to 127.0.0.1:up.port...
        assert up.messages[0].rcpt_tos == ["bob@partner.test"]
        assert up.messages[0].tls

Server-wide settings say what the server offers (STARTTLS or implicit TLS with a trustme
certificate, AUTH with given credentials, some mechanisms left out, DSN, SMTPUTF8, 8BITMIME,
SIZE). Per-connection `Behaviour`s say how it misbehaves: connection N gets behaviours[N]
(the last one repeats), so "first connection tempfails, second accepts" checks that a client
moved on to the next MX even when every MX name resolves to 127.0.0.1. Misbehaviours: a
non-220 greeting; a reply of choice to EHLO, STARTTLS, MAIL, a given RCPT or the end of DATA;
dropping the connection or stalling (never answering) at a stage.

Everything received is recorded with whether TLS was on at the time (`wire`), so tests can
assert from the server's side that nothing went out in plaintext.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

# A stall lasts until the server stops (its tasks are cancelled); this only bounds it.
STALL_SECONDS = 3600.0
STAGES = ("greeting", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "DATA-END")


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server SSLContext with a certificate from `ca` for the given names."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@dataclass
class Behaviour:
    greeting: str | None = None      # e.g. "421 4.3.2 busy": sent instead of 220, then close
    ehlo: str | None = None          # e.g. "502 5.5.1 no EHLO" (HELO still works)
    starttls: str | None = None      # e.g. "454 4.7.0 TLS not available"
    mail: str | None = None          # e.g. "451 4.3.0 later", "550 5.7.1 no"
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply; others accepted
    data: str | None = None          # reply after the message, e.g. "554 5.7.1 spam"
    drop: str | None = None          # a stage of STAGES: close the connection there
    stall: str | None = None         # a stage of STAGES: never answer there

    def __post_init__(self) -> None:
        for stage in (self.drop, self.stall):
            assert stage is None or stage in STAGES, stage


@dataclass
class Received:
    mail_from: str
    mail_params: list[str]
    rcpt_tos: list[str]
    rcpt_params: dict[str, list[str]]
    data: bytes
    tls: bool
    authenticated_as: str | None
    connection: int


class Upstream:
    host = "127.0.0.1"

    def __init__(self, *behaviours: Behaviour, starttls: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None,
                 auth: tuple[str, str] | None = None, auth_in_plaintext: bool = False,
                 auth_exclude: tuple[str, ...] = (),
                 dsn: bool = False, smtputf8: bool = True, eightbitmime: bool = True,
                 size: int | None = None, hostname: str = "upstream.test") -> None:
        self.behaviours = list(behaviours) or [Behaviour()]
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.auth_in_plaintext = auth_in_plaintext
        self.auth_exclude = auth_exclude
        self.dsn = dsn
        self.smtputf8 = smtputf8
        self.eightbitmime = eightbitmime
        self.size = size
        self.hostname = hostname
        self.port = 0
        self.connections = 0
        self.messages: list[Received] = []
        self.wire: list[tuple[int, bool, bytes]] = []   # (connection, tls on, bytes)
        self.auth_commands: list[tuple[str, bool]] = []  # (mechanism, tls on) per AUTH sent
        self.auth_attempts: list[tuple[str, str, bool]] = []  # (mechanism, login, tls on)
        self.sni: list[str | None] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sessions: list[_FakeSMTP] = []

    # -- what tests read ----------------------------------------------------------------------

    def received(self, *, tls: bool | None = None) -> bytes:
        """Everything received (on every connection), only while TLS was on/off if given."""
        return b"".join(data for _, on, data in self.wire if tls is None or on == tls)

    def commands(self, *, tls: bool | None = None) -> list[str]:
        """Received lines (message text included), decoded leniently."""
        return self.received(tls=tls).decode("utf-8", "replace").splitlines()

    def behaviour(self, connection: int) -> Behaviour:
        return self.behaviours[min(connection, len(self.behaviours) - 1)]

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Upstream:
        self._thread = threading.Thread(target=self._run, name="upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("upstream did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._shutdown)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            if self.starttls is not None:
                self._sni_hook(self.starttls)
            if self.implicit_tls is not None:
                self._sni_hook(self.implicit_tls)
            self._server = loop.run_until_complete(loop.create_server(
                self._factory, self.host, 0, ssl=self.implicit_tls))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None
        if self._server is not None:
            self._server.close()
        for fake in self._sessions:
            fake.drop()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_later(0.05, self._loop.stop)

    def _sni_hook(self, ctx: ssl.SSLContext) -> None:
        def callback(_obj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
            self.sni.append(name)
        ctx.sni_callback = callback

    def _factory(self) -> SMTP:
        number = self.connections
        self.connections += 1
        fake = _FakeSMTP(self, number)
        self._sessions.append(fake)
        return fake

    # -- aiosmtpd hooks -----------------------------------------------------------------------

    def authenticate(self, server: _FakeSMTP, mechanism: str, data: Any) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = data.login.decode("utf-8", "replace")
        self.auth_attempts.append((mechanism, login, server.tls_on))
        ok = self.auth is not None and (login, data.password.decode("utf-8", "replace")) \
            == self.auth
        # handled=False: aiosmtpd sends the 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)


class _Handler:
    def __init__(self, upstream: Upstream, server: _FakeSMTP) -> None:
        self.up = upstream
        self.server = server

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        up = self.up
        session.host_name = hostname  # the 5-argument hook owns this (aiosmtpd)
        kept = []
        for line in responses:
            word = line[4:].split(" ")[0].upper()
            if (word == "SMTPUTF8" and not up.smtputf8) or (
                    word == "8BITMIME" and not up.eightbitmime) or word == "SIZE":
                continue
            if word == "AUTH" and up.auth is None:
                continue
            kept.append(line)
        extra = []
        if up.dsn:
            extra.append("250-DSN")
        if up.size is not None:
            extra.append(f"250-SIZE {up.size}")
        return [*kept[:-1], *extra, kept[-1]]

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self.server.behaviour.rcpt.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fake = self.server
        b = fake.behaviour
        if b.stall == "DATA-END":
            await asyncio.sleep(STALL_SECONDS)
        if b.drop == "DATA-END":
            fake.drop()
            return "421 4.4.2 dropped"
        if b.data is not None:
            return b.data
        raw = envelope.original_content
        self.up.messages.append(Received(
            mail_from=fake.mail_from, mail_params=list(fake.mail_params),
            rcpt_tos=list(envelope.rcpt_tos), rcpt_params=dict(fake.rcpt_params),
            data=raw if isinstance(raw, bytes) else b"", tls=fake.tls_on,
            authenticated_as=fake.authenticated_login, connection=fake.number))
        return "250 2.0.0 queued as FAKE"


class _FakeSMTP(SMTP):
    def __init__(self, upstream: Upstream, number: int) -> None:
        self.up = upstream
        self.number = number
        self.behaviour = upstream.behaviour(number)
        self.mail_from = ""
        self.mail_params: list[str] = []
        self.rcpt_params: dict[str, list[str]] = {}
        self.authenticated_login: str | None = None
        implicit = upstream.implicit_tls is not None
        super().__init__(
            _Handler(upstream, self), hostname=upstream.hostname,
            tls_context=upstream.starttls, require_starttls=False,
            authenticator=self._authenticator, auth_required=upstream.auth is not None,
            # aiosmtpd does not count implicit TLS as TLS for AUTH; the whole session is TLS.
            auth_require_tls=not (upstream.auth_in_plaintext or implicit),
            auth_exclude_mechanism=list(upstream.auth_exclude),
            enable_SMTPUTF8=upstream.smtputf8, decode_data=False,
            loop=asyncio.get_running_loop())

    @property
    def tls_on(self) -> bool:
        return self.up.implicit_tls is not None or self._tls_protocol is not None

    def _authenticator(self, server: SMTP, session: Session, envelope: Envelope,
                       mechanism: str, auth_data: Any) -> AuthResult:
        result = self.up.authenticate(self, mechanism, auth_data)
        if result.success:
            self.authenticated_login = str(result.auth_data)
        return result

    def data_received(self, data: bytes) -> None:
        self.up.wire.append((self.number, self.tls_on, data))
        super().data_received(data)

    def drop(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _misbehave(self, stage: str) -> bool:
        """Apply this connection's drop/stall at `stage`; True when the command is handled."""
        b = self.behaviour
        if b.stall == stage:
            await asyncio.sleep(STALL_SECONDS)
            return True
        if b.drop == stage:
            self.drop()
            return True
        return False

    async def _handle_client(self) -> None:
        b = self.behaviour
        if await self._misbehave("greeting"):
            return
        if b.greeting is not None:
            await self.push(b.greeting)
            self.drop()
            return
        await super()._handle_client()

    async def smtp_EHLO(self, hostname: str) -> None:
        if await self._misbehave("EHLO"):
            return
        if self.behaviour.ehlo is not None:
            await self.push(self.behaviour.ehlo)
            return
        await super().smtp_EHLO(hostname)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if await self._misbehave("STARTTLS"):
            return
        if self.behaviour.starttls is not None:
            await self.push(self.behaviour.starttls)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        self.up.auth_commands.append(((arg or "").split(" ", 1)[0].upper(), self.tls_on))
        if await self._misbehave("AUTH"):
            return
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self._misbehave("MAIL"):
            return
        if self.behaviour.mail is not None:
            await self.push(self.behaviour.mail)
            return
        if arg is None:
            await super().smtp_MAIL(arg)
            return
        address, params = _split_params(arg, "FROM:")
        dsn = [p for p in params if p.split("=")[0].upper() in ("RET", "ENVID")]
        if dsn and not self.up.dsn:
            await self.push("555 5.5.4 DSN parameters not offered here")
            return
        self.mail_from = address
        self.mail_params = params
        # aiosmtpd refuses the null reverse-path; stand in for it (the record keeps "").
        stand_in = "<null-sender@invalid>" if address == "" else f"<{address}>"
        rest = [p for p in params if p not in dsn]
        await super().smtp_MAIL(" ".join([f"FROM:{stand_in}", *rest]))

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self._misbehave("RCPT"):
            return
        if arg is None:
            await super().smtp_RCPT(arg)
            return
        address, params = _split_params(arg, "TO:")
        dsn = [p for p in params if p.split("=")[0].upper() in ("NOTIFY", "ORCPT")]
        if dsn and not self.up.dsn:
            await self.push("555 5.5.4 DSN parameters not offered here")
            return
        self.rcpt_params[address] = params
        await super().smtp_RCPT(" ".join([f"TO:<{address}>", *(p for p in params
                                                                if p not in dsn)]))

    async def smtp_DATA(self, arg: str) -> None:
        if await self._misbehave("DATA"):
            return
        await super().smtp_DATA(arg)


def _split_params(arg: str, keyword: str) -> tuple[str, list[str]]:
    """("bob@x", ["NOTIFY=..."]) from "TO:<bob@x> NOTIFY=...", case kept as sent."""
    text = arg.strip()
    if text.upper().startswith(keyword):
        text = text[len(keyword):].strip()
    if text.startswith("<"):
        end = text.find(">")
        address, rest = text[1:end], text[end + 1:]
    else:
        address, _, rest = text.partition(" ")
    return address, rest.split()


@dataclass
class Upstreams:
    """Several upstreams stopped together (a fixture's convenience)."""

    started: list[Upstream] = field(default_factory=list)

    def __call__(self, *behaviours: Behaviour, **kwargs: Any) -> Upstream:
        up = Upstream(*behaviours, **kwargs).start()
        self.started.append(up)
        return up

    def stop(self) -> None:
        for up in self.started:
            up.stop()


def upstreams() -> Iterator[Upstreams]:
    """Body of a pytest fixture: `yield from upstreams()`."""
    group = Upstreams()
    try:
        yield group
    finally:
        group.stop()
