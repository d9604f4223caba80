"""Delivery Status Notifications (RFC 3464): the bounce, the delay notice, the success report.

The delivery runner calls `build_dsn(original, reports, ...)` when recipients have failed,
been delayed past the warning time, or (on request) been delivered. It returns either a `Dsn`
(envelope and bytes to spool and send) or a `NoDsn` with the reason none may be sent:

- never to the null sender: RFC 5321 §4.5.5 ("notifications ... MUST NOT be sent" for a
  message whose reverse-path is null) -- and every DSN we send has the null reverse-path
  itself, so a DSN that fails can never be bounced in turn;
- never about a delivery report (multipart/report; report-type=delivery-status), whatever its
  envelope says: a report about a report is how bounce loops start;
- never to our own MAILER-DAEMON address;
- only for the recipients whose NOTIFY asks for this kind of report (RFC 3461 §4.1).

Every DSN is `multipart/report; report-type=delivery-status` with three parts: human-readable
text, `message/delivery-status`, and the returned message -- whole (`message/rfc822`) when the
sender asked RET=FULL and it fits under `RETURN_CONTENT_LIMIT`, otherwise its header section
(`text/rfc822-headers`). It carries `Auto-Submitted: auto-replied` (RFC 3834 §5).

Pure: no I/O, no clock (the caller passes `now`), no randomness but the MIME boundary and the
Message-ID, which can be supplied.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.message
import email.utils
import re
import secrets
import textwrap
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum

from mailkeep.proto.dsn import (
    MailDsnParams,
    NotifyOn,
    OriginalRecipient,
    Ret,
    effective_notify,
    utf8_addr_xtext_encode,
)
from mailkeep.proto.message import CRLF, parse_header_fields, split_message

# The most of the original message a DSN carries. Exim's bounce_return_size_limit defaults to
# 100K (Postfix's bounce_size_limit to 50 000 bytes): past it only the header section goes back.
RETURN_CONTENT_LIMIT = 100 * 1024
# Diagnostic text kept from a remote reply; RFC 5321 §4.5.3.1.5 reply lines are <= 512 octets,
# and multi-line replies are joined, so a few lines' worth.
MAX_DIAGNOSTIC = 1000
# The delay notice goes out once a message has waited this long (the default; Postfix's
# delay_warning_time is the same idea).
DEFAULT_DELAY_WARNING = dt.timedelta(hours=4)
# RFC 5322 §2.1.1: lines SHOULD be at most 78 characters (we fold field values there) and
# MUST be at most 998.
_FOLD_AT = 78
_MAX_WORD = 900


class Action(Enum):
    """RFC 3464 §2.3.3 action-value."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


# RFC 3464 §2.3.4: the status class must agree with the action.
_STATUS_CLASS = {Action.FAILED: "5", Action.DELAYED: "4", Action.DELIVERED: "2",
                 Action.RELAYED: "2", Action.EXPANDED: "2"}
# RFC 3461 §4.1: which NOTIFY condition asks for which action's report.
_CONDITION = {Action.FAILED: NotifyOn.FAILURE, Action.DELAYED: NotifyOn.DELAY,
              Action.DELIVERED: NotifyOn.SUCCESS, Action.RELAYED: NotifyOn.SUCCESS,
              Action.EXPANDED: NotifyOn.SUCCESS}
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


class NoDsnReason(Enum):
    NULL_SENDER = "the envelope sender is null (<>)"
    DELIVERY_REPORT = "the message is itself a delivery report"
    OWN_DAEMON = "the envelope sender is our own mailer-daemon address"
    NOT_REQUESTED = "no recipient's NOTIFY asks for this report"


@dataclass(frozen=True, slots=True)
class NoDsn:
    """No DSN may be sent, and why (for the log)."""

    reason: NoDsnReason


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What happened to one recipient: the per-recipient fields of RFC 3464 §2.3."""

    final_recipient: str                 # the address we tried to deliver to
    action: Action
    status: str                          # RFC 3463 code, e.g. "5.1.1"; class matches action
    notify: frozenset[NotifyOn] | None = None        # from RCPT NOTIFY (None: not given)
    original_recipient: OriginalRecipient | None = None  # from RCPT ORCPT
    remote_mta: str | None = None        # host name of the MTA that answered
    diagnostic: str | None = None        # its reply, "550 5.1.1 <bob@x>: no such user", or
                                         # our own words ("connection timed out")
    last_attempt: dt.datetime | None = None
    will_retry_until: dt.datetime | None = None

    def __post_init__(self) -> None:
        if _STATUS.fullmatch(self.status) is None or \
                self.status[0] != _STATUS_CLASS[self.action]:
            raise ValueError(f"status {self.status!r} does not fit action {self.action.value}")


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The message the report is about, as the spool holds it (CRLF line ends)."""

    envelope_sender: str                 # "" for the null reverse-path
    content: bytes
    arrival: dt.datetime
    params: MailDsnParams = field(default_factory=MailDsnParams)


