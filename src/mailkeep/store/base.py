"""The MailStore protocol: what the protocol drivers may ask of storage."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class DeliveryError(Exception):
    """Delivery failed on our side (disk full, permissions): a temporary 4xx for the client."""


@runtime_checkable
class MailStore(Protocol):
    async def deliver(self, mailbox: str, message: bytes) -> str:
        """Store one message in the INBOX of account `mailbox`, durably, before returning.

        Returns the stored message's unique name. Raises DeliveryError."""
        ...

    async def messages(self, mailbox: str) -> list[bytes]:
        """Every message in the INBOX, oldest first (read-side used by tests and later doors)."""
        ...
