"""The per-account quota (RFC 9208): limits on what all of an account's folders hold.

One quota root per account (named "" as in RFC 9208's examples), governing INBOX and every
folder, with the resources STORAGE (in units of 1024 octets on the wire, octets here) and
MESSAGE. A limit of 0 means none. Checked before a change that adds messages (APPEND, COPY,
delivery); MOVE within an account changes nothing the quota counts. Two changes checked at
the same moment may together go past the limit by one message each (the check is not a
lock), as with Dovecot's quota plugin.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailkeep.store.base import Usage

STORAGE = "STORAGE"
MESSAGE = "MESSAGE"
KIB = 1024  # RFC 9208 §5: STORAGE is counted in units of 1024 octets


@dataclass(frozen=True, slots=True)
class Quota:
    octets: int = 0    # 0: no limit
    messages: int = 0  # 0: no limit

    @property
    def limited(self) -> bool:
        return self.octets > 0 or self.messages > 0

    def exceeded(self, usage: Usage, octets: int = 0, messages: int = 0) -> str | None:
        """The resource (STORAGE, MESSAGE) that `usage` plus this much more would take past
        its limit, or None."""
        if self.octets and usage.octets + octets > self.octets:
            return STORAGE
        if self.messages and usage.messages + messages > self.messages:
            return MESSAGE
        return None

    def resources(self, usage: Usage) -> list[tuple[str, int, int]]:
        """RFC 9208 §5.1 QUOTA response triples (name, usage, limit) for the limited
        resources; STORAGE in KiB, rounded up."""
        out: list[tuple[str, int, int]] = []
        if self.octets:
            out.append((STORAGE, -(-usage.octets // KIB), -(-self.octets // KIB)))
        if self.messages:
            out.append((MESSAGE, usage.messages, self.messages))
        return out
