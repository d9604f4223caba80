"""SMTP Delivery Status Notification parameters (RFC 3461), parsed and rendered without I/O.

MAIL FROM carries `RET=FULL|HDRS` and `ENVID=xtext`; RCPT TO carries
`NOTIFY=NEVER|SUCCESS,FAILURE,DELAY` and `ORCPT=addr-type;xtext`. The SMTP driver hands the
ESMTP parameter lists it received (aiosmtpd's `mail_options` / `rcpt_options`) to
`parse_mail_params` / `parse_rcpt_params`; a bad parameter raises `DsnParameterError`, whose
`reply` is the full `501 5.5.4` line to send (the peer's fault: syntax). Parameters that are not
DSN's are ignored here, for the driver's other checks to judge.

The records are what the spool keeps per message and per recipient; `render_*` gives the
parameters back for relaying to a next hop that offers DSN (RFC 3461 §5.2.1: pass them on
unchanged, and invent none the client did not send).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

# RFC 3461 §4: "the maximum length of a MAIL FROM command line is increased by 100 characters
# by the possible addition of the RET and ENVID keywords and values", and RCPT TO grows by 500
# for NOTIFY and ORCPT. We hold the ENVID and ORCPT parameters (keyword included) to those.
MAX_ENVID_PARAMETER = 100
MAX_ORCPT_PARAMETER = 500

_SYNTAX = "501 5.5.4"  # RFC 3463 X.5.4: invalid command arguments


class DsnParameterError(ValueError):
    """A malformed DSN parameter: the peer's fault. `reply` is the SMTP reply to send."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class Ret(Enum):
    """RFC 3461 §4.3: return the full message, or only its headers, in a failure DSN."""

    FULL = "FULL"
    HDRS = "HDRS"


