"""App passwords: several named passwords per account, each for some doors only.

A phone gets "phone: imap, submission"; losing the phone means revoking that one password,
not changing the main one. mailkeep generates them (`mailkeep user app-password add`): 24
random base32 characters, 120 bits, shown once. Being random, they need no slow hash: they
are stored as a salted SHA-256 ({SSHA256}, as OpenLDAP and Dovecot spell it), so checking
every app password of an account costs microseconds and every login costs the same one
argon2id (the main password) whether or not it used an app password. A hash in a slow
scheme (argon2id, SHA512-CRYPT...) is accepted too, for imported ones, at its own cost.

One verification serves every backend that keeps hashes (file, SQL, and the local store of
the LDAP backend): `verify_login` checks the main password and then every app password,
always all of them, and says which one matched.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from passlib.hash import ldap_salted_sha256

from mailkeep.directory.passwords import is_supported, verify_password

TOKEN_SCHEME = "{SSHA256}"  # noqa: S105 (a scheme name, not a secret)
# 24 characters of RFC 4648 base32 (a-z, 2-7): 5 bits each, 120 bits in all, typed by a
# person once, in groups of four ("abcd-efgh-...").
TOKEN_LENGTH = 24
TOKEN_GROUP = 4
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# A last-used time is written at most this often per app password (seconds): a phone that
# reconnects every minute must not rewrite a file or a row on every login.
LAST_USED_INTERVAL = 60.0
# Bound on the coalescing table (app passwords remembered at once).
MAX_TRACKED_APP_PASSWORDS = 100_000


@dataclass(frozen=True, slots=True)
class AppPassword:
    """One named app password. `services` are doors from base.SERVICES."""

    label: str
    password_hash: str
    services: tuple[str, ...]
    created: float = 0.0
    last_used: float | None = None

    def __repr__(self) -> str:
        return f"AppPassword({self.label!r}, services={self.services!r})"


@dataclass(frozen=True, slots=True)
class Match:
    """Which credential opened the door: the main password (label None) or an app password."""

    label: str | None = None


def new_app_password() -> tuple[str, str]:
    """A fresh app password and its stored hash."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(TOKEN_LENGTH))
    secret = "-".join(raw[i:i + TOKEN_GROUP] for i in range(0, TOKEN_LENGTH, TOKEN_GROUP))
    return secret, str(ldap_salted_sha256.hash(secret))


def is_supported_app_hash(stored: str) -> bool:
    if stored.startswith(TOKEN_SCHEME):
        return bool(ldap_salted_sha256.identify(stored))
    return is_supported(stored)


def _verify_app(password: str, stored: str) -> bool:
    if stored.startswith(TOKEN_SCHEME):
        try:
            return bool(ldap_salted_sha256.verify(password, stored))
        except (ValueError, TypeError):
            return False
    return verify_password(password, stored)


def matching_app_passwords(password: str, app_passwords: Sequence[AppPassword]
                           ) -> list[AppPassword]:
    """Blocking: the app passwords `password` is, whatever their services (all checked)."""
    return [app for app in app_passwords if _verify_app(password, app.password_hash)]


def verify_login(password: str, main_hash: str | None, app_passwords: Sequence[AppPassword],
                 service: str) -> Match | None:
    """Blocking (one argon2id at least): which credential `password` is for `service`.

    `main_hash` None means there is no such account: nothing matches. The main password
    opens every door; an app password only its own `services`. All
    candidates are always checked, so the time does not tell which one matched, nor
    whether an account has app passwords beyond their (small) count."""
    main_ok = verify_password(password, main_hash)
    matched: str | None = None
    for app in app_passwords:
        ok = _verify_app(password, app.password_hash)
        # compare_digest keeps the branch on `service` from short-circuiting differently.
        if ok and any(hmac.compare_digest(service, s) for s in app.services) and matched is None:
            matched = app.label
    if main_hash is None:
        return None  # no account: the work above was only to cost the same time
    if main_ok:
        return Match(None)
    if matched is not None:
        return Match(matched)
    return None


class LastUsedCoalescer:
    """Says when a last-used time is worth writing: at most once per LAST_USED_INTERVAL per
    (account, label). Thread-safe (backends verify in a thread pool)."""

    def __init__(self, interval: float = LAST_USED_INTERVAL) -> None:
        self.interval = interval
        self._written: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def due(self, account: str, label: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        key = (account, label)
        with self._lock:
            last = self._written.get(key)
            if last is not None and now - last < self.interval:
                return False
            if len(self._written) >= MAX_TRACKED_APP_PASSWORDS:
                self._written.pop(next(iter(self._written)))
            self._written[key] = now
            return True
