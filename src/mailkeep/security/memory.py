"""A budget for client input held in memory by all sessions together.

An IMAP literal or an SMTP DATA section is held whole until the command runs. Each session
is bounded by its own limits (25 MiB), but sixty sessions at once would still hold 1.5 GB
(outside testing took the daemon from 65 MB to 1.6 GB that way). Sessions reserve what they
are about to hold here and release it when the command is done; a reservation that does not
fit is refused, and the client gets a temporary error (NO [UNAVAILABLE], 452 4.3.1).
"""

from __future__ import annotations


class InputBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.refused = 0  # how many reservations did not fit (for logs and metrics)

    def reconfigure(self, limit: int) -> None:
        """A new limit (a reload): what is held now stays held and is released as usual."""
        self.limit = limit

    def reserve(self, octets: int) -> bool:
        if octets <= 0:
            return True
        if self.held + octets > self.limit:
            self.refused += 1
            return False
        self.held += octets
        return True

    def release(self, octets: int) -> None:
        self.held = max(0, self.held - max(0, octets))
