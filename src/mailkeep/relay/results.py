"""What became of each recipient of one delivery attempt: delivered, retry later, or bounce.

A `Reply` is either the remote server's (code, enhanced status, text) or one we made up for a
failure that never reached a server (DNS, connection, TLS policy); `remote` says which, so a
DSN shows a Diagnostic-Code only for what the remote actually said (RFC 3464 §2.3.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 3463 §2: class.subject.detail, class matching the basic code's first digit.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None
    text: str
    remote: bool = True

    @classmethod
    def from_smtp(cls, code: int, message: str) -> Reply:
        """Split a server reply (code and the text aiosmtplib gives, lines joined by "\\n")."""
        enhanced: str | None = None
        lines = []
        for line in message.splitlines() or [""]:
            m = _ENHANCED.match(line)
            rest = line
            if m and m.group(1) == str(code)[:1]:
                enhanced = enhanced or f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
                rest = line[m.end():]
            lines.append(rest.strip())
        return cls(code, enhanced, " / ".join(x for x in lines if x), remote=True)

    @classmethod
    def local(cls, code: int, enhanced: str, text: str) -> Reply:
        return cls(code, enhanced, text, remote=False)

    @property
    def status(self) -> str:
        """The enhanced status for a DSN (RFC 3464 §2.3.4): given, or the class's X.0.0."""
        return self.enhanced or f"{str(self.code)[:1]}.0.0"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}".rstrip()


@dataclass(frozen=True, slots=True)
class Delivered:
    recipient: str
    reply: Reply
    remote_host: str       # "mx1.example.org [192.0.2.25]"
    tls: str | None        # "TLSv1.3 TLS_AES_256_GCM_SHA384 (verified)" or None
    # RFC 3461 §4.3: the remote took the DSN parameters, so success/delay notices are its
    # job from here on; when False and NOTIFY asked for SUCCESS, send a "relayed" DSN.
    remote_dsn: bool


@dataclass(frozen=True, slots=True)
class TemporaryFailure:
    recipient: str
    reply: Reply
    remote_host: str | None  # None when no server said this (DNS, connection, policy)


@dataclass(frozen=True, slots=True)
class PermanentFailure:
    recipient: str
    reply: Reply
    remote_host: str | None

    @property
    def status(self) -> str:
        return self.reply.status


RecipientResult = Delivered | TemporaryFailure | PermanentFailure


def failure(recipient: str, reply: Reply, remote_host: str | None) -> RecipientResult:
    """A temporary or permanent failure, by the reply's class (2xx is not a failure)."""
    if reply.code >= 500:
        return PermanentFailure(recipient, reply, remote_host)
    return TemporaryFailure(recipient, reply, remote_host)
