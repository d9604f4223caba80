"""Helpers for outbound delivery tests: a [delivery] config pointed at the stubs, and send().

    config = delivery_config(tmp_path, dns, port=up.port, tls_policy={"partner.test": "verify"})
    results = await send(OutboundClient(config), ["bob@partner.test"])
"""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep.relay.client import OutboundClient
from mailkeep.relay.envelope import OutboundMessage, Recipient
from mailkeep.relay.results import RecipientResult
from mailkeep.relay.routes import DeliveryConfig, parse_delivery
from tests.support.dnsstub import DnsStub, Zone

HELO = "relay.mailkeep.test"
MESSAGE = (b"From: alice@example.test\r\nTo: bob@partner.test\r\nSubject: hello\r\n"
           b"Message-ID: <1@example.test>\r\n\r\nHello Bob.\r\n.leading dot\r\n")
# Tests keep timeouts short so that a stall ends quickly; none asserts on elapsed time.
FAST = {"connect_timeout": 2.0, "command_timeout": 5.0, "data_timeout": 5.0, "dns_timeout": 2.0}


def delivery_config(base: Path, dns: DnsStub | None, *, port: int = 25,
                    **delivery: Any) -> DeliveryConfig:
    """parse_delivery() of a [delivery] table using the DNS stub; fails on any problem."""
    raw: dict[str, Any] = {**FAST, "helo_name": HELO, "port": port, **delivery}
    if dns is not None:
        raw.setdefault("dns_servers", [dns.address])
    config, problems = parse_delivery(raw, base)
    assert problems == [], problems
    return config


def message(data: bytes = MESSAGE, **kwargs: Any) -> OutboundMessage:
    kwargs.setdefault("sender", "alice@example.test")
    kwargs.setdefault("id", "test")
    return OutboundMessage(data=data, **kwargs)


async def send(client: OutboundClient, recipients: list[str | Recipient],
               msg: OutboundMessage | None = None) -> list[RecipientResult]:
    """Plan and deliver like the runner will: every destination, results in plan order."""
    rcpts = [r if isinstance(r, Recipient) else Recipient(r) for r in recipients]
    destinations, results = client.plan(rcpts)
    for destination in destinations:
        results += await client.deliver(destination, msg or message())
    return results


# -- daemon-level relay tests -----------------------------------------------------------------

REMOTE = "partner.test"


# The [delivery] table of a daemon whose MX delivery goes to `port` on loopback through the
# DNS stub: short timeouts, a fast retry schedule (every `retry` seconds), no delay notices.
def daemon_delivery(dns: DnsStub, port: int, *, retry: float = 0.3,
                    **extra: Any) -> dict[str, Any]:
    return {**FAST, "dns_servers": [dns.address], "port": port, "retry_schedule": [retry],
            "delay_warning": 0, "mta_sts": False, **extra}


def mx_zone(*domains: str) -> Zone:
    """Every domain's MX is mx.DOMAIN at 127.0.0.1 (the fake upstream's address)."""
    zone = Zone()
    for domain in domains or (REMOTE,):
        zone.mx(domain, (10, f"mx.{domain}")).a(f"mx.{domain}", "127.0.0.1")
    return zone


@dataclass
class RecipientStatus:
    fields: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.fields[key.lower()]

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key.lower(), default)


@dataclass
class ParsedDsn:
    message: email.message.Message
    per_message: dict[str, str]
    recipients: list[RecipientStatus]
    returned: email.message.Message | None   # the third part (headers or whole message)

    def recipient(self, address: str) -> RecipientStatus:
        for r in self.recipients:
            if r["Final-Recipient"].split(";", 1)[1].strip().lower() == address.lower():
                return r
        raise KeyError(address)


def _status_fields(text: str) -> list[dict[str, str]]:
    """RFC 3464 §2.1: groups of fields separated by blank lines, folded lines unfolded."""
    groups: list[dict[str, str]] = []
    for block in re.split(r"\r?\n\r?\n", text.strip()):
        fields: dict[str, str] = {}
        for line in re.sub(r"\r?\n[ \t]+", " ", block).splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        if fields:
            groups.append(fields)
    return groups


def parse_dsn(raw: bytes) -> ParsedDsn:
    """A delivery report parsed back with Python's email package (RFC 3464 / RFC 6522)."""
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) >= 2, parts
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    # The email package parses message/delivery-status into header blocks; read it raw.
    body = status.as_bytes().split(b"\n\n", 1)[1].decode("ascii")
    groups = _status_fields(body)
    returned = None
    if len(parts) > 2:
        third = parts[2]
        if third.get_content_type() == "message/rfc822":
            inner = third.get_payload()
            returned = inner[0] if isinstance(inner, list) else None
        else:
            returned = email.message_from_bytes(third.get_payload(decode=True) or b"")
    return ParsedDsn(msg, groups[0], [RecipientStatus(g) for g in groups[1:]], returned)


def mailbox_messages(root: Path, account: str) -> list[bytes]:
    """The INBOX (new/ and cur/) of an account under DATA_DIR/mail, oldest first."""
    files: list[Path] = []
    for sub in ("new", "cur"):
        folder = root / "mail" / account / sub
        if folder.is_dir():
            files += [p for p in folder.iterdir() if not p.name.startswith(".")]
    return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]


def message_ids(messages: list[bytes]) -> list[str]:
    out = []
    for raw in messages:
        m = re.search(rb"^Message-ID:\s*<([^>]+)>", raw, re.MULTILINE | re.IGNORECASE)
        out.append(m.group(1).decode() if m else "")
    return out


def spool_ids(data_dir: Path) -> list[str]:
    """Entries still in the queue (files without .log)."""
    queue = data_dir / "spool" / "queue"
    if not queue.is_dir():
        return []
    return sorted(p.name for p in queue.iterdir() if "." not in p.name)


def simple_message(message_id: str, *, sender: str = "alice@example.test",
                   to: str = "carol@partner.test", subject: str = "hello",
                   body: str = "Hello.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\n\r\n{body}").encode()
