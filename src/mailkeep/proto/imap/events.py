"""What the IMAP machine tells its driver, and what the driver tells it back.

The machine never reaches into storage or the directory (DESIGN.md): it emits a request
event, pauses, and resumes when the driver calls the matching answer method:

    AuthRequest  -> machine.auth_succeeded(account) / machine.auth_failed(code, text)
    StartTls     -> write `reply`, handshake, machine.tls_started() / machine.tls_failed()
    Execute      -> run the command against the store (server/imap_commands.py), write its
                    untagged data, then machine.executed(tagged_line, status, state)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mailkeep.proto.imap.grammar import CommandType
from mailkeep.proto.sasl import Credentials


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
class Execute:
    """A command that touches the store, already checked against the state table."""

    command: CommandType


@dataclass(frozen=True, slots=True)
class Close:
    """Write what came before, then close the connection. Nothing more will come."""

    reason: str


Event = Reply | AuthRequest | StartTls | Execute | Close | NeedData | Paused
