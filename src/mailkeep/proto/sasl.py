"""SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) message decoding.

Shared by SMTP AUTH (RFC 4954), POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 3501).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

# RFC 4616 §2: authzid, authcid and passwd are each at most 255 octets of UTF-8.
MAX_FIELD_OCTETS = 255


class SaslError(ValueError):
    """The client's SASL message is malformed: a syntax error on the client's side."""


@dataclass(frozen=True, slots=True)
class Credentials:
    authzid: str
    login: str
    password: str

    def __repr__(self) -> str:  # habit 8: secrets never reach logs or reprs
        return f"Credentials(login={self.login!r}, password=<hidden>)"


def decode_base64(data: bytes | str) -> bytes:
    """RFC 4648 base64, strict: anything else is the client's syntax error."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("invalid base64") from None


def _text(raw: bytes, what: str) -> str:
    if len(raw) > MAX_FIELD_OCTETS:
        raise SaslError(f"{what} longer than {MAX_FIELD_OCTETS} octets")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None


def parse_plain(message: bytes) -> Credentials:
    """RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError("PLAIN message must be authzid NUL authcid NUL passwd")
    authzid, login, password = (_text(p, n) for p, n in zip(
        parts, ("authorization identity", "login", "password"), strict=True))
    if not login or not password:
        raise SaslError("empty login or password")
    return Credentials(authzid, login, password)


def parse_login_field(message: bytes, what: str) -> str:
    return _text(message, what)


def encode_plain(login: str, password: str, authzid: str = "") -> str:
    """The client side, for tests and tools."""
    raw = f"{authzid}\0{login}\0{password}".encode()
    return base64.b64encode(raw).decode("ascii")
