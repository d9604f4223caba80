"""Where a delivery goes: recipients grouped per destination, then the hosts to try, in order.

`plan()` groups recipients by route (one transaction per MX domain, one per smarthost) and TLS
policy. `NextHops.resolve()` turns a destination into a `HopPlan`: the MX hosts (RFC 5321 §5.1)
filtered by the domain's MTA-STS policy (RFC 8461 §4.1, §5), or the smarthost; its `targets()`
looks addresses up lazily, one host at a time, so a good first MX costs one address lookup.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mailkeep.proto.address import is_numeric_domain
from mailkeep.relay.dns import DnsFailure, MxHost, Resolver
from mailkeep.relay.envelope import Recipient
from mailkeep.relay.mtasts import MtaSts
from mailkeep.relay.results import PermanentFailure, RecipientResult, Reply
from mailkeep.relay.routes import (
    DeliveryConfig,
    MxRoute,
    Route,
    SmarthostRoute,
    TlsPolicy,
    domain_key,
    is_hostname,
)

log = logging.getLogger("mailkeep.relay")

# RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per transaction, so a
# client that sends no more than 100 never meets a "too many recipients" limit it can avoid.
MAX_RECIPIENTS_PER_TRANSACTION = 100
# Characters that cannot appear unquoted in an envelope address on the wire (RFC 5321 §4.1.2)
# and would let an address smuggle parameters or commands.
_BAD_ADDRESS_CHARS = re.compile(r"[\s<>\"\x00-\x1f\x7f]")


class RoutingFailure(Exception):
    """No host can be tried for this destination; `reply` is for every recipient."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Destination:
    route: Route
    domains: tuple[str, ...]  # recipient domains, lookup form (one for an MX route)
    tls_policy: TlsPolicy
    recipients: tuple[Recipient, ...]

    @property
    def name(self) -> str:
        if isinstance(self.route, SmarthostRoute):
            return f"route {self.route.name} ({self.route.host})"
        return self.domains[0]


@dataclass(frozen=True, slots=True)
class Target:
    host: str          # the name TLS verification checks, and logs show
    address: str
    port: int
    implicit_tls: bool

    def __str__(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.host} [{addr}]:{self.port}" if self.host != self.address \
            else f"[{addr}]:{self.port}"


