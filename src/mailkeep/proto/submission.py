"""Submission policy (RFC 6409): who may send what, decided without any I/O."""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from dataclasses import dataclass
from enum import Enum

from mailkeep.proto.address import canonical
from mailkeep.proto.message import (
    addresses_of,
    has_field,
    parse_header_fields,
    remove_fields,
    splice_headers,
    split_message,
)


class RecipientKind(Enum):
    LOCAL = "local"
    REMOTE = "remote"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A policy refusal: the full SMTP reply line to send."""

    reply: str


@dataclass(frozen=True, slots=True)
class TlsInfo:
    version: str
    cipher: str
    bits: int


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _owns(owned: tuple[str, ...], address: str) -> bool:
    return canonical(address) in owned


def classify_recipient(address: str, local_domains: tuple[str, ...]) -> RecipientKind:
    return RecipientKind.LOCAL if domain_of(address) in local_domains else RecipientKind.REMOTE


def check_envelope_sender(owned: tuple[str, ...], mail_from: str) -> Refusal | None:
    """RFC 6409 §6.1: the MSA checks that the submitter may use this sender address."""
    if not _owns(owned, mail_from):
        return Refusal(f"553 5.7.1 Sender address <{mail_from}> is not yours to use; "
                       "use one of your account's addresses")
    return None


def check_header_senders(owned: tuple[str, ...], send_as_others: bool,
                         message: bytes) -> Refusal | None:
    """From (and Sender, if present) must name the account's own addresses.

    RFC 5322 §3.6: exactly one From field. Several From fields are how spoofs slip past
    filters that read only the first, so they are refused outright."""
    header, _ = split_message(message)
    fields = parse_header_fields(header)
    if any(f.name == "" for f in fields):
        return Refusal("550 5.6.0 Malformed header section: a header line has no field name")
    if sum(1 for f in fields if f.key == "from") > 1:
        return Refusal("550 5.6.0 More than one From header field (RFC 5322 §3.6)")
    if sum(1 for f in fields if f.key == "sender") > 1:
        return Refusal("550 5.6.0 More than one Sender header field (RFC 5322 §3.6)")
    if send_as_others:
        return None
    for key in ("from", "sender"):
        found = addresses_of(fields, key)
        if found is None:
            return Refusal(f"550 5.6.0 Cannot parse the {key.title()} header field")
        stranger = next((a for a in found if not _owns(owned, a)), None)
        if stranger is not None:
            return Refusal(f"553 5.7.1 {key.title()} header address <{stranger}> is not yours "
                           "to use")
    return None


def _header_safe(text: str, allowed: str) -> str:
    """Keep only characters that cannot break a header line: HELO and addresses are
    client-controlled, and a CR, LF or quote there would let a client forge trace lines."""
    return "".join(c for c in text if (c.isalnum() and c.isprintable()) or c in allowed)


def received_field(*, helo: str, peer_ip: str, hostname: str, queue_id: str,
                   tls: TlsInfo | None, authenticated: bool, recipients: list[str],
                   now: dt.datetime) -> bytes:
    """RFC 5321 §4.4 trace field; "with" per RFC 3848 (ESMTPSA = ESMTP + TLS + AUTH)."""
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    safe_helo = _header_safe(helo, ".-_[]:") or "unknown"
    # RFC 5321 §4.1.3: an IPv6 address literal is tagged "IPv6:".
    literal = f"IPv6:{peer_ip}" if ":" in peer_ip else peer_ip
    lines = [f"Received: from {safe_helo} ([{literal}])", f"\tby {hostname} (mailkeep)"
             f" with {protocol} id {queue_id}"]
    if tls:
        bits = f"{tls.bits}/{tls.bits} bits"
        lines.append(f"\t(using {tls.version} with cipher {tls.cipher} ({bits}))")
    # RFC 5321 §7.2: naming every recipient would disclose Bcc; name one only when alone.
    tail = f"; {email.utils.format_datetime(now)}"
    if len(recipients) == 1:
        lines.append(f"\tfor <{_header_safe(recipients[0], '.-_+@=!#$%&*/?^`{|}~')}>{tail}")
    else:
        lines[-1] += tail
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def complete_message(message: bytes, *, received: bytes, hostname: str, mail_from: str,
                     now: dt.datetime) -> bytes:
    """RFC 6409 §8.2-8.3: add Date and Message-ID when missing; From from the envelope.

    RFC 5321 §4.4: Return-Path is added by the final delivery, from the envelope; one sent
    by the client would be a forged trace field, so it is removed."""
    message = remove_fields(message, "return-path")
    header, _ = split_message(message)
    fields = parse_header_fields(header)
    append: list[bytes] = []
    if not has_field(fields, "from"):
        append.append(f"From: <{mail_from}>\r\n".encode())
    if not has_field(fields, "date"):
        append.append(f"Date: {email.utils.format_datetime(now)}\r\n".encode())
    if not has_field(fields, "message-id"):
        append.append(f"Message-ID: <{uuid.uuid4().hex}@{hostname}>\r\n".encode())
    return splice_headers(message, [received], append)