class NotifyOn(Enum):
    """RFC 3461 §4.1: the conditions a recipient's DSN is asked for."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DELAY = "DELAY"


# RFC 3461 §4.1: without NOTIFY, "the MTA MAY behave as if NOTIFY=FAILURE or NOTIFY=FAILURE,DELAY"
# was given; we report failures and delays (what Postfix and Exim do too).
DEFAULT_NOTIFY: frozenset[NotifyOn] = frozenset({NotifyOn.FAILURE, NotifyOn.DELAY})


@dataclass(frozen=True, slots=True)
class OriginalRecipient:
    """The ORCPT parameter, decoded: `addr_type` lower-cased ("rfc822", "utf-8", ...)."""

    addr_type: str
    address: str


@dataclass(frozen=True, slots=True)
class MailDsnParams:
    """RET and ENVID from MAIL FROM; None where the client sent none (RFC 3461 §5.2.1)."""

    ret: Ret | None = None
    envid: str | None = None  # decoded from xtext: printable US-ASCII (RFC 3461 §4.4)


@dataclass(frozen=True, slots=True)
class RcptDsnParams:
    """NOTIFY and ORCPT from one RCPT TO.

    `notify` is None when the client sent no NOTIFY, and the empty set for NOTIFY=NEVER."""

    notify: frozenset[NotifyOn] | None = None
    orcpt: OriginalRecipient | None = None


def effective_notify(notify: frozenset[NotifyOn] | None) -> frozenset[NotifyOn]:
    """The conditions to report on: what the client asked for, or our default."""
    return DEFAULT_NOTIFY if notify is None else notify


# -- xtext (RFC 3461 §4) ------------------------------------------------------------------------
#   xtext   = *( xchar / hexchar )
#   xchar   = any ASCII CHAR between "!" (33) and "~" (126) inclusive, except for "+" and "="
#   hexchar = ASCII "+" immediately followed by two upper case hexadecimal digits

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_encode(data: bytes) -> str:
    """Encode octets as xtext; the characters outside xchar become +XX (upper case)."""
    return "".join(chr(b) if 33 <= b <= 126 and b not in (0x2B, 0x3D) else f"+{b:02X}"
                   for b in data)


def xtext_decode(text: str) -> bytes:
    """Decode xtext; raise ValueError if `text` is not xtext.

    DEVIATION (RFC 3461 §4): lower-case hex digits after "+" are accepted (Postfix and Exim
    accept them too); we always write upper case."""
    if _XTEXT.fullmatch(text) is None:
        raise ValueError(f"not xtext: {text!r}")
    return _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")


# -- utf-8-addr-xtext / utf-8-addr-unitext (RFC 6533 §3) -----------------------------------------
#   QCHAR               = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e   (not SP, "+", "=", "\")
#   QUCHAR              = QCHAR / UTF8-2 / UTF8-3 / UTF8-4
#   EmbeddedUnicodeChar = "\x{" HEXPOINT "}"
# HEXPOINT names a code point that needs escaping: an xtext special (CTL, SP, "+", "=", DEL),
# "\" itself, or a non-ASCII scalar value (no surrogates), in at least two digits and with no
# leading zero beyond that.

_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")
_QCHAR_RUN = re.compile(r"[!-*,-<>-\[\]-~]+")


def _escapes_needed(cp: int) -> bool:
    return cp < 0x21 or cp in (0x2B, 0x3D, 0x5C, 0x7F) or cp > 0x7F


def utf8_addr_xtext_encode(address: str) -> str:
    """RFC 6533 utf-8-addr-xtext: 7-bit, with "\\x{HEX}" for everything not a QCHAR."""
    return "".join(f"\\x{{{ord(c):02X}}}" if _escapes_needed(ord(c)) else c for c in address)


def utf8_addr_decode(text: str) -> str:
    """Decode utf-8-addr-xtext or utf-8-addr-unitext; ValueError if it is neither."""
    out: list[str] = []
    pos = 0
    for m in _EMBEDDED.finditer(text):
        out.append(_unitext_run(text[pos:m.start()]))
        hexpoint = m.group(1)
        cp = int(hexpoint, 16)
        if (cp == 0 or not _escapes_needed(cp) or 0xD800 <= cp <= 0xDFFF or cp > 0x10FFFF
                or (hexpoint.startswith("0") and len(hexpoint) > 2)):
            raise ValueError(f"bad EmbeddedUnicodeChar in {text!r}")
        out.append(chr(cp))
        pos = m.end()
    out.append(_unitext_run(text[pos:]))
    decoded = "".join(out)
    if not decoded:
        raise ValueError("empty utf-8 address")
    return decoded


def _unitext_run(run: str) -> str:
    for c in run:
        if ord(c) <= 0x7F and _QCHAR_RUN.fullmatch(c) is None:
            raise ValueError(f"character {c!r} must be escaped as \\x{{{ord(c):X}}}")
    return run


# -- parameters ---------------------------------------------------------------------------------

def _split(option: str) -> tuple[str, str | None]:
    keyword, eq, value = option.partition("=")
    return keyword.upper(), (value if eq else None)


def _printable_ascii(data: bytes) -> bool:
    # RFC 3461 §4.2 and §4.4: "printable (graphic and white space) characters from the US-ASCII
    # repertoire" -- we read that as SP through "~".
    return all(0x20 <= b <= 0x7E for b in data)


def parse_mail_params(options: Iterable[str]) -> MailDsnParams:
    """RET and ENVID from MAIL FROM's ESMTP parameters; other parameters are skipped."""
    ret: Ret | None = None
    envid: str | None = None
    seen: set[str] = set()
    for option in options:
        keyword, value = _split(option)
        if keyword not in ("RET", "ENVID"):
            continue
        if keyword in seen:
            # RFC 5321 §4.1.2 / RFC 3461 §4: a parameter names one value; twice is ambiguous.
            raise DsnParameterError(f"{_SYNTAX} {keyword} parameter given more than once")
        seen.add(keyword)
        if keyword == "RET":
            try:
                ret = Ret((value or "").upper())
            except ValueError:
                raise DsnParameterError(
                    f"{_SYNTAX} Bad RET parameter: use RET=FULL or RET=HDRS (RFC 3461 §4.3)"
                ) from None
        else:
            envid = _parse_envid(option, value)
    return MailDsnParams(ret=ret, envid=envid)


def _parse_envid(option: str, value: str | None) -> str:
    if len(option) > MAX_ENVID_PARAMETER:
        raise DsnParameterError(
            f"{_SYNTAX} ENVID parameter too long: at most {MAX_ENVID_PARAMETER} characters "
            "(RFC 3461 §4)")
    try:
        raw = xtext_decode(value or "")
    except ValueError:
        raise DsnParameterError(f"{_SYNTAX} Bad ENVID parameter: not xtext (RFC 3461 §4)") \
            from None
    if not raw or not _printable_ascii(raw):
        raise DsnParameterError(
            f"{_SYNTAX} Bad ENVID parameter: must be printable US-ASCII (RFC 3461 §4.4)")
    return raw.decode("ascii")