def address_problem(address: str) -> str | None:
    """Why an envelope address cannot go on the wire, or None."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return f"{address!r} is not local-part@domain"
    if _BAD_ADDRESS_CHARS.search(local) and not (local.startswith('"') and local.endswith('"')):
        return f"{address!r} has characters an unquoted local part cannot carry"
    if domain.startswith("["):
        # DEVIATION (RFC 5321 §4.1.3): address literals are not routed outbound; they are
        # rare in legitimate mail and bypass MX, TLS and MTA-STS policy alike.
        return f"{address!r}: address literals are not delivered to"
    try:
        key = domain_key(domain)
    except ValueError as exc:
        return str(exc)
    if not is_hostname(key):
        return f"{domain!r} is not a domain name"
    if is_numeric_domain(key):
        # RFC 5321 §4.1.3, RFC 1123 §2.1: an IP address without brackets is neither a
        # domain nor a literal; never looked up or connected to (refused at RCPT as well).
        return f"{domain!r} is an IP address, not a domain name"
    return None


def plan(config: DeliveryConfig, recipients: Sequence[Recipient]
         ) -> tuple[list[Destination], list[RecipientResult]]:
    """Group recipients into transactions; recipients that cannot be sent fail at once."""
    groups: dict[tuple[str, str, TlsPolicy], list[Recipient]] = {}
    domains: dict[tuple[str, str, TlsPolicy], list[str]] = {}
    routes: dict[str, Route] = {}
    refused: list[RecipientResult] = []
    for rcpt in recipients:
        problem = address_problem(rcpt.address)
        if problem is not None:
            # RFC 3463 X.1.3: "Bad destination mailbox address syntax".
            refused.append(PermanentFailure(rcpt.address, Reply.local(553, "5.1.3", problem),
                                            None))
            continue
        domain = domain_key(rcpt.domain)
        route = config.route_for(domain)
        policy = config.tls_policy_for(domain, route)
        key = (route.name, domain if isinstance(route, MxRoute) else "", policy)
        routes[route.name] = route
        groups.setdefault(key, []).append(rcpt)
        seen = domains.setdefault(key, [])
        if domain not in seen:
            seen.append(domain)
    destinations = []
    for key, members in groups.items():
        for start in range(0, len(members), MAX_RECIPIENTS_PER_TRANSACTION):
            chunk = tuple(members[start:start + MAX_RECIPIENTS_PER_TRANSACTION])
            destinations.append(Destination(routes[key[0]], tuple(domains[key]), key[2], chunk))
    return destinations, refused


Lookup = Callable[[str], Awaitable[tuple[str, ...]]]


@dataclass
class HopPlan:
    hosts: list[str]
    port: int
    implicit_tls: bool
    tls_policy: TlsPolicy
    lookup: Lookup
    implicit_mx: bool = False
    failures: list[DnsFailure] = field(default_factory=list)

    async def targets(self) -> AsyncGenerator[Target, None]:
        for host in self.hosts:
            try:
                addresses = await self.lookup(host)
            except DnsFailure as exc:
                log.info("relay: %s", exc)
                self.failures.append(exc)
                continue
            for address in addresses:
                yield Target(host, address, self.port, self.implicit_tls)

    def no_target_reply(self) -> Reply:
        """The reply for every recipient when no host had an address to try."""
        if self.failures and all(not f.temporary for f in self.failures) and self.implicit_mx:
            f = self.failures[0]
            return Reply.local(f.code, f.enhanced, f"{f.text} (and no MX records)")
        if any(f.temporary for f in self.failures):
            f = next(f for f in self.failures if f.temporary)
            return Reply.local(f.code, f.enhanced, f.text)
        # RFC 3463 X.4.4 "Unable to route": kept temporary, since an MX pointing at a name
        # without addresses is a fixable slip, and the queue lifetime bounds the retries.
        return Reply.local(451, "4.4.4", "no mail host of this destination has an address: "
                           + ", ".join(self.hosts))


class NextHops:
    def __init__(self, config: DeliveryConfig, resolver: Resolver,
                 mta_sts: MtaSts | None) -> None:
        self.config = config
        self.resolver = resolver
        self.mta_sts = mta_sts

    async def resolve(self, destination: Destination) -> HopPlan:
        """Raises RoutingFailure when nothing can be tried (NXDOMAIN, null MX, policy)."""
        route = destination.route
        if isinstance(route, SmarthostRoute):
            return HopPlan([route.host], route.port, route.tls == "implicit",
                           destination.tls_policy, self._system_lookup)
        domain = destination.domains[0]
        try:
            mx = await self.resolver.mx(domain)
        except DnsFailure as exc:
            raise RoutingFailure(Reply.local(exc.code, exc.enhanced, exc.text)) from None
        mx = self._drop_self(domain, mx)
        policy = destination.tls_policy
        if self.mta_sts is not None:
            mx, policy = await self._apply_mta_sts(domain, mx, policy)
        return HopPlan([h.name for h in mx], self.config.port, False, policy,
                       self.resolver.addresses, implicit_mx=any(h.implicit for h in mx))

    def _drop_self(self, domain: str, mx: list[MxHost]) -> list[MxHost]:
        """RFC 5321 §5.1: if we are one of the MX hosts, only better-preference ones remain."""
        mine = [h.preference for h in mx if h.name == self.config.helo_name]
        if not mine:
            return mx
        kept = [h for h in mx if h.preference < min(mine)]
        if not kept:
            # RFC 3463 X.4.6 "Routing loop detected".
            raise RoutingFailure(Reply.local(554, "5.4.6", f"mail for {domain} loops back to "
                                             f"this host ({self.config.helo_name} is its MX)"))
        return kept

    async def _apply_mta_sts(self, domain: str, mx: list[MxHost], policy: TlsPolicy
                             ) -> tuple[list[MxHost], TlsPolicy]:
        assert self.mta_sts is not None
        sts = await self.mta_sts.policy(domain)
        if sts is None or sts.mode == "none":
            return mx, policy
        rejected = [h.name for h in mx if not sts.matches(h.name)]
        if sts.mode == "testing":
            # RFC 8461 §5: testing mode reports but never blocks delivery.
            if rejected:
                log.warning("MTA-STS %s (testing): MX %s not in the policy's mx list %s; "
                            "delivering anyway", domain, ", ".join(rejected), ", ".join(sts.mx))
            return mx, policy
        # RFC 8461 §4.1, §4.2, §5: enforce - only matching MX hosts, only with verified TLS.
        kept = [h for h in mx if sts.matches(h.name)]
        if rejected:
            log.warning("MTA-STS %s (enforce): skipping MX %s, not in the policy's mx list %s",
                        domain, ", ".join(rejected), ", ".join(sts.mx))
        if not kept:
            # RFC 8461 §5.1: never a permanent failure before the policy is checked again,
            # so the message waits in the queue (RFC 3463 X.7.5 cryptographic/policy failure).
            raise RoutingFailure(Reply.local(
                451, "4.7.5", f"MTA-STS policy of {domain} (enforce) allows none of its MX "
                f"hosts ({', '.join(h.name for h in mx)}; policy mx {', '.join(sts.mx)})"))
        return kept, "verify"

    async def _system_lookup(self, host: str) -> tuple[str, ...]:
        """A smarthost by the system resolver: /etc/hosts and resolv.conf, as an admin expects.

        Every failure is temporary: a smarthost that does not resolve is our configuration's
        problem, not the recipients'."""
        family = socket.AF_UNSPEC if self.config.ipv6 else socket.AF_INET
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, family=family, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise _SmarthostLookupError(f"smarthost {host} does not resolve: {exc}",
                                        code=451, enhanced="4.4.3") from None
        return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


class _SmarthostLookupError(DnsFailure):
    temporary = True
