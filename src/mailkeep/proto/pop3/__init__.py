"""POP3 (RFC 1939) as a sans-IO machine: bytes in, replies and requests out."""

from mailkeep.proto.pop3.events import (
    NEED_DATA,
    PAUSED,
    AuthRequest,
    Close,
    Entry,
    Event,
    NeedData,
    Paused,
    Reply,
    Retrieve,
    StartTls,
    Update,
)
from mailkeep.proto.pop3.machine import (
    AUTH,
    IN_USE,
    MAX_BAD_COMMANDS,
    MAX_LINE_OCTETS,
    SYS_PERM,
    SYS_TEMP,
    Pop3Machine,
    State,
)
from mailkeep.proto.pop3.transfer import MessageEncoder

__all__ = [
    "AUTH", "IN_USE", "MAX_BAD_COMMANDS", "MAX_LINE_OCTETS", "NEED_DATA", "PAUSED", "SYS_PERM",
    "SYS_TEMP", "AuthRequest", "Close", "Entry", "Event", "MessageEncoder", "NeedData", "Paused",
    "Pop3Machine", "Reply", "Retrieve", "StartTls", "State", "Update",
]
