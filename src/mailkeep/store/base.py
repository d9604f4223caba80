"""The MailStore protocol: what the protocol drivers may ask of storage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class DeliveryError(Exception):
    """Delivery failed on our side (disk full, permissions): a temporary 4xx for the client."""


class StoreError(Exception):
    """Reading or changing a mailbox failed on our side: a temporary error for the client."""


class MessageGone(StoreError):
    """The message was removed by someone else (another client, an administrator)."""


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of a maildrop, known without reading its body."""

    uid: int
    key: str      # opaque and stable: the handle for read / mark_seen / delete
    size: int     # octets with CRLF line ends (RFC 1939 §5 LIST: the "exact size")
    seen: bool


@dataclass(frozen=True, slots=True)
class Maildrop:
    """The INBOX of one account at one moment, in UID order."""

    uidvalidity: int
    messages: tuple[MessageInfo, ...]


class MaildropLock(Protocol):
    """An exclusive hold on one maildrop (RFC 1939 §4: the POP3 session's exclusive lock)."""

    async def refresh(self) -> None: ...

    async def release(self) -> None: ...


@runtime_checkable
class MailStore(Protocol):
    async def deliver(self, mailbox: str, message: bytes) -> str:
        """Store one message in the INBOX of account `mailbox`, durably, before returning.

        Returns the stored message's unique name. Raises DeliveryError."""
        ...

    async def messages(self, mailbox: str) -> list[bytes]:
        """Every message in the INBOX, oldest first (read-side used by tests and later doors)."""
        ...

    async def lock_maildrop(self, mailbox: str) -> MaildropLock | None:
        """Take the exclusive maildrop lock, or None if another session holds it."""
        ...

    async def maildrop(self, mailbox: str) -> Maildrop:
        """The INBOX listing with UIDs and sizes; never reads message bodies. StoreError."""
        ...

    def read(self, mailbox: str, key: str) -> AsyncIterator[bytes]:
        """The stored message in chunks (never all at once). MessageGone / StoreError."""
        ...

    async def mark_seen(self, mailbox: str, keys: list[str]) -> None:
        """Set \\Seen (Maildir: new/NAME -> cur/NAME:2,S). Gone messages are skipped."""
        ...

    async def delete(self, mailbox: str, keys: list[str]) -> int:
        """Remove messages durably; returns how many were removed (gone ones are not errors)."""
        ...
