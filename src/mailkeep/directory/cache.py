"""The verified-credentials cache (like Dovecot's auth_cache), in front of any backend.

Thunderbird opens about five connections at start and reconnects all day; each login would
cost an argon2id (about 25 ms of a core, 19 MiB) or an LDAP bind. A successful verification
is remembered for `ttl` seconds under a keyed hash of (service, login, password):

- the key is HMAC-SHA256 under a random key made at start and never written anywhere, so
  the cache holds no password and no hash anyone could reuse or crack offline (without the
  process key, a cache entry says nothing about the password);
- only successes are stored: a wrong password is verified every time (and counted by the
  throttle every time);
- it is cleared whenever the backend reports a change (the file backend re-reading its
  users file: a changed or revoked password stops working at once); SQL and LDAP cannot tell
  us, so there a change takes effect within `ttl` (default 60 s; 0 disables the cache);
- its size is bounded (least recently used entries go first).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from mailkeep.directory.base import Account

# Dovecot's auth_cache_ttl defaults to 1 hour; a minute is enough to absorb a client's burst
# of connections and its reconnects, and keeps a password change in SQL or LDAP quick.
DEFAULT_TTL = 60.0
# Entries at most (each a 32-byte key and a shared Account: a few hundred bytes).
DEFAULT_MAX_ENTRIES = 10_000


def _field(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data  # length-prefixed: "a|b"+"c" != "a"+"b|c"


class CredentialsCache:
    def __init__(self, ttl: float = DEFAULT_TTL, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, tuple[Account, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def key(self, service: str, login: str, password: str) -> bytes:
        msg = _field(service) + _field(login) + _field(password)
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def get(self, key: bytes) -> Account | None:
        found = self._entries.get(key)
        if found is None:
            return None
        account, expires = found
        if self.clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return account

    def put(self, key: bytes, account: Account) -> None:
        if not self.enabled:
            return
        self._entries[key] = (account, self.clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
