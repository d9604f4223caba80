"""Connector policy decisions (like Exchange receive connectors), made without any I/O.

Every SMTP listener is one of three kinds (config.model.ListenerConfig):

    submission  people: AUTH required, any destination, only the account's own addresses
    smtp        the internet's mail for us (an MX): anonymous, local recipients only
    relay       applications: `clients` networks only, `auth` none/optional/required,
                envelope and header senders limited to `senders` (and, once logged in, the
                account's own addresses), other domains only with `may_relay`

The server asks these functions and says what they say.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from mailkeep.proto.address import canonical, has_routing_characters, split_address

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SenderRule:
    """Who may appear as the sender on a connection: the account's addresses (after AUTH),
    `patterns` ("@domain" or "user@domain"), or anyone (`anyone`: the inbound MX)."""

    addresses: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    anyone: bool = False

    def allows(self, address: str) -> bool:
        if self.anyone:
            return True
        wanted = canonical(address)
        if wanted in self.addresses:
            return True
        domain = split_address(wanted)[1]
        return any(p == wanted or (p.startswith("@") and p[1:] == domain)
                   for p in self.patterns)


def client_allowed(address: str, networks: Iterable[IpNetwork]) -> bool:
    """Is the client address inside one of the networks (IPv4-mapped IPv6 counts as IPv4)?"""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def envelope_sender_refusal(rule: SenderRule, mail_from: str) -> str | None:
    """RFC 6409 §6.1 (and the same rule for application connectors): the reply refusing
    this envelope sender, or None."""
    if rule.allows(mail_from):
        return None
    return (f"553 5.7.1 Sender address <{mail_from}> is not yours to use on this "
            "connection; use one of your own addresses")


def relay_refusal(address: str) -> str:
    """An address in another domain on a connector that may not relay."""
    return f"554 5.7.1 <{address}>: relay access denied"


def fallback_refusal(address: str) -> str | None:
    """Split delivery hands unknown local parts of a domain to another server (the legacy
    one). An address that carries a route in its local part ("carol%remote.example@local",
    "remote.example!carol@local", '"carol@remote.example"@local') is refused instead: that
    server may read the route and relay the message on (the percent hack, RFC 1123
    §5.2.16; bang paths), which would make us the front door of an open relay. RFC 5321
    §3.6.1: a server MAY decline addresses that specify source routes; we do, here."""
    if not has_routing_characters(address):
        return None
    # RFC 3463 X.7.1: delivery not authorized, message refused.
    return (f"550 5.7.1 <{address}>: source-routed addresses (% ! or a quoted @) are not "
            "forwarded")