@dataclass(frozen=True, slots=True)
class Dsn:
    """A DSN ready to spool: always from the null reverse-path (RFC 5321 §4.5.5)."""

    envelope_recipient: str
    message: bytes
    reported: tuple[RecipientReport, ...]
    needs_8bitmime: bool                 # some part carries 8-bit octets
    needs_smtputf8: bool                 # the recipient address or a header is UTF-8
    envelope_sender: str = ""


# -- loop detection ----------------------------------------------------------------------------

def _header_fields(content: bytes) -> list[tuple[str, str]]:
    header, _ = split_message(content)
    return [(f.key, f.value) for f in parse_header_fields(header)]


def _content_type(value: str) -> email.message.Message:
    holder = email.message.Message()
    holder["Content-Type"] = value
    return holder


def is_delivery_report(content: bytes) -> bool:
    """Is this message a DSN (RFC 3464 §1; RFC 6533's global variant too)?"""
    for key, value in _header_fields(content):
        if key == "content-type":
            ctype = _content_type(value)
            report_type = ctype.get_param("report-type")
            return ctype.get_content_type() == "multipart/report" and \
                isinstance(report_type, str) and \
                report_type.lower() in ("delivery-status", "global-delivery-status")
    return False


def auto_submitted(content: bytes) -> str | None:
    """The Auto-Submitted keyword (RFC 3834 §5), lower-cased, or None when absent."""
    for key, value in _header_fields(content):
        if key == "auto-submitted":
            return value.split(";", 1)[0].split("(", 1)[0].strip().lower()
    return None


def is_automatic(content: bytes) -> bool:
    """RFC 3834 §5: anything but "no" marks a message no responder should answer."""
    keyword = auto_submitted(content)
    return keyword is not None and keyword != "no"


def suppression_reason(envelope_sender: str, content: bytes,
                       daemon_addresses: Collection[str] = ()) -> NoDsnReason | None:
    """Why no DSN may be sent about this message at all, or None if one may."""
    sender = envelope_sender.strip().strip("<>")
    if not sender:
        # RFC 5321 §4.5.5: never a notification to the null reverse-path.
        return NoDsnReason.NULL_SENDER
    if sender.lower() in {a.lower() for a in daemon_addresses}:
        return NoDsnReason.OWN_DAEMON
    if is_delivery_report(content):
        # A DSN that somehow travels with a non-null sender is still a DSN: reporting on it
        # is the first turn of a loop.
        return NoDsnReason.DELIVERY_REPORT
    return None


def wants_report(report: RecipientReport) -> bool:
    """RFC 3461 §4.1: does this recipient's NOTIFY ask for a report of this action?"""
    return _CONDITION[report.action] in effective_notify(report.notify)


def delay_notice_due(arrival: dt.datetime, now: dt.datetime, *, already_sent: bool,
                     after: dt.timedelta = DEFAULT_DELAY_WARNING) -> bool:
    """One delay notice per message, once it has waited `after` in the queue."""
    return not already_sent and now - arrival >= after


# -- building ----------------------------------------------------------------------------------

def build_dsn(original: OriginalMessage, reports: Sequence[RecipientReport], *,
              reporting_mta: str, now: dt.datetime, from_address: str | None = None,
              return_limit: int = RETURN_CONTENT_LIMIT, message_id: str | None = None,
              boundary: str | None = None) -> Dsn | NoDsn:
    """Build the DSN about `reports` for the sender of `original`, or say why there is none.

    `reporting_mta` is our host name (Reporting-MTA, the From domain); `now` must be aware."""
    daemon = from_address or f"MAILER-DAEMON@{reporting_mta}"
    reason = suppression_reason(original.envelope_sender, original.content, (daemon,))
    if reason is not None:
        return NoDsn(reason)
    chosen = tuple(r for r in reports if wants_report(r))
    if not chosen:
        return NoDsn(NoDsnReason.NOT_REQUESTED)

    recipient = original.envelope_sender.strip().strip("<>")
    failed = any(r.action is Action.FAILED for r in chosen)
    # RFC 3461 §4.3: RET names what a *failure* report returns; other reports, and a message
    # past the size cap, get the header section only.
    header, _ = split_message(original.content)
    full = (failed and original.params.ret is Ret.FULL
            and len(original.content) <= return_limit)
    too_big = failed and original.params.ret is Ret.FULL and not full
    returned, truncated = (original.content, False) if full else _cap(header, return_limit)

    human = _human_text(reporting_mta, chosen, recipient=recipient, too_big=too_big,
                        truncated=truncated, size=len(original.content), limit=return_limit)
    status = _delivery_status(reporting_mta, original, chosen)
    human_part = _text_part(human)
    returned_part = _returned_part(returned, full)
    bnd = boundary or _boundary(human_part, status, returned_part)

    subject = ("Undelivered Mail Returned to Sender" if failed
               else "Delayed Mail (still being retried)"
               if any(r.action is Action.DELAYED for r in chosen)
               else "Successful Mail Delivery Report")
    mid = message_id or f"<{secrets.token_hex(16)}@{reporting_mta}>"
    head = [
        f"From: Mail Delivery System <{daemon}>",
        f"To: {_clean(recipient)}",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(now)}",
        f"Message-ID: {mid}",
        *_threading(original.content),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{bnd}"',
    ]
    body = b"".join([
        b"This is a MIME-encapsulated message.\r\n\r\n",
        f"--{bnd}\r\n".encode(), human_part, b"\r\n",
        f"--{bnd}\r\n".encode(),
        b"Content-Type: message/delivery-status\r\n\r\n", status, b"\r\n",
        f"--{bnd}\r\n".encode(), returned_part, b"\r\n",
        f"--{bnd}--\r\n".encode(),
    ])
    message = "\r\n".join(head).encode() + b"\r\n\r\n" + body
    return Dsn(
        envelope_recipient=recipient,
        message=message,
        reported=chosen,
        needs_8bitmime=not returned.isascii(),
        needs_smtputf8=not recipient.isascii() or not header.isascii(),
    )


