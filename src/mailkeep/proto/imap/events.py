"""What the IMAP machine tells its driver, and what the driver tells it back.

The machine never reaches into storage or the directory (DESIGN.md): it emits a request
event, pauses, and resumes when the driver calls the matching answer method:

    AuthRequest  -> machine.auth_succeeded(account) / machine.auth_failed(code, text)
    StartTls     -> write `reply`, handshake, machine.tls_started() / machine.tls_failed()
    StartCompression -> write `reply`, compress from then on, machine.compression_started()
    ClientId     -> log what the client said about itself (RFC 2971 ID; no answer)
    Execute      -> run the command against the store (server/imap_commands.py) in the
                    session state it carries, write its untagged data, then
                    machine.executed(Outcome(...))
    Idle         -> RFC 2177: until IdleDone, wait on the socket *and* on the selected
                    mailbox's changes, writing untagged updates as they come (no answer)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from mailkeep.proto.imap.grammar import CommandType
from mailkeep.proto.sasl import Credentials

if TYPE_CHECKING:
    from mailkeep.proto.imap.session import SessionState


class State(Enum):
    """RFC 3501 §3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


class Paused:
    def __repr__(self) -> str:
        return "PAUSED"


NEED_DATA = NeedData()
PAUSED = Paused()


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to write, in order."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """LOGIN or AUTHENTICATE: verify these credentials (throttled, off-loop)."""

    tag: str
    credentials: Credentials
    mechanism: str  # "LOGIN" (the command), "PLAIN" or "LOGIN" (SASL): for logs only


@dataclass(frozen=True, slots=True)
class StartTls:
    """RFC 3501 §6.2.1: write `reply`, run the handshake, then tls_started()."""

    reply: bytes


@dataclass(frozen=True, slots=True)
class StartCompression:
    """RFC 4978 §3: write `reply` (the tagged OK, uncompressed), then compress both
    directions from the next octet on, then machine.compression_started()."""

    reply: bytes


@dataclass(frozen=True, slots=True)
class ClientId:
    """RFC 2971: the client said who it is (for the log; the machine answered already)."""

    fields: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Execute:
    """A command that touches the store, already checked against the state table, and the
    session state to run it in (Authenticated or Selected)."""

    command: CommandType
    session: SessionState


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command came to, typed: the machine renders the tagged line. `session` is the
    new state when the command changed it (SELECT, CLOSE, a failed SELECT...); `close` a
    reason to end the connection after the reply."""

    status: Literal["OK", "NO", "BAD"]
    text: str
    code: str | None = None
    session: SessionState | None = None
    close: str | None = None


@dataclass(frozen=True, slots=True)
class Idle:
    """RFC 2177 IDLE began (the continuation is written): until IdleDone, the driver waits
    on the socket and on the change feed at once."""

    tag: str


@dataclass(frozen=True, slots=True)
class IdleDone:
    """IDLE ended (the tagged reply comes as a Reply just before)."""


@dataclass(frozen=True, slots=True)
class Close:
    """Write what came before, then close the connection. Nothing more will come."""

    reason: str


Event = (Reply | AuthRequest | StartTls | StartCompression | ClientId | Execute | Idle
         | IdleDone | Close | NeedData | Paused)
