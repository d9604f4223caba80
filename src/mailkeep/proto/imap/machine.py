"""The IMAP4rev1 server (RFC 3501) as a sans-IO state machine: framing, parsing, the
per-state command table, TLS and authentication dialogues, and the bad-command budget.

    m = ImapMachine(tls_active=True, starttls_offered=False)
    write(m.greeting())
    m.receive_data(bytes_from_socket)          # b"" means end of input
    while (ev := m.next_event()) is not NEED_DATA:
        Reply / AuthRequest / StartTls / Execute / Close   (see events.py)

Where the work is split (DESIGN.md: "a protocol machine never reaches into storage; it
asks, the driver answers"): IMAP has some twenty store-touching commands, each needing
several store calls (SELECT: snapshot + claim_recent; FETCH: one read per message; every
command in the selected state: a re-snapshot to report EXISTS/EXPUNGE/FETCH). One request
event per store call would make this module a hand-written coroutine scheduler. Instead
the machine does everything that is protocol and no storage: it frames input (receiver),
parses (grammar), checks the state table (parse, then validate, then execute: habit 2),
runs CAPABILITY / NOOP / LOGOUT / STARTTLS / LOGIN / AUTHENTICATE / NAMESPACE itself and
hands every other command to the driver as one `Execute` request. The driver's executor
(server/imap_commands.py) runs it against the store using the pure helpers here
(mailboxview.py for the session's sequence numbers, fetch.py for FETCH data, listing.py
for LIST patterns, render.py for bytes) and answers with `executed()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mailkeep.proto import sasl
from mailkeep.proto.imap import condstore, enable, extensions
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap import receiver as rx
from mailkeep.proto.imap.events import (
    NEED_DATA,
    PAUSED,
    AuthRequest,
    ClientId,
    Close,
    Event,
    Execute,
    Idle,
    IdleDone,
    Outcome,
    Reply,
    StartCompression,
    StartTls,
    State,
)
from mailkeep.proto.imap.grammar import (
    COMMAND_NAMES,
    Authenticate,
    CommandType,
    Enable,
    Login,
    ParseError,
    Search,
    parse_command,
)
from mailkeep.proto.imap.render import (
    continuation,
    continuation_data,
    tagged,
    untagged,
    untagged_status,
)
from mailkeep.proto.imap.session import (
    Authenticated,
    LoggedOut,
    NotAuthenticated,
    SessionState,
    account_of,
    enabled_of,
    state_of,
)

IMPLEMENTATION = "mailkeep"
# Dovecot imap CLIENT_MAX_BAD_COMMANDS: 20 BAD replies in a row end the session.
MAX_BAD_COMMANDS = 20
# RFC 7888 §5 (LITERAL-): 4096 octets is the largest non-synchronizing literal a client may
# send a LITERAL- server; before login nothing larger is needed (config.model has the
# configurable default with the same value).
UNAUTHENTICATED_MAX_LITERAL_OCTETS = 4096
MECHANISMS = ("PLAIN", "LOGIN")
HIERARCHY_DELIMITER = "."

# RFC 3501 §6.1-6.4: the commands valid in each state (habit 2: checked before dispatch).
_ANY = frozenset({"CAPABILITY", "NOOP", "LOGOUT",
                  "ID", "COMPRESS"})  # RFC 2971 §3.1, RFC 4978 §3 (see _cmd_compress)
_AUTHENTICATED = _ANY | {"SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
                         "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND",
                         "NAMESPACE",  # RFC 2342
                         "GETQUOTA", "GETQUOTAROOT"}  # RFC 9208
COMMANDS_BY_STATE: dict[State, frozenset[str]] = {
    State.NOT_AUTHENTICATED: _ANY | {"STARTTLS", "AUTHENTICATE", "LOGIN"},
    # RFC 2177 IDLE; RFC 5161 §3.1 ENABLE: "only valid in the authenticated state".
    State.AUTHENTICATED: _AUTHENTICATED | {"IDLE", "ENABLE"},
    State.SELECTED: _AUTHENTICATED | {"IDLE", "CHECK", "CLOSE", "EXPUNGE", "SEARCH", "FETCH",
                                      "STORE", "COPY", "UNSELECT",  # RFC 3691 UNSELECT
                                      "MOVE"},  # RFC 6851
    State.LOGOUT: frozenset(),
}
SUPPORTED = frozenset().union(*COMMANDS_BY_STATE.values())

# RFC 5530 response codes.
PRIVACYREQUIRED = "PRIVACYREQUIRED"
COMPRESSIONACTIVE = "COMPRESSIONACTIVE"
AUTHENTICATIONFAILED = "AUTHENTICATIONFAILED"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class _Sasl:
    tag: str
    mechanism: str
    login: str | None = None  # LOGIN mechanism: the user name, once given


def command_word(partial: bytes) -> str:
    """The command name of a partly received command ("a1 APPEND ..." -> "APPEND")."""
    words = partial.split(b" ", 2)
    if len(words) < 2:
        return ""
    word = words[1].split(b"\r", 1)[0].split(b"{", 1)[0]
    return word.decode("ascii", "replace").upper()


class ImapMachine:
    """`max_literal`: the largest literal once logged in (APPEND; other commands get
    `max_line`); `unauthenticated_max_literal`: the largest before login; `budget`: memory
    shared by all sessions for literals being held (reserved before "+", released when the
    command is done)."""

    def __init__(self, *, tls_active: bool, starttls_offered: bool,
                 max_line: int = rx.MAX_LINE_OCTETS, max_literal: int = rx.MAX_LITERAL_OCTETS,
                 unauthenticated_max_literal: int = UNAUTHENTICATED_MAX_LITERAL_OCTETS,
                 max_errors: int = MAX_BAD_COMMANDS,
                 budget: rx.LiteralBudget | None = None) -> None:
        self.tls_active = tls_active
        self.starttls_offered = starttls_offered
        self.max_errors = max_errors
        self.max_line = max_line
        self.max_literal = max_literal
        self.unauthenticated_max_literal = min(unauthenticated_max_literal, max_literal)
        self.budget = budget
        # Before login even the drain cap is small: a larger non-synchronizing literal
        # closes the connection instead of being read (RFC 7888 §4 lets us refuse it).
        self.receiver = rx.Receiver(max_line=max_line,
                                    max_literal=self.unauthenticated_max_literal,
                                    literal_limit=self._literal_limit, budget=budget)
        self._held = 0  # literal octets of the command being run (reserved in `budget`)
        self.session: SessionState = NotAuthenticated()
        self.errors = 0          # BAD replies in a row
        self.total_errors = 0
        self.commands = 0
        self.closed = False
        self._events: deque[Event] = deque()
        self._waiting: type | None = None
        self._executing: str | None = None  # the tag of the command the driver runs
        self._idling: str | None = None     # the tag of an IDLE in progress
        self._sasl: _Sasl | None = None
        self.compressing = False  # RFC 4978 COMPRESS=DEFLATE is active

    # -- input ----------------------------------------------------------------------------

    def greeting(self) -> bytes:
        return untagged_status("OK", f"{IMPLEMENTATION} IMAP4rev1 ready.",
                               "CAPABILITY " + " ".join(self.capabilities()))

    def receive_data(self, data: bytes) -> None:
        if not self.closed:
            self.receiver.feed(data)

    @property
    def pending_input(self) -> int:
        return self.receiver.pending_input

    def next_event(self) -> Event:
        while True:
            if self._events:
                event = self._events.popleft()
                if isinstance(event, Close):
                    self.closed = True
                    self.session = LoggedOut()
                    self._events.clear()
                return event
            if self.closed:
                return NEED_DATA
            if self._waiting is not None:
                return PAUSED
            ev = self.receiver.next_event()
            if ev is rx.NEED_DATA:
                return NEED_DATA
            if isinstance(ev, rx.Command):
                self._command(ev)
            elif isinstance(ev, rx.LiteralRequest):
                self._literal(ev)
            elif isinstance(ev, rx.Line):
                if self._idling is not None:
                    self._idle_line(ev.data)
                else:
                    self._sasl_step(ev.data)
            elif isinstance(ev, rx.FramingError):
                self._framing_error(ev)
            elif isinstance(ev, rx.EndOfInput):
                self._events.append(Close("connection closed by client"))
            else:  # receiver PAUSED: every LiteralRequest is decided at once
                raise RuntimeError(f"receiver paused unexpectedly: {ev!r}")

    # -- output helpers -------------------------------------------------------------------

    def _reply(self, data: bytes) -> None:
        self._events.append(Reply(data))

    def _tagged(self, tag: str | None, status: str, text: str,
                code: str | None = None) -> None:
        if tag is None:
            self._reply(untagged_status(status, text, code))
        else:
            self._reply(tagged(tag, status, text, code))
        self._count(status)

    def _count(self, status: str) -> None:
        if status != "BAD":
            self.errors = 0
            return
        self.errors += 1
        self.total_errors += 1
        if self.errors >= self.max_errors:
            self._reply(untagged_status("BYE", "Too many invalid commands."))
            self._events.append(Close("too many bad commands"))

    def capabilities(self) -> list[str]:
        # RFC 7888: LITERAL- before login (non-synchronizing literals of at most 4096
        # octets, which is all we accept then), LITERAL+ once logged in.
        literal = "LITERAL-" if self.state is State.NOT_AUTHENTICATED else "LITERAL+"
        caps = ["IMAP4rev1", literal, "SASL-IR", "NAMESPACE", "UNSELECT", "CHILDREN",
                "UIDPLUS", "IDLE", "ENABLE", "CONDSTORE", "QRESYNC", "ESEARCH"]
        caps += extensions.capabilities(self.state, max_literal=self.max_literal)
        if self.state is State.NOT_AUTHENTICATED:
            if not self.tls_active and self.starttls_offered:
                # RFC 3501 §6.2.1 / §6.2.3: STARTTLS, and LOGINDISABLED before TLS.
                caps += ["STARTTLS", "LOGINDISABLED"]
            if self._login_allowed():
                caps += [f"AUTH={m}" for m in MECHANISMS]
        return caps

    def _login_allowed(self) -> bool:
        # RFC 8314 §3 / RFC 3501 §6.2.3: credentials only inside TLS.
        return self.tls_active

    # -- framing events -------------------------------------------------------------------

    def _framing_error(self, ev: rx.FramingError) -> None:
        self._sasl = None
        if ev.refusal and not ev.fatal:
            # RFC 7889 §4: a refusal, not a syntax error.
            self._tagged(ev.tag, "NO", ev.message, ev.code)
        else:
            self._tagged(ev.tag, "BAD", ev.message, ev.code)
        if ev.fatal:
            self._events.append(Close("over-large non-synchronizing literal"))

    def _literal(self, ev: rx.LiteralRequest) -> None:
        """RFC 3501 §7.5: "+" to go ahead, or NO/BAD instead (the client then sends none)."""
        name = command_word(ev.partial)
        refusal: tuple[str, str, str | None] | None = None
        if ev.tag is None:
            refusal = ("BAD", "Missing or invalid tag.", None)
        elif name == "UID":
            refusal = None
        elif name not in COMMAND_NAMES or name not in SUPPORTED:
            refusal = ("BAD", "Unknown command.", None)
        elif name not in COMMANDS_BY_STATE[self.state]:
            refusal = ("BAD", f"{name} not allowed in the {self.state.value} state.", None)
        elif name in ("LOGIN", "AUTHENTICATE") and not self._login_allowed():
            refusal = ("NO", "Login only after STARTTLS.", PRIVACYREQUIRED)
        if refusal is None:
            self._reply(continuation("Ready for literal data"))
            self.receiver.accept_literal()
            return
        self.receiver.refuse_literal()
        self._tagged(ev.tag, *refusal)

    # -- commands -------------------------------------------------------------------------

    def _literal_limit(self, partial: bytes) -> int:
        """The largest literal the command being received may carry."""
        if self.state is State.NOT_AUTHENTICATED:
            return self.unauthenticated_max_literal
        if command_word(partial) == "APPEND":
            return self.max_literal  # the message itself
        # Any other command's literals are strings (SEARCH text, mailbox names): no larger
        # than a command line may be.
        return self.max_line

    def _release_held(self) -> None:
        if self._held and self.budget is not None:
            self.budget.release(self._held)
        self._held = 0

    def _command(self, ev: rx.Command) -> None:
        self._release_held()
        self._held = ev.held
        try:
            self._run_command(ev)
        finally:
            if self._waiting is None:
                self._release_held()

    def _run_command(self, ev: rx.Command) -> None:
        self.commands += 1
        utf8 = enable.UTF8_ACCEPT in enabled_of(self.session)
        try:
            command = parse_command(ev.data, utf8=utf8)  # RFC 6855 §3
        except ParseError as exc:
            self._tagged(exc.tag, exc.status, exc.message, exc.code)
            return
        if utf8 and isinstance(command, Search) and command.charset is not None:
            # RFC 6855 §3: after ENABLE UTF8=ACCEPT a SEARCH with a charset SHOULD be BAD.
            self._tagged(command.tag, "BAD", "No CHARSET in SEARCH after UTF8=ACCEPT.")
            return
        name = command.name
        if name not in SUPPORTED:
            self._tagged(command.tag, "BAD", f"{name} is not supported.")
            return
        if name not in COMMANDS_BY_STATE[self.state]:
            self._tagged(command.tag, "BAD", f"{name} not allowed in the {self.state.value} "
                                             "state.")
            return
        handler = MACHINE_COMMANDS.get(name)
        if handler is not None:
            handler(self, command)
        elif name == "NOOP" and self.state is not State.SELECTED:
            self._tagged(command.tag, "OK", "NOOP completed.")
        else:
            self._wait(Execute(command, self.session))

    @property
    def state(self) -> State:
        return state_of(self.session)

    @property
    def account(self) -> str | None:
        return account_of(self.session)

    def _wait(self, request: AuthRequest | StartTls | StartCompression | Execute) -> None:
        self._events.append(request)
        self._waiting = type(request)
        if isinstance(request, Execute):
            self._executing = request.command.tag

    def _cmd_idle(self, command: CommandType) -> None:
        """RFC 2177: "+ idling", then untagged updates as they happen until the client
        says DONE. The driver is told with an Idle event and watches the mailbox."""
        self._reply(continuation("idling"))
        self._idling = command.tag
        self.receiver.expect_line()
        self._events.append(Idle(command.tag))

    def _idle_line(self, line: bytes) -> None:
        tag, self._idling = self._idling, None
        assert tag is not None
        if line.strip().upper() == b"DONE":
            self._tagged(tag, "OK", "IDLE terminated.")
        else:
            # RFC 2177 §3: the only thing a client may send while idling is DONE.
            self._tagged(tag, "BAD", "Expected DONE to end IDLE.")
        self._events.append(IdleDone())

    @property
    def idling(self) -> bool:
        return self._idling is not None

    def _cmd_enable(self, command: CommandType) -> None:
        """RFC 5161: turn on what the session asks for and we know; list what was turned on
        (unknown names are ignored, RFC 5161 §3.1)."""
        assert isinstance(command, Enable)
        session = self.session
        assert isinstance(session, Authenticated)  # the state table admits ENABLE only there
        session.enabled, listed = condstore.enable(command.capabilities, session.enabled)
        self._reply(condstore.enabled_response(listed))
        self._tagged(command.tag, "OK", "ENABLE completed.")

    def _cmd_capability(self, command: CommandType) -> None:
        self._reply(untagged("CAPABILITY " + " ".join(self.capabilities())))
        self._tagged(command.tag, "OK", "CAPABILITY completed.")

    def _cmd_logout(self, command: CommandType) -> None:
        # RFC 3501 §6.1.3: BYE, then the tagged OK, then close.
        self._reply(untagged_status("BYE", f"{IMPLEMENTATION} logging out."))
        self._tagged(command.tag, "OK", "LOGOUT completed.")
        self._events.append(Close("logout"))

    def _cmd_namespace(self, command: CommandType) -> None:
        # RFC 2342: one personal namespace, no prefix, "." as delimiter.
        self._reply(untagged("NAMESPACE", [["", HIERARCHY_DELIMITER]], None, None))
        self._tagged(command.tag, "OK", "NAMESPACE completed.")

    def _cmd_id(self, command: CommandType) -> None:
        """RFC 2971: answer with our name and version; the driver logs the client's."""
        assert isinstance(command, ext.Id)
        self._events.append(ClientId(command.fields))
        self._reply(untagged("ID", *extensions.id_response()))
        self._tagged(command.tag, "OK", "ID completed.")

    def _cmd_compress(self, command: CommandType) -> None:
        """RFC 4978 COMPRESS DEFLATE: the tagged OK goes out uncompressed, everything after
        it (both ways) is compressed; the driver switches (StartCompression)."""
        assert isinstance(command, ext.Compress)
        if command.mechanism != "DEFLATE":
            self._tagged(command.tag, "BAD", "Unknown compression mechanism.")
        elif self.compressing:
            self._tagged(command.tag, "NO", "Compression is already active.",
                         COMPRESSIONACTIVE)  # RFC 4978 §3, RFC 5530 §3
        elif self.state is State.NOT_AUTHENTICATED:
            # RFC 4978 allows COMPRESS before login; we refuse it, as Dovecot does: the only
            # secrets then are credentials, and compressing them together with data an
            # attacker can inject leaks them through the compressed length (CRIME, RFC 7457
            # §2.6). After login the attacker would need the session itself.
            self._tagged(command.tag, "NO", "Compression only after login.")
        elif self.receiver.pending_input:
            # RFC 4978 §3: the client compresses from after the OK only, so anything sent
            # before it could not be read either way: refused, like STARTTLS (habit 9).
            self._tagged(command.tag, "BAD", "Commands pipelined behind COMPRESS refused.")
            self._events.append(Close("data pipelined behind COMPRESS"))
        else:
            self._wait(StartCompression(tagged(command.tag, "OK", "DEFLATE active.")))

    def _cmd_starttls(self, command: CommandType) -> None:
        if self.tls_active or not self.starttls_offered:
            self._tagged(command.tag, "BAD", "TLS is already active." if self.tls_active
                         else "STARTTLS is not available here.")
            return
        if self.receiver.pending_input:
            # RFC 3501 §6.2.1 + habit 9: plaintext pipelined behind STARTTLS never runs.
            self._tagged(command.tag, "BAD", "Commands pipelined behind STARTTLS refused.")
            self._events.append(Close("plaintext pipelined behind STARTTLS"))
            return
        self._wait(StartTls(tagged(command.tag, "OK", "Begin TLS negotiation now.")))

    def _cmd_login(self, command: CommandType) -> None:
        assert isinstance(command, Login)
        if not self._login_allowed():
            # RFC 3501 §6.2.3: LOGINDISABLED; RFC 5530 PRIVACYREQUIRED.
            self._tagged(command.tag, "NO", "Login only after STARTTLS.", PRIVACYREQUIRED)
            return
        self._wait(AuthRequest(command.tag, sasl.Credentials("", command.userid,
                                                             command.password), "LOGIN"))

    def _cmd_authenticate(self, command: CommandType) -> None:
        assert isinstance(command, Authenticate)
        if not self._login_allowed():
            self._tagged(command.tag, "NO", "Authentication only after STARTTLS.",
                         PRIVACYREQUIRED)
            return
        if command.mechanism not in MECHANISMS:
            self._tagged(command.tag, "NO", "Unsupported authentication mechanism.")
            return
        self._sasl = _Sasl(command.tag, command.mechanism)
        if command.initial_response is not None:  # RFC 4959 SASL-IR
            self._sasl_message(command.initial_response)
            return
        # RFC 3501 §6.2.2: an empty challenge for PLAIN; LOGIN asks for the user name.
        self._reply(continuation_data(b"" if command.mechanism == "PLAIN" else b"Username:"))
        self.receiver.expect_line()

    def _sasl_step(self, line: bytes) -> None:
        if self._sasl is None:  # a machine bug: no Line without expect_line()
            raise RuntimeError("SASL line without an AUTHENTICATE in progress")
        if line == b"*":
            tag, self._sasl = self._sasl.tag, None
            self._tagged(tag, "BAD", "AUTHENTICATE cancelled.")  # RFC 3501 §6.2.2
            return
        try:
            raw = sasl.decode_base64(line)
        except sasl.SaslError:
            tag, self._sasl = self._sasl.tag, None
            self._tagged(tag, "BAD", "Invalid base64 in the SASL response.")
            return
        self._sasl_message(raw)

    def _sasl_message(self, raw: bytes) -> None:
        state = self._sasl
        assert state is not None
        try:
            if state.mechanism == "PLAIN":
                creds = sasl.parse_plain(raw)
            elif state.login is None:
                state.login = sasl.parse_login_field(raw, "login")
                self._reply(continuation_data(b"Password:"))
                self.receiver.expect_line()
                return
            else:
                creds = sasl.Credentials("", state.login,
                                         sasl.parse_login_field(raw, "password"))
        except sasl.SaslError as exc:
            self._sasl = None
            self._tagged(state.tag, "BAD", f"Malformed {state.mechanism} response: {exc}.")
            return
        self._sasl = None
        self._wait(AuthRequest(state.tag, creds, state.mechanism))

    # -- answers from the driver ----------------------------------------------------------

    def _resume(self, expected: type) -> None:
        if self._waiting is not expected:
            raise RuntimeError(f"no {expected.__name__} outstanding")  # a driver bug
        self._waiting = None
        self._release_held()

    def release(self) -> None:
        """The session is over: give back what the command in flight held."""
        self._release_held()
        self.receiver.close()

    def auth_succeeded(self, tag: str, account: str) -> None:
        self._resume(AuthRequest)
        self.session = Authenticated(account)
        self.receiver.max_literal = self.max_literal
        self._tagged(tag, "OK", "Logged in.", "CAPABILITY " + " ".join(self.capabilities()))

    def auth_failed(self, tag: str, code: str | None, text: str) -> None:
        """code: AUTHENTICATIONFAILED (bad credentials), UNAVAILABLE (ours / limits)."""
        self._resume(AuthRequest)
        self._tagged(tag, "NO", text, code)

    def tls_started(self) -> None:
        """RFC 3501 §6.2.1: the client must ask for CAPABILITY again; nothing carries over."""
        self._resume(StartTls)
        self.tls_active = True
        self.errors = 0

    def compression_started(self) -> None:
        """RFC 4978: both directions are compressed from here on."""
        self._resume(StartCompression)
        self.compressing = True

    def tls_failed(self) -> None:
        self._resume(StartTls)
        self._events.append(Close("TLS handshake failed"))

    def executed(self, outcome: Outcome) -> None:
        """The executor ran the command (its untagged data went out already): render the
        tagged line, take the new session state if it changed, close if asked to (after an
        untagged BYE the executor wrote)."""
        tag = self._executing or "*"
        self._resume(Execute)
        self._executing = None
        if outcome.session is not None:
            self.session = outcome.session
        self._tagged(tag, outcome.status, outcome.text, outcome.code)
        if outcome.close is not None:
            self._events.append(Close(outcome.close))


# The commands the machine answers itself (habit 2: dispatch is a table). Every other
# command of the state table goes to the driver's executor as an Execute request, which
# dispatches through its own table (server/imap_commands.py HANDLERS).
MACHINE_COMMANDS: dict[str, Callable[[ImapMachine, CommandType], None]] = {
    "CAPABILITY": ImapMachine._cmd_capability,
    "LOGOUT": ImapMachine._cmd_logout,
    "NAMESPACE": ImapMachine._cmd_namespace,
    "STARTTLS": ImapMachine._cmd_starttls,
    "LOGIN": ImapMachine._cmd_login,
    "AUTHENTICATE": ImapMachine._cmd_authenticate,
    "IDLE": ImapMachine._cmd_idle,
    "ENABLE": ImapMachine._cmd_enable,
    "ID": ImapMachine._cmd_id,
    "COMPRESS": ImapMachine._cmd_compress,
}