def parse_rcpt_params(options: Iterable[str]) -> RcptDsnParams:
    """NOTIFY and ORCPT from RCPT TO's ESMTP parameters; other parameters are skipped."""
    notify: frozenset[NotifyOn] | None = None
    orcpt: OriginalRecipient | None = None
    seen: set[str] = set()
    for option in options:
        keyword, value = _split(option)
        if keyword not in ("NOTIFY", "ORCPT"):
            continue
        if keyword in seen:
            raise DsnParameterError(f"{_SYNTAX} {keyword} parameter given more than once")
        seen.add(keyword)
        if keyword == "NOTIFY":
            notify = _parse_notify(value or "")
        else:
            orcpt = _parse_orcpt(option, value or "")
    return RcptDsnParams(notify=notify, orcpt=orcpt)


def _parse_notify(value: str) -> frozenset[NotifyOn]:
    # RFC 3461 §4.1: "NEVER" alone, or a comma-separated list of SUCCESS, FAILURE, DELAY.
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return frozenset()
    try:
        conditions = [NotifyOn(w) for w in words]
    except ValueError:
        raise DsnParameterError(
            f"{_SYNTAX} Bad NOTIFY parameter: NEVER, or a list of SUCCESS, FAILURE, DELAY "
            "(RFC 3461 §4.1)") from None
    if len(set(conditions)) != len(conditions):
        raise DsnParameterError(f"{_SYNTAX} Bad NOTIFY parameter: a condition is repeated")
    return frozenset(conditions)


_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")  # RFC 3461 §4.2: addr-type = atom


def _parse_orcpt(option: str, value: str) -> OriginalRecipient:
    if len(option) > MAX_ORCPT_PARAMETER:
        raise DsnParameterError(
            f"{_SYNTAX} ORCPT parameter too long: at most {MAX_ORCPT_PARAMETER} characters "
            "(RFC 3461 §4)")
    addr_type, semi, encoded = value.partition(";")
    if not semi or _ADDR_TYPE.fullmatch(addr_type) is None or not encoded:
        raise DsnParameterError(
            f"{_SYNTAX} Bad ORCPT parameter: use ORCPT=addr-type;xtext (RFC 3461 §4.2)")
    addr_type = addr_type.lower()
    if addr_type == "utf-8":
        # RFC 6533 §3: the utf-8 address type carries utf-8-addr-xtext (or -unitext under
        # SMTPUTF8) instead of xtext.
        try:
            return OriginalRecipient("utf-8", utf8_addr_decode(encoded))
        except ValueError:
            raise DsnParameterError(
                f"{_SYNTAX} Bad ORCPT parameter: not utf-8-addr-xtext (RFC 6533 §3)") from None
    try:
        raw = xtext_decode(encoded)
    except ValueError:
        raise DsnParameterError(f"{_SYNTAX} Bad ORCPT parameter: not xtext (RFC 3461 §4.2)") \
            from None
    if not _printable_ascii(raw):
        raise DsnParameterError(
            f"{_SYNTAX} Bad ORCPT parameter: the address must be printable US-ASCII "
            "(RFC 3461 §4.2)")
    return OriginalRecipient(addr_type, raw.decode("ascii"))


def orcpt_for(address: str) -> OriginalRecipient:
    """The ORCPT a relay may add for a recipient that came without one (RFC 3461 §5.2.1)."""
    if address.isascii():
        return OriginalRecipient("rfc822", address)
    return OriginalRecipient("utf-8", address)


def render_orcpt(orcpt: OriginalRecipient) -> str:
    """The ORCPT parameter as sent to a next hop."""
    if orcpt.addr_type == "utf-8":
        return f"ORCPT=utf-8;{utf8_addr_xtext_encode(orcpt.address)}"
    return f"ORCPT={orcpt.addr_type};{xtext_encode(orcpt.address.encode('ascii'))}"


def render_mail_params(params: MailDsnParams) -> list[str]:
    """MAIL FROM parameters for a next hop that offers DSN: only what the client gave."""
    out: list[str] = []
    if params.ret is not None:
        out.append(f"RET={params.ret.value}")
    if params.envid is not None:
        out.append(f"ENVID={xtext_encode(params.envid.encode('ascii'))}")
    return out


_NOTIFY_ORDER = (NotifyOn.SUCCESS, NotifyOn.FAILURE, NotifyOn.DELAY)


def render_rcpt_params(params: RcptDsnParams) -> list[str]:
    """RCPT TO parameters for a next hop that offers DSN: only what the client gave."""
    out: list[str] = []
    if params.notify is not None:
        words = [n.value for n in _NOTIFY_ORDER if n in params.notify] or ["NEVER"]
        out.append("NOTIFY=" + ",".join(words))
    if params.orcpt is not None:
        out.append(render_orcpt(params.orcpt))
    return out
