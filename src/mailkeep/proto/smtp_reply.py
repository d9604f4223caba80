"""SMTP reply shaping: enhanced status codes (RFC 2034, RFC 3463) on every reply.

aiosmtpd writes many replies without an enhanced code. Once ENHANCEDSTATUSCODES is advertised,
RFC 2034 §3 says every 2xx, 4xx and 5xx reply after the greeting carries one, so replies pass
through `enhance()` before they reach the wire.
"""

from __future__ import annotations

import re

# RFC 3463 / RFC 5248 codes that fit aiosmtpd's bare replies, by basic reply code.
_DEFAULTS: dict[str, str] = {
    "211": "2.0.0", "214": "2.0.0", "221": "2.0.0", "235": "2.7.0", "250": "2.0.0",
    "251": "2.1.5", "252": "2.5.0",
    "421": "4.3.0", "450": "4.2.0", "451": "4.3.0", "452": "4.5.3", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0", "552": "5.3.4",
    "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}
# Specific aiosmtpd texts whose default above would mislead.
_TEXT_OVERRIDES: tuple[tuple[str, str], ...] = (
    ("500 Error: command", "5.5.1"),   # unrecognised command: RFC 3463 X.5.1 invalid command
    ("500 Line too long", "5.5.6"),    # RFC 3463 X.6.0-ish; RFC 5248 lists 5.5.6 for syntax
    ("500 Command line too long", "5.5.2"),
    ("552 Error: Too much", "5.3.4"),  # message too big for system
)
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

# Replies where aiosmtpd's wording is not what a sysadmin should read in a client's error box.
REWRITES: dict[str, str] = {
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "552 Error: Too much mail data": "552 5.3.4 Message too big for this server",
    "500 Line too long (see RFC5321 4.5.3.1.6)":
        "500 5.5.6 Line too long: at most 1000 octets per line (RFC 5321 §4.5.3.1.6)",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
}


def enhance(reply: str) -> str:
    """Add an enhanced status code to one reply line when it lacks one."""
    reply = REWRITES.get(reply, reply)
    if len(reply) < 3 or not reply[:3].isdigit() or _HAS_ENHANCED.match(reply):
        return reply
    code = reply[:3]
    if code[0] not in "245" or code in ("220", "334") or reply[3:4] not in ("", " ", "-"):
        return reply
    enhanced = _DEFAULTS.get(code)
    for prefix, override in _TEXT_OVERRIDES:
        if reply.startswith(prefix):
            enhanced = override
    if enhanced is None:
        enhanced = f"{code[0]}.0.0"
    sep = reply[3:4] or " "
    return f"{code}{sep}{enhanced} {reply[4:]}".rstrip()


def reply_code(reply: str) -> int:
    try:
        return int(reply[:3])
    except ValueError:
        return 0
