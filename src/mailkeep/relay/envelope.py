"""The message and recipients handed to outbound delivery, and their ESMTP parameters.

DSN parameters (RFC 3461) come from the submission and are passed on when the next hop offers
DSN; `smtputf8` and 8-bit content decide SMTPUTF8 (RFC 6531) and BODY=8BITMIME (RFC 6152).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("mailkeep.relay")

Ret = Literal["FULL", "HDRS"]
NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 §4.4: an ENVID value is at most 100 characters.
MAX_ENVID = 100
# RFC 3461 §4.2: ORCPT's xtext-encoded address at most 500 characters.
MAX_ORCPT = 500


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    # RFC 3461 §4.1: () when the submitter gave no NOTIFY; ("NEVER",) or some of
    # SUCCESS, FAILURE, DELAY otherwise.
    notify: tuple[str, ...] = ()
    # RFC 3461 §4.2: the original recipient as the submitter named it (a plain address).
    orcpt: str | None = None

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    sender: str             # "" is the null reverse-path (bounces)
    data: bytes             # the message as spooled: CRLF lines, not dot-stuffed
    ret: Ret | None = None  # RFC 3461 §4.3
    envid: str | None = None  # RFC 3461 §4.4, plain text (encoded here)
    # The submitter used SMTPUTF8 (its headers may carry UTF-8, RFC 6532).
    smtputf8: bool = False
    id: str = ""            # the spool id, for logs

    def needs_8bitmime(self) -> bool:
        return not self.data.isascii()


def needs_smtputf8(message: OutboundMessage, recipients: list[Recipient]) -> bool:
    """RFC 6531 §3.2: an internationalized address in the envelope, or UTF-8 headers."""
    return (message.smtputf8 or not message.sender.isascii()
            or any(not r.address.isascii() for r in recipients))


def xtext(value: str) -> str:
    """RFC 3461 §4: printable ASCII but "+" and "=" as is; anything else as +HH."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def utf8_addr_xtext(value: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext: printable ASCII but "+", "=", "\\" as is; else \\x{HEX}."""
    out = []
    for ch in value:
        code = ord(ch)
        if 33 <= code <= 126 and ch not in "+=\\":
            out.append(ch)
        else:
            out.append(f"\\x{{{code:02X}}}")
    return "".join(out)


def mail_dsn_options(message: OutboundMessage) -> list[str]:
    """RET and ENVID for MAIL, for a next hop that offers DSN."""
    options: list[str] = []
    if message.ret is not None:
        options.append(f"RET={message.ret}")
    if message.envid:
        envid = xtext(message.envid)
        if len(envid) <= MAX_ENVID:
            options.append(f"ENVID={envid}")
        else:
            log.warning("relay[%s]: ENVID over %d characters dropped", message.id, MAX_ENVID)
    return options


def rcpt_dsn_options(recipient: Recipient) -> list[str]:
    """NOTIFY and ORCPT for RCPT, for a next hop that offers DSN."""
    options: list[str] = []
    notify = [n.upper() for n in recipient.notify if n.upper() in NOTIFY_VALUES]
    if notify:
        # RFC 3461 §4.1: NEVER stands alone.
        options.append("NOTIFY=NEVER" if "NEVER" in notify else "NOTIFY=" + ",".join(notify))
    if recipient.orcpt:
        if recipient.orcpt.isascii():
            value = "rfc822;" + xtext(recipient.orcpt)
        else:
            value = "utf-8;" + utf8_addr_xtext(recipient.orcpt)  # RFC 6533 §3
        if len(value) <= MAX_ORCPT:
            options.append(f"ORCPT={value}")
    return options