def _cap(header: bytes, limit: int) -> tuple[bytes, bool]:
    """The header section, cut at a line end within `limit` if it is longer."""
    if len(header) <= limit:
        return header, False
    cut = header.rfind(CRLF, 0, limit - 1)
    return (header[: cut + 2] if cut >= 0 else b""), True


def _boundary(*parts: bytes) -> str:
    while True:
        candidate = f"=_dsn_{secrets.token_hex(12)}"
        if not any(candidate.encode() in p for p in parts):
            return candidate


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(text: str) -> str:
    """One line, no control characters: nothing from outside may start a header field."""
    return _CONTROL.sub(" ", text).strip()


def _ascii(text: str) -> str:
    """message/delivery-status is US-ASCII (RFC 3464 §2.1.1)."""
    return "".join(c if c.isascii() else "?" for c in _clean(text))


def _typed_address(address: str, addr_type: str = "rfc822") -> str:
    """`type; address` for Original- and Final-Recipient (RFC 3464 §2.3.1, §2.3.2).

    A non-ASCII address becomes RFC 6533's `utf-8` type in utf-8-addr-xtext, so the report
    stays 7-bit: this is how UTF-8 addresses degrade."""
    if addr_type == "utf-8" or not address.isascii():
        return f"utf-8; {utf8_addr_xtext_encode(address)}"
    return f"{_ascii(addr_type)}; {_ascii(address)}"


def _fold(name: str, value: str) -> str:
    """`Name: value`, folded at spaces near 78 columns (RFC 5322 §2.2.3).

    A word is cut at `_MAX_WORD` so no line passes the 998-octet limit (RFC 5322 §2.1.1);
    no address that fits an SMTP path (RFC 5321 §4.5.3.1.3) comes near it, even escaped."""
    lines: list[str] = []
    line = f"{name}:"
    first = True
    for word in value.split(" "):
        if not word:
            continue
        if not first and len(line) + 1 + len(word) > _FOLD_AT:
            lines.append(line)
            line = ""
        line += " " + word[:_MAX_WORD]
        first = False
    lines.append(line)
    return "\r\n".join(lines)


def _date(value: dt.datetime) -> str:
    return email.utils.format_datetime(value)


def _delivery_status(reporting_mta: str, original: OriginalMessage,
                     reports: Sequence[RecipientReport]) -> bytes:
    per_message: list[str] = []
    if original.params.envid is not None:
        # RFC 3464 §2.2.1: the ENVID the sender gave (we show it decoded from xtext).
        per_message.append(_fold("Original-Envelope-Id", _ascii(original.params.envid)))
    per_message.append(f"Reporting-MTA: dns; {_ascii(reporting_mta)}")
    per_message.append(f"Arrival-Date: {_date(original.arrival)}")
    blocks = ["\r\n".join(per_message)]
    for r in reports:
        fields: list[str] = []
        if r.original_recipient is not None:
            fields.append(_fold("Original-Recipient", _typed_address(
                r.original_recipient.address, r.original_recipient.addr_type)))
        fields.append(_fold("Final-Recipient", _typed_address(r.final_recipient)))
        fields.append(f"Action: {r.action.value}")
        fields.append(f"Status: {r.status}")
        if r.remote_mta:
            fields.append(_fold("Remote-MTA", f"dns; {_ascii(r.remote_mta)}"))
        if r.diagnostic:
            fields.append(_fold("Diagnostic-Code", _diagnostic_code(r.diagnostic)))
        if r.last_attempt is not None:
            fields.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.will_retry_until is not None:
            fields.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
        blocks.append("\r\n".join(fields))
    return ("\r\n\r\n".join(blocks) + "\r\n").encode("ascii")


