"""The POP3 server as a sans-IO state machine (RFC 1939, RFC 2449, RFC 5034, RFC 2595).

    m = Pop3Machine(tls_active=True, starttls_offered=False)
    write(m.greeting())
    m.receive_data(bytes_from_socket)         # b"" means end of input
    while (ev := m.next_event()) is not NEED_DATA: ...   # Reply / requests / Close / PAUSED

Parse, then validate against the state table, then execute (DESIGN.md habit 2). Requests
(AuthRequest, StartTls, Retrieve, Update) pause the machine until the driver answers; bytes
pipelined meanwhile stay buffered and are handled in order afterwards (RFC 2449 PIPELINING).
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Iterable, Sequence
from enum import Enum

from mailkeep.proto import sasl
from mailkeep.proto.pop3.events import (
    NEED_DATA,
    PAUSED,
    AuthRequest,
    Close,
    Entry,
    Event,
    Reply,
    Retrieve,
    StartTls,
    Update,
)

# RFC 2449 §4 allows commands of 255 octets incl. CRLF, and RFC 5034 §4 exempts SASL
# responses from any limit (a PLAIN response with three 255-octet fields is ~1 KB of base64).
# DEVIATION (RFC 2449 §4): like Dovecot (pop3 client.c MAX_INBUF_SIZE 2048) we accept lines
# up to 2048 octets incl. CRLF; longer lines are drained to their end and refused.
MAX_LINE_OCTETS = 2048
# Dovecot pop3 client.c CLIENT_MAX_BAD_COMMANDS: 20 failed commands in a row close the session.
MAX_BAD_COMMANDS = 20
# RFC 1939 message numbers and TOP line counts: digits; 10 bound them without a bignum parse.
_NUMBER = re.compile(r"[0-9]{1,10}")
IMPLEMENTATION = "mailkeep"
MECHANISMS = ("PLAIN", "LOGIN")


class State(Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


# RFC 1939 §§4-6 (+ RFC 2449 CAPA, RFC 5034 AUTH, RFC 2595 STLS): allowed commands per state.
# APOP is deliberately absent: it needs passwords stored in plaintext on the server.
COMMANDS_BY_STATE: dict[State, frozenset[str]] = {
    State.AUTHORIZATION: frozenset({"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT"}),
    State.TRANSACTION: frozenset({"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP",
                                  "UIDL", "CAPA"}),
    State.UPDATE: frozenset(),
}
KNOWN_COMMANDS = frozenset().union(*COMMANDS_BY_STATE.values())

# RFC 2449 §8 and RFC 3206 response codes.
IN_USE = "[IN-USE]"
AUTH = "[AUTH]"
SYS_TEMP = "[SYS/TEMP]"
SYS_PERM = "[SYS/PERM]"

PLAINTEXT_REFUSED = ("-ERR [AUTH] Plaintext authentication disallowed on non-secure "
                     "(SSL/TLS) connections.")


def multiline(first: str, lines: Iterable[str]) -> bytes:
    """RFC 1939 §3: "+OK ..." CRLF, byte-stuffed lines, "." CRLF."""
    out = [first]
    out += [("." + line) if line.startswith(".") else line for line in lines]
    out.append(".")
    return ("\r\n".join(out) + "\r\n").encode("utf-8")


class Pop3Machine:
    def __init__(self, *, tls_active: bool, starttls_offered: bool,
                 max_line: int = MAX_LINE_OCTETS, max_errors: int = MAX_BAD_COMMANDS) -> None:
        self.tls_active = tls_active
        self.starttls_offered = starttls_offered
        self.max_line = max_line
        self.max_errors = max_errors
        self.state = State.AUTHORIZATION
        self.errors = 0           # failed commands in a row
        self.total_errors = 0
        self.closed = False
        self._buffer = bytearray()
        self._scanned = 0         # no LF before this offset of _buffer
        self._discarding = False  # inside an over-long line: drop bytes up to its LF
        self._eof = False
        self._events: deque[Event] = deque()
        self._waiting: type | None = None
        self._user: str | None = None
        self._sasl: tuple[str, str | None] | None = None  # (mechanism, LOGIN name so far)
        self._entries: list[Entry] = []
        self._deleted: set[int] = set()  # 0-based indexes marked by DELE

    # -- input ----------------------------------------------------------------------------

    def greeting(self) -> bytes:
        # RFC 1939 §4: no APOP timestamp, since APOP is not offered.
        return f"+OK {IMPLEMENTATION} ready.\r\n".encode()

    def receive_data(self, data: bytes) -> None:
        if self.closed:
            return
        if not data:
            self._eof = True
            return
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return
            data = data[end + 1:]
            self._discarding = False
            self._refuse_line_too_long()
        self._buffer += data

    @property
    def pending_input(self) -> int:
        """Bytes received and not yet handled (STLS must find none: RFC 2595 §4, habit 9)."""
        return len(self._buffer)

    def next_event(self) -> Event:
        while True:
            if self._events:
                event = self._events.popleft()
                if isinstance(event, Close):
                    self.closed = True
                    self._events.clear()
                    self._buffer.clear()
                return event
            if self.closed:
                return NEED_DATA
            if self._waiting is not None:
                return PAUSED
            line = self._next_line()
            if line is None:
                if self._eof:
                    self._events.append(Close("connection closed by client"))
                    continue
                return NEED_DATA
            if line:
                self._handle_line(line)

    def _next_line(self) -> bytes | None:
        """The next complete line; None: need more bytes; b"": a line was refused."""
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) >= self.max_line:
                # Habit 6: drain the over-long line first, answer at its end.
                self._buffer.clear()
                self._scanned = 0
                self._discarding = True
            return None
        line = bytes(self._buffer[:end + 1])
        del self._buffer[:end + 1]
        self._scanned = 0
        if len(line) > self.max_line:
            self._refuse_line_too_long()
            return b""
        return line

    def _refuse_line_too_long(self) -> None:
        self._sasl = None
        self._error(f"-ERR Line too long (at most {self.max_line} octets).")

    # -- output helpers -------------------------------------------------------------------

    def _ok(self, text: str) -> None:
        self.errors = 0
        self._events.append(Reply(f"+OK {text}\r\n".encode() if text else b"+OK\r\n"))

    def _error(self, line: str) -> None:
        self.errors += 1
        self.total_errors += 1
        self._events.append(Reply(line.encode("utf-8") + b"\r\n"))
        if self.errors >= self.max_errors:
            self._events.append(Reply(b"-ERR Too many bad commands, closing.\r\n"))
            self._events.append(Close("too many bad commands"))

    def _multi(self, first: str, lines: Iterable[str]) -> None:
        self.errors = 0
        self._events.append(Reply(multiline(f"+OK {first}" if first else "+OK", lines)))

    # -- dispatch -------------------------------------------------------------------------

    def _handle_line(self, raw: bytes) -> None:
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]  # bare LF accepted (Dovecot)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._sasl = None
            self._error("-ERR Invalid characters in command (UTF-8 expected).")
            return
        if "\0" in line or "\r" in line:
            self._sasl = None
            self._error("-ERR Invalid characters in command.")
            return
        if self._sasl is not None:
            self._sasl_step(line)
            return
        name, _, arg = line.partition(" ")
        name = name.upper()
        if name not in KNOWN_COMMANDS:
            self._error("-ERR Unknown command.")
            return
        if name not in COMMANDS_BY_STATE[self.state]:
            self._error(f"-ERR {name} not allowed in the {self.state.value} state.")
            return
        getattr(self, f"_cmd_{name.lower()}")(arg)

    def _login_allowed(self) -> bool:
        # RFC 2595 §2.3 / RFC 8314 §3: credentials only inside TLS.
        return self.tls_active

    def capabilities(self) -> list[str]:
        """RFC 2449 §6 capability lines for the current state and TLS status."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION and self._login_allowed():
            caps += ["USER", "SASL " + " ".join(MECHANISMS)]
        if self.state is State.AUTHORIZATION and self.starttls_offered and not self.tls_active:
            caps.append("STLS")  # RFC 2595 §4
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return caps

    def _cmd_capa(self, arg: str) -> None:
        if arg:
            self._error("-ERR CAPA takes no arguments.")
            return
        self._multi("Capability list follows", self.capabilities())

    def _cmd_quit(self, arg: str) -> None:
        if self.state is State.AUTHORIZATION:
            self._ok("Logging out.")  # RFC 1939 §4: QUIT here does not enter UPDATE
            self._events.append(Close("quit"))
            return
        self.state = State.UPDATE
        self._wait(Update(tuple(self._entries[i].key for i in sorted(self._deleted))))

    def _wait(self, request: AuthRequest | StartTls | Retrieve | Update) -> None:
        self._events.append(request)
        self._waiting = type(request)

    # -- AUTHORIZATION: STLS, USER/PASS, AUTH -----------------------------------------------

    def _cmd_stls(self, arg: str) -> None:
        if not self.starttls_offered or self.tls_active:
            self._error("-ERR TLS is already active." if self.tls_active
                        else "-ERR STLS not available here.")
            return
        if arg:
            self._error("-ERR STLS takes no arguments.")
            return
        if self._buffer or self._eof:
            # RFC 2595 §4 + habit 9: plaintext pipelined behind STLS is never executed.
            self._events.append(Reply(b"-ERR [SYS/PERM] Commands pipelined behind STLS refused."
                                      b"\r\n"))
            self._events.append(Close("plaintext pipelined behind STLS"))
            return
        self._wait(StartTls(b"+OK Begin TLS negotiation.\r\n"))

    def _cmd_user(self, arg: str) -> None:
        if not self._login_allowed():
            self._error(PLAINTEXT_REFUSED)
            return
        if not arg.strip():
            self._error("-ERR USER needs a name.")
            return
        self._user = arg.strip()
        self._ok("Send your password.")

    def _cmd_pass(self, arg: str) -> None:
        if not self._login_allowed():
            self._error(PLAINTEXT_REFUSED)
            return
        user, self._user = self._user, None
        if user is None:
            self._error("-ERR No user name given (USER first).")
            return
        if not arg:
            self._error("-ERR PASS needs a password.")
            return
        # RFC 1939 §7: the password is the rest of the line; it may contain spaces.
        self._wait(AuthRequest(sasl.Credentials("", user, arg), "USER"))

    def _cmd_auth(self, arg: str) -> None:
        if not self._login_allowed():
            self._error(PLAINTEXT_REFUSED)
            return
        parts = arg.split()
        if not parts:
            # Not in RFC 5034, but RFC 1734 clients probe with a bare AUTH (Dovecot answers).
            self._multi("", MECHANISMS)
            return
        if len(parts) > 2:
            self._error("-ERR Syntax: AUTH mechanism [initial-response].")
            return
        mechanism = parts[0].upper()
        if mechanism not in MECHANISMS:
            self._error("-ERR Unsupported authentication mechanism.")
            return
        self._sasl = (mechanism, None)
        if len(parts) == 1:
            # RFC 5034 §4: an empty challenge for PLAIN; LOGIN asks for the user name.
            self._events.append(Reply(b"+ \r\n" if mechanism == "PLAIN"
                                      else b"+ VXNlcm5hbWU6\r\n"))
            return
        # RFC 5034 §4: "=" is an empty initial response.
        self._sasl_step("" if parts[1] == "=" else parts[1])

    def _sasl_step(self, line: str) -> None:
        assert self._sasl is not None
        mechanism, login = self._sasl
        if line == "*":
            self._sasl = None
            self._error("-ERR Authentication cancelled.")  # RFC 5034 §4
            return
        try:
            raw = sasl.decode_base64(line)
            if mechanism == "PLAIN":
                creds = sasl.parse_plain(raw)
            elif login is None:
                self._sasl = (mechanism, sasl.parse_login_field(raw, "login"))
                self._events.append(Reply(b"+ " + base64.b64encode(b"Password:") + b"\r\n"))
                return
            else:
                creds = sasl.Credentials("", login, sasl.parse_login_field(raw, "password"))
        except sasl.SaslError as exc:
            self._sasl = None
            self._error(f"-ERR Malformed {mechanism} response: {exc}.")
            return
        self._sasl = None
        self._wait(AuthRequest(creds, mechanism))

    # -- TRANSACTION ------------------------------------------------------------------------

    def _live(self) -> list[tuple[int, Entry]]:
        return [(i + 1, e) for i, e in enumerate(self._entries) if i not in self._deleted]

    def _message(self, arg: str) -> tuple[int, Entry] | None:
        """RFC 1939: a message-number argument that must not refer to a deleted message."""
        if not _NUMBER.fullmatch(arg):
            self._error("-ERR Invalid message number.")
            return None
        number = int(arg)
        if not 1 <= number <= len(self._entries):
            self._error(f"-ERR There is no message {number}.")
            return None
        if number - 1 in self._deleted:
            self._error(f"-ERR Message {number} is deleted.")
            return None
        return number, self._entries[number - 1]

    def _summary(self) -> str:
        live = self._live()
        return f"{len(live)} messages ({sum(e.size for _, e in live)} octets)"

    def _cmd_stat(self, arg: str) -> None:
        if arg:
            self._error("-ERR STAT takes no arguments.")
            return
        live = self._live()
        self._ok(f"{len(live)} {sum(e.size for _, e in live)}")  # RFC 1939 §5 drop listing

    def _list_like(self, arg: str, value: str) -> None:
        args = arg.split()
        if len(args) > 1:
            self._error("-ERR Too many arguments.")
            return
        if args:
            found = self._message(args[0])
            if found is not None:
                number, entry = found
                self._ok(f"{number} {getattr(entry, value)}")
            return
        self._multi(self._summary(), (f"{n} {getattr(e, value)}" for n, e in self._live()))

    def _cmd_list(self, arg: str) -> None:
        self._list_like(arg, "size")

    def _cmd_uidl(self, arg: str) -> None:
        self._list_like(arg, "uidl")

    def _cmd_retr(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 1:
            self._error("-ERR Syntax: RETR message-number.")
            return
        found = self._message(args[0])
        if found is not None:
            number, entry = found
            self._wait(Retrieve(number, entry.key, entry.size, None))

    def _cmd_top(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 2:
            self._error("-ERR Syntax: TOP message-number lines.")
            return
        if not _NUMBER.fullmatch(args[1]):
            self._error("-ERR Invalid number of lines.")
            return
        found = self._message(args[0])
        if found is not None:
            number, entry = found
            self._wait(Retrieve(number, entry.key, entry.size, int(args[1])))

    def _cmd_dele(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 1:
            self._error("-ERR Syntax: DELE message-number.")
            return
        found = self._message(args[0])
        if found is not None:
            self._deleted.add(found[0] - 1)
            self._ok(f"Message {found[0]} marked for deletion.")  # RFC 1939 §5: at UPDATE

    def _cmd_noop(self, arg: str) -> None:
        if arg:
            self._error("-ERR NOOP takes no arguments.")
            return
        self._ok("")

    def _cmd_rset(self, arg: str) -> None:
        if arg:
            self._error("-ERR RSET takes no arguments.")
            return
        self._deleted.clear()
        self._ok(f"Maildrop has {self._summary()}.")

    # -- answers from the driver ------------------------------------------------------------

    def _resume(self, expected: type) -> None:
        if self._waiting is not expected:
            raise RuntimeError(f"no {expected.__name__} outstanding")  # a driver bug
        self._waiting = None

    def auth_succeeded(self, entries: Sequence[Entry]) -> None:
        self._resume(AuthRequest)
        self.state = State.TRANSACTION
        self._entries = list(entries)
        self._deleted.clear()
        self._ok(f"Logged in, maildrop has {self._summary()}.")

    def auth_failed(self, code: str, text: str) -> None:
        """code: AUTH (bad credentials), IN_USE (locked), SYS_TEMP / SYS_PERM (ours)."""
        self._resume(AuthRequest)
        self._error(f"-ERR {code} {text}")

    def tls_started(self) -> None:
        """RFC 2595 §4: the session starts over inside TLS (the client must CAPA again)."""
        self._resume(StartTls)
        self.tls_active = True
        self._user = None
        self._sasl = None
        self.errors = 0

    def tls_failed(self) -> None:
        self._resume(StartTls)
        self._events.append(Close("TLS handshake failed"))

    def retrieve_started(self, request: Retrieve) -> bytes:
        """The status line for RETR / TOP, once the message is open."""
        if request.lines is None:
            return f"+OK {request.size} octets\r\n".encode()
        return b"+OK\r\n"

    def retrieve_done(self) -> None:
        self._resume(Retrieve)
        self.errors = 0

    def retrieve_failed(self, code: str, text: str, *, sent: bool = False) -> None:
        """The message could not be read. `sent`: part of it went out already -> close."""
        self._resume(Retrieve)
        if sent:
            self._events.append(Close("message read failed mid-transfer"))
            return
        self._error(f"-ERR {code} {text}" if code else f"-ERR {text}")

    def update_done(self, failed: int) -> None:
        """RFC 1939 §6: +OK after the removals, or -ERR if some were not removed."""
        self._resume(Update)
        if failed:
            self._events.append(Reply(f"-ERR {SYS_TEMP} {failed} deleted messages were not "
                                      "removed.\r\n".encode()))
        else:
            self._events.append(Reply(b"+OK Logging out, messages deleted.\r\n"
                                      if self._deleted else b"+OK Logging out.\r\n"))
        self._events.append(Close("quit"))
