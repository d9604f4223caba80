"""Framing of IMAP client input: command lines with their literals (RFC 3501 §4.3, §7.5;
RFC 7888 LITERAL+). Sans-IO: bytes in, events out.

    r = Receiver()
    r.feed(data)                        # b"" means end of input
    while (ev := r.next_event()) is not NEED_DATA:
        Command            -> grammar.parse_command(ev.data)
        LiteralRequest     -> write "+ Ready" then r.accept_literal(),
                              or a tagged NO/BAD then r.refuse_literal() (RFC 3501 §7.5)
        Line               -> a raw client line asked for with r.expect_line()
                              (AUTHENTICATE responses, IDLE's DONE)
        FramingError       -> write "tag BAD ..." (or "* BAD"); close if ev.fatal
        EndOfInput         -> the client closed its side
        PAUSED             -> a LiteralRequest awaits accept_literal/refuse_literal

A Command's `data` holds the whole command without its final CRLF, literals inline as
"{n}" CRLF + n octets ("{n+}" kept), which is what lexer.Cursor reads. Bad input is
drained to the end of its command before the error event is emitted (DESIGN.md habit 6),
so splitting the input anywhere yields the same events.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mailkeep.proto.imap.lexer import TAG_CHARS

# RFC 7162 §4: servers SHOULD accept command lines of at least 8192 octets; long UID sets
# from syncing clients exceed that. Like Dovecot's imap_max_line_length default (64 KiB),
# we accept 65536 octets of command text (all lines of one command, literal data not
# counted); more is drained and refused with BAD.
MAX_LINE_OCTETS = 65_536
# The APPEND literal is the message: the same 25 MiB as config.model's
# DEFAULT_MAX_MESSAGE_SIZE (the driver passes the configured max_message_size). It also
# caps the sum of all literals in one command. Bigger synchronizing literals are refused
# before the client sends them (RFC 3501 §7.5; NO [TOOBIG] per RFC 7889 §4).
MAX_LITERAL_OCTETS = 25 * 1024 * 1024
# Our choice: LOGIN needs 2 literals, SEARCH one per non-ASCII string; 32 is generous and
# bounds the per-command work of a hostile client.
MAX_LITERALS_PER_COMMAND = 32
# RFC 3501 sets no tag length; a tag is only reported back if it is at most this long.
MAX_TAG_OCTETS = 64

# A literal announcement ends a line: "{" number ["+"] "}" (RFC 3501 §9, RFC 7888 §3).
_LITERAL_AT_END = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
_TAIL_OCTETS = 24  # enough to find a literal announcement at the end of a drained line


class FramingFault(Enum):
    LINE_TOO_LONG = "Command line too long"
    LITERAL_TOO_LARGE = "Literal too large"
    TOO_MANY_LITERALS = "Too many literals in one command"
    LITERAL_PLUS_UNSUPPORTED = "Non-synchronizing literals are not supported"
    SERVER_BUSY = "Server busy: too much client data held, try again later"


class LiteralBudget(Protocol):
    """Memory shared by all sessions for literals being held (security.InputBudget)."""

    def reserve(self, octets: int) -> bool: ...

    def release(self, octets: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Command:
    """One complete command: tag as far as the framer could read it, and all its bytes.
    `held`: literal octets reserved in the LiteralBudget for it; whoever runs the command
    releases them when it is done."""

    tag: str | None
    data: bytes
    held: int = 0


@dataclass(frozen=True, slots=True)
class LiteralRequest:
    """A synchronizing literal "{size}" was announced: the client waits for "+".
    `partial` is the command so far (e.g. to refuse APPEND with NO [TRYCREATE])."""

    tag: str | None
    size: int
    partial: bytes


@dataclass(frozen=True, slots=True)
class Line:
    """A raw line (without CRLF) requested with expect_line()."""

    data: bytes


@dataclass(frozen=True, slots=True)
class FramingError:
    """The command was dropped, and drained as far as the protocol allows. Reply
    "tag BAD [code] message" (tag None: "* BAD"). `fatal`: the stream cannot be resynced
    (an over-large non-synchronizing literal, RFC 7888 §4): reply and close."""

    tag: str | None
    fault: FramingFault
    fatal: bool = False

    @property
    def message(self) -> str:
        return self.fault.value

    @property
    def code(self) -> str | None:
        if self.fault is FramingFault.SERVER_BUSY:
            return "UNAVAILABLE"  # RFC 5530 §3: temporary, try again later
        return "TOOBIG" if self.fault is FramingFault.LITERAL_TOO_LARGE else None

    @property
    def refusal(self) -> bool:
        """A refusal (NO), not a syntax error (BAD): the command was fine, the size not."""
        return self.fault in (FramingFault.LITERAL_TOO_LARGE, FramingFault.SERVER_BUSY)


@dataclass(frozen=True, slots=True)
class EndOfInput:
    """The client closed its side; `incomplete`: in the middle of a command."""

    incomplete: bool


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")

Event = Command | LiteralRequest | Line | FramingError | EndOfInput | _Sentinel


class _Mode(Enum):
    LINE = 1        # reading command text up to LF
    LITERAL = 2     # reading (or draining) literal octets
    AWAIT = 3       # a LiteralRequest is out: accept_literal() or refuse_literal()
    DRAIN_LINE = 4  # inside an over-long line: drop octets up to LF
    RAW = 5         # expect_line(): the next line is not a command
    DRAIN_RAW = 6
    CLOSED = 7      # after a fatal error: ignore everything


def tag_of(line: bytes) -> str | None:
    """The tag at the start of a command line, if it is a valid RFC 3501 tag."""
    head = line[:MAX_TAG_OCTETS + 1]
    end = head.find(b" ")
    tag = head if end < 0 and len(line) <= MAX_TAG_OCTETS else head[:max(end, 0)]
    if not tag or any(c not in TAG_CHARS for c in tag):
        return None
    return tag.decode("ascii")


class Receiver:
    """`max_literal` bounds any literal (a larger non-synchronizing one is fatal: it cannot
    be drained in bounded time); `literal_limit(partial command)` is the limit for the
    command at hand (e.g. APPEND may take the message size, LOGIN only a few octets), a
    larger literal being refused and drained without being held; `budget` is the memory
    shared with other sessions, reserved before a literal is read."""

    def __init__(self, *, max_line: int = MAX_LINE_OCTETS,
                 max_literal: int = MAX_LITERAL_OCTETS,
                 max_literals: int = MAX_LITERALS_PER_COMMAND,
                 literal_plus: bool = True,
                 literal_limit: Callable[[bytes], int] | None = None,
                 budget: LiteralBudget | None = None) -> None:
        if max_line < 2 * MAX_TAG_OCTETS:
            raise ValueError(f"max_line must be at least {2 * MAX_TAG_OCTETS}")
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_literals = max_literals
        self.literal_plus = literal_plus  # RFC 7888: only when LITERAL+ is advertised
        self.literal_limit = literal_limit
        self.budget = budget
        self._reserved = 0
        self._buf = bytearray()
        self._scanned = 0
        self._events: deque[Event] = deque()
        self._mode = _Mode.LINE
        self._eof = False
        self._eof_reported = False
        self._reset()

    def _reset(self) -> None:
        # A command dropped before it was delivered gives its reservation back.
        if self._reserved and self.budget is not None:
            self.budget.release(self._reserved)
        self._reserved = 0
        self._parts: list[bytes] = []
        self._tag: str | None = None
        self._first_line = True
        self._text_octets = 0
        self._literals = 0
        self._literal_octets = 0
        self._remaining = 0          # literal octets still to read
        self._failure: FramingError | None = None  # set: the command is being drained
        self._tail = b""

    # -- the driver's side ----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
        elif self._mode is not _Mode.CLOSED:
            self._buf += data

    @property
    def pending_input(self) -> int:
        """Octets received and not yet framed (STARTTLS must find none: habit 9)."""
        return len(self._buf)

    def close(self) -> None:
        """The connection is gone: give back any reservation of a half-received command."""
        if self._reserved and self.budget is not None:
            self.budget.release(self._reserved)
        self._reserved = 0
        self._mode = _Mode.CLOSED
        self._buf.clear()

    def accept_literal(self) -> None:
        """The machine sent "+ ...": read the announced literal."""
        self._decided()
        self._mode = _Mode.LITERAL

    def refuse_literal(self) -> None:
        """The machine answered the command with NO or BAD instead of "+": the client
        sends no literal and the command is over (RFC 3501 §7.5)."""
        self._decided()
        self._reset()
        self._mode = _Mode.LINE

    def expect_line(self) -> None:
        """The next line is a continuation response, not a command (RFC 3501 §6.2.2
        AUTHENTICATE, RFC 2177 IDLE): deliver it as a Line event."""
        if self._mode is not _Mode.LINE or self._parts:
            raise RuntimeError("expect_line() only between commands")  # a machine bug
        self._mode = _Mode.RAW

    def _decided(self) -> None:
        if self._mode is not _Mode.AWAIT:
            raise RuntimeError("no literal request outstanding")  # a machine bug

    def next_event(self) -> Event:
        while True:
            if self._events:
                return self._events.popleft()
            if self._mode is _Mode.AWAIT:
                return PAUSED
            if self._mode is _Mode.CLOSED or not self._step():
                if self._eof and not self._eof_reported:
                    self._eof_reported = True
                    incomplete = bool(self._buf or self._parts) or self._mode not in (
                        _Mode.LINE, _Mode.RAW, _Mode.CLOSED)
                    self._buf.clear()
                    return EndOfInput(incomplete)
                return NEED_DATA

    # -- framing --------------------------------------------------------------------------

    def _step(self) -> bool:
        """Make progress on buffered input; False when more input is needed."""
        if self._mode is _Mode.LITERAL:
            return self._step_literal()
        if not self._buf:
            return False
        lf = self._buf.find(b"\n", self._scanned)
        raw = self._mode in (_Mode.RAW, _Mode.DRAIN_RAW)
        draining = self._mode in (_Mode.DRAIN_LINE, _Mode.DRAIN_RAW)
        allowed = self.max_line if raw else self.max_line - self._text_octets
        if lf < 0:
            if draining:
                self._tail = (self._tail + bytes(self._buf))[-_TAIL_OCTETS - 1:]
                self._buf.clear()
                self._scanned = 0
                return False
            self._scanned = len(self._buf)
            if len(self._buf) <= allowed:
                return False
            self._start_drain(bytes(self._buf), raw)
            self._tail = bytes(self._buf[-_TAIL_OCTETS - 1:])
            self._buf.clear()
            self._scanned = 0
            return True
        line = bytes(self._buf[:lf])
        del self._buf[:lf + 1]
        self._scanned = 0
        content = line[:-1] if line.endswith(b"\r") else line  # bare LF tolerated
        if draining:
            tail = self._tail + line[-_TAIL_OCTETS - 1:]
            self._tail = b""
            self._drained_line_end(tail[:-1] if tail.endswith(b"\r") else tail, raw)
            return True
        if len(line) + 1 > allowed:
            self._start_drain(line, raw)
            self._drained_line_end(content[-_TAIL_OCTETS:], raw)
            return True
        if raw:
            self._mode = _Mode.LINE
            self._events.append(Line(content))
            return True
        if self._first_line:
            self._tag = tag_of(content)
            self._first_line = False
        self._text_octets += len(content) + 2
        self._line_end(content)
        return True

    def _start_drain(self, head: bytes, raw: bool) -> None:
        if raw:
            self._mode = _Mode.DRAIN_RAW
            return
        if self._first_line:
            self._tag = tag_of(head)
            self._first_line = False
        self._mode = _Mode.DRAIN_LINE
        if self._failure is None:
            self._failure = FramingError(self._tag, FramingFault.LINE_TOO_LONG)

    def _drained_line_end(self, tail: bytes, raw: bool) -> None:
        if raw:
            self._mode = _Mode.LINE
            self._events.append(FramingError(None, FramingFault.LINE_TOO_LONG))
            return
        self._mode = _Mode.LINE
        self._line_end(tail)

    def _line_end(self, content: bytes) -> None:
        """A line of the current command ended (content without CRLF)."""
        match = _LITERAL_AT_END.search(content[-_TAIL_OCTETS:])
        if match is None:
            if self._failure is None:
                self._parts.append(content)
                held, self._reserved = self._reserved, 0  # the command's runner releases it
                self._events.append(Command(self._tag, b"".join(self._parts), held))
            self._finish()
            return
        digits, plus = match.group(1), bool(match.group(2))
        size = int(digits) if len(digits) <= 12 else self.max_literal + 1
        if self._failure is None:
            self._parts.append(content + b"\r\n")
            self._literals += 1
            self._literal_octets += size
            limit = self.max_literal
            if self.literal_limit is not None:
                limit = min(limit, self.literal_limit(b"".join(self._parts)))
            fault = None
            if plus and not self.literal_plus:
                fault = FramingFault.LITERAL_PLUS_UNSUPPORTED
            elif self._literals > self.max_literals:
                fault = FramingFault.TOO_MANY_LITERALS
            elif size > limit or self._literal_octets > limit:
                fault = FramingFault.LITERAL_TOO_LARGE
            elif self.budget is not None:
                if self.budget.reserve(size):
                    self._reserved += size
                else:
                    fault = FramingFault.SERVER_BUSY
            if fault is not None:
                self._failure = FramingError(self._tag, fault)
        if not plus:
            if self._failure is not None:
                # The client waits for "+" and sends nothing more: answering ends the
                # command (RFC 3501 §7.5).
                self._finish()
                return
            self._remaining = size
            self._mode = _Mode.AWAIT
            self._events.append(LiteralRequest(self._tag, size, b"".join(self._parts)))
            return
        if size > self.max_literal:
            # RFC 7888 §4: the client sends the octets anyway; draining an unbounded
            # amount is a denial of service, so refuse and close.
            failure = self._failure or FramingError(self._tag, FramingFault.LITERAL_TOO_LARGE)
            self._events.append(FramingError(failure.tag, failure.fault, fatal=True))
            self._buf.clear()
            self._mode = _Mode.CLOSED
            return
        self._remaining = size
        self._mode = _Mode.LITERAL

    def _finish(self) -> None:
        if self._failure is not None:
            self._events.append(self._failure)
        self._reset()
        self._mode = _Mode.LINE

    def _step_literal(self) -> bool:
        if self._remaining == 0:
            self._mode = _Mode.LINE
            return True
        if not self._buf:
            return False
        chunk = bytes(self._buf[:self._remaining])
        del self._buf[:self._remaining]
        self._remaining -= len(chunk)
        if self._failure is None:
            self._parts.append(chunk)
        if self._remaining == 0:
            self._mode = _Mode.LINE
        return True
