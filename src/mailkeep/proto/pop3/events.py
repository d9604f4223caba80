"""What the POP3 machine tells its driver, and what the driver tells it back.

The machine never reaches into storage or the directory (DESIGN.md): it emits a request
event, pauses, and resumes when the driver calls the matching answer method.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailkeep.proto.sasl import Credentials


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of the session's maildrop as the machine needs it (no body)."""

    key: str      # the store's handle
    size: int     # RFC 1939 §5: octets in CRLF form, before byte-stuffing
    uidl: str     # RFC 1939 §7 unique-id: 1-70 characters 0x21-0x7E


class NeedData:
    """Feed more bytes (receive_data) before asking again."""

    def __repr__(self) -> str:
        return "NEED_DATA"


class Paused:
    """A request is outstanding: answer it before asking again."""

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
    """Verify these credentials, lock and list the maildrop; then auth_succeeded/auth_failed."""

    credentials: Credentials
    mechanism: str  # "USER" (USER/PASS), "PLAIN" or "LOGIN"


@dataclass(frozen=True, slots=True)
class StartTls:
    """RFC 2595 §4: refuse if plaintext is pipelined, else write `reply`, run the TLS
    handshake and call tls_started() (or tls_failed())."""

    reply: bytes


@dataclass(frozen=True, slots=True)
class Retrieve:
    """RETR (lines None) or TOP: open the message; write retrieve_started()'s bytes and the
    body through a MessageEncoder(lines); then call retrieve_done() (or retrieve_failed())."""

    number: int
    key: str
    size: int
    lines: int | None


@dataclass(frozen=True, slots=True)
class Update:
    """RFC 1939 §6 UPDATE state: remove these messages, then call update_done()."""

    deleted: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Close:
    """Write what came before, then close the connection. Nothing more will come."""

    reason: str


Event = Reply | AuthRequest | StartTls | Retrieve | Update | Close | NeedData | Paused
