"""Password hashing through the passlib API (libpass provides the `passlib` import).

New hashes are argon2id. Hashes migrated from Dovecot passwd-files verify too, with or
without their {SCHEME} prefix: SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT/BCRYPT, ARGON2ID.
"""

from __future__ import annotations

import contextlib
import re
import warnings

from passlib.context import CryptContext
from passlib.exc import PasslibHashWarning

# passlib "repairs" some damaged hashes with a warning printed raw to stderr (a rounds
# value out of range, an over-long salt, bcrypt padding bits): `hash_problem` reports the
# unusable ones itself, naming the account, and the daemon logs a failed login. Filtered
# once for the process: a per-call catch_warnings is not thread-safe, and verification
# runs in a thread pool.
warnings.filterwarnings("ignore", category=PasslibHashWarning)

# OWASP Password Storage Cheat Sheet (2023), argon2id: m=19 MiB, t=2, p=1. RFC 9106 §4's
# "second recommended option" (64 MiB, t=3) costs ~3x more per login on a 2-core machine.
ARGON2_MEMORY_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

_CONTEXT = CryptContext(
    schemes=["argon2", "sha512_crypt", "sha256_crypt", "bcrypt"],
    default="argon2",
    argon2__type="ID",
    argon2__memory_cost=ARGON2_MEMORY_KIB,
    argon2__rounds=ARGON2_TIME_COST,
    argon2__parallelism=ARGON2_PARALLELISM,
)

# Dovecot password scheme prefixes we accept (doc.dovecot.org, "Password Schemes").
_PREFIX = re.compile(r"^\{(ARGON2ID|ARGON2I|SHA512-CRYPT|SHA256-CRYPT|BLF-CRYPT|BCRYPT|CRYPT)\}",
                     re.IGNORECASE)

# A hash of a random string with the same parameters: unknown users are verified against it so
# that they cost the same time as wrong passwords.
DUMMY_HASH = _CONTEXT.hash("mailkeep-dummy-password-never-matches")


class UnsupportedHash(ValueError):
    """A stored hash in a scheme we do not verify (e.g. PLAIN, MD5-CRYPT)."""


def hash_password(password: str) -> str:
    return str(_CONTEXT.hash(password))


def strip_scheme(stored: str) -> str:
    return _PREFIX.sub("", stored.strip(), count=1)


# bcrypt only ever reads 72 bytes of a password; crypt(3) and Dovecot truncate silently, the
# bcrypt>=5 module raises instead. Truncating keeps migrated long passwords working.
BCRYPT_MAX_PASSWORD_BYTES = 72


SUPPORTED_SCHEMES = "argon2id, SHA512-CRYPT ($6$), SHA256-CRYPT ($5$) or bcrypt ($2b$)"


def hash_problem(stored: str) -> str | None:
    """Why a stored hash cannot be verified against (None: it can). Never the hash itself
    in the text: it is a secret too."""
    plain_hash = strip_scheme(stored)
    handler = _CONTEXT.identify(plain_hash, resolve=True)
    if handler is None:
        return f"not a hash in a scheme mailkeep verifies ({SUPPORTED_SCHEMES})"
    name = handler.name.upper().replace("_", "-")
    try:
        parsed = handler.from_string(plain_hash)
    except (ValueError, TypeError) as exc:
        # passlib's reasons name the part at fault ("rounds (10) is too low ..."), not
        # the hash's characters.
        return f"a damaged {name} hash: {exc}"
    # "$6$salt" parses as a configuration string without a checksum: nothing to verify against.
    if not getattr(parsed, "checksum", None):
        return f"a damaged {name} hash: no checksum (only the salt and settings)"
    return None


def is_supported(stored: str) -> bool:
    """A hash in a scheme we verify and well-formed (parsed, not just its prefix looked at)."""
    return hash_problem(stored) is None


def _dummy(password: str | bytes) -> bool:
    """Spend the time of a real verification, then fail (unknown users, unusable hashes)."""
    with contextlib.suppress(ValueError, TypeError):
        _CONTEXT.verify(password, DUMMY_HASH)
    return False


def verify_password(password: str, stored: str | None) -> bool:
    """Blocking (tens of ms by design): callers run it off the event loop.

    Never raises on odd input (a NUL in the password, a damaged stored hash): such a login
    simply fails, after the same work as a wrong password."""
    if stored is None:
        return _dummy(password)
    plain_hash = strip_scheme(stored)
    scheme = _CONTEXT.identify(plain_hash)
    if scheme is None:
        return _dummy(password)
    secret: str | bytes = password
    if scheme == "bcrypt":
        secret = password.encode("utf-8")[:BCRYPT_MAX_PASSWORD_BYTES]
    try:
        return bool(_CONTEXT.verify(secret, plain_hash))
    except (ValueError, TypeError):
        return _dummy(password)


def needs_update(stored: str) -> bool:
    return bool(_CONTEXT.needs_update(strip_scheme(stored)))
