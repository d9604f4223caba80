"""Open sessions per account and per account + client address.

Dovecot's mail_max_userip_connections (default 10) counts one user's IMAP sessions from
one client address: two Thunderbird installs (five connections each) on two machines are
then 5 + 5, not 10 of one shared allowance. An overall per-account cap stays as a backstop
against a leaked password used from many addresses.

Kept behind this small interface so several worker processes can later share the counts.
"""

from __future__ import annotations

from collections import Counter

from mailkeep.security.throttle import client_key


class SessionCounter:
    def __init__(self, per_user: int, per_user_ip: int) -> None:
        self.per_user = per_user
        self.per_user_ip = per_user_ip
        self._users: Counter[str] = Counter()
        self._user_ips: Counter[tuple[str, str]] = Counter()

    def reconfigure(self, per_user: int, per_user_ip: int) -> None:
        """New limits for new sessions (a reload); open sessions stay counted."""
        self.per_user = per_user
        self.per_user_ip = per_user_ip

    def acquire(self, account: str, address: str) -> str | None:
        """Count one more session; None, or the reason it is refused."""
        key = (account, client_key(address))
        if self._user_ips[key] >= self.per_user_ip:
            return (f"too many sessions for this user from your address "
                    f"(at most {self.per_user_ip})")
        if self._users[account] >= self.per_user:
            return f"too many sessions for this user (at most {self.per_user})"
        self._user_ips[key] += 1
        self._users[account] += 1
        return None

    def release(self, account: str, address: str) -> None:
        key = (account, client_key(address))
        self._user_ips[key] -= 1
        if self._user_ips[key] <= 0:
            del self._user_ips[key]
        self._users[account] -= 1
        if self._users[account] <= 0:
            del self._users[account]

    def count(self, account: str, address: str | None = None) -> int:
        if address is None:
            return self._users[account]
        return self._user_ips[(account, client_key(address))]