_SMTP_REPLY = re.compile(r"[2-5]\d\d(?:[ -]|$)")


def _diagnostic_code(text: str) -> str:
    """RFC 3464 §2.3.6: `smtp;` for a remote SMTP reply, our own type for anything else
    (a connection that timed out has no reply code)."""
    diagnostic = _ascii(_diagnostic(text))
    kind = "smtp" if _SMTP_REPLY.match(diagnostic) else "X-mailkeep"
    return f"{kind}; {diagnostic}"


def _diagnostic(text: str) -> str:
    joined = _clean(text)
    return joined if len(joined) <= MAX_DIAGNOSTIC else joined[: MAX_DIAGNOSTIC - 3] + "..."


_INTRO = {
    Action.FAILED: "could not be delivered to one or more recipients. This is a permanent "
                   "error; the message will not be retried",
    Action.DELAYED: "has not yet been delivered to one or more recipients. Delivery is still "
                    "being attempted; you do not need to send it again",
    Action.DELIVERED: "was delivered to the recipients below, as you asked to be told",
    Action.RELAYED: "was passed on to a system that will not report delivery, for the "
                    "recipients below",
    Action.EXPANDED: "was delivered to the recipients below, which forward it on",
}


def _human_text(reporting_mta: str, reports: Sequence[RecipientReport], *, recipient: str,
                too_big: bool, truncated: bool, size: int, limit: int) -> str:
    paragraphs: list[list[str]] = [[f"This is the mail system at {_clean(reporting_mta)}."]]
    for action in Action:
        group = [r for r in reports if r.action is action]
        if not group:
            continue
        paragraphs.append([f"Your message {_INTRO[action]}:"])
        for r in group:
            entry = [f"<{_clean(r.final_recipient)}>: {action.value} ({r.status})"]
            if r.remote_mta:
                entry.append(f"  reported by {_clean(r.remote_mta)}:")
            if r.diagnostic:
                entry.append(f"  {_diagnostic(r.diagnostic)}")
            if r.will_retry_until is not None:
                entry.append(f"  retrying until {_date(r.will_retry_until)}")
            paragraphs.append(entry)
    if too_big:
        paragraphs.append([f"Your message ({size} bytes) is larger than the {limit} bytes a "
                           "report returns, so only its headers are attached."])
    elif truncated:
        paragraphs.append([f"Only the first {limit} bytes of the message's headers are "
                           "attached."])
    paragraphs.append([f"This report went to <{_clean(recipient)}>, the message's return "
                       "address."])
    out: list[str] = []
    for paragraph in paragraphs:
        for line in paragraph:
            indent = " " * (len(line) - len(line.lstrip(" ")) + 2) if line.startswith(" ") \
                else "  "
            out.extend(textwrap.wrap(line, width=_FOLD_AT - 2, subsequent_indent=indent,
                                     break_long_words=True, break_on_hyphens=False))
        out.append("")
    return "\r\n".join(out)


def _text_part(text: str) -> bytes:
    if text.isascii():
        return (b"Content-Type: text/plain; charset=us-ascii\r\n"
                b"Content-Transfer-Encoding: 7bit\r\n\r\n" + text.encode("ascii"))
    # Keep the report 7-bit where we can: UTF-8 text (an internationalised address) as base64.
    encoded = base64.encodebytes(text.encode("utf-8", "surrogateescape"))
    return (b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded.replace(b"\n", CRLF))


def _returned_part(returned: bytes, full: bool) -> bytes:
    ctype = b"message/rfc822" if full else b"text/rfc822-headers"
    # RFC 2046 §5.2.1: message/rfc822 is 7bit, 8bit or binary -- never base64; an 8-bit
    # original travels as 8bit (the sender's MTA needs 8BITMIME: see Dsn.needs_8bitmime).
    cte = b"7bit" if returned.isascii() else b"8bit"
    if returned and not returned.endswith(CRLF):
        returned += CRLF
    return b"Content-Type: " + ctype + b"\r\nContent-Transfer-Encoding: " + cte + \
        b"\r\n\r\n" + returned


_MSGID = re.compile(r"<[\x21-\x3d\x3f-\x7e]{1,250}>")


def _threading(content: bytes) -> list[str]:
    """In-Reply-To and References naming the original, so mail readers thread the report."""
    for key, value in _header_fields(content):
        if key == "message-id":
            m = _MSGID.search(value)
            if m is not None:
                return [f"In-Reply-To: {m.group(0)}", f"References: {m.group(0)}"]
            return []
    return []
