"""DNS for outbound mail: MX hosts in order (RFC 5321 §5.1, RFC 7505), their addresses, TXT.

Failures are typed by whether a retry can help: `TemporaryDnsError` (SERVFAIL, timeout, no
server answering) or `PermanentDnsError` (the domain does not exist, or takes no mail). Each
carries the SMTP reply a DSN should show (`code`, `enhanced`, `text`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailkeep.relay.routes import DEFAULT_DNS_TIMEOUT, NameServer

# dnspython's own cache size default (dns.resolver.LRUCache): answers kept until their TTL.
CACHE_SIZE = 100_000
# dnspython's per-server attempt timeout (Resolver.timeout default): retry sooner than lifetime.
PER_SERVER_TIMEOUT = 2.0


class DnsFailure(Exception):
    """A lookup that did not give an answer we can deliver with."""

    temporary: bool = True

    def __init__(self, text: str, *, code: int, enhanced: str) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.enhanced = enhanced


class TemporaryDnsError(DnsFailure):
    temporary = True


class PermanentDnsError(DnsFailure):
    temporary = False


class NullMxError(PermanentDnsError):
    """RFC 7505 §3: the domain publishes `MX 0 .` - it accepts no mail at all."""


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # lookup form, no trailing dot: the name TLS verification and MTA-STS check
    preference: int
    # RFC 5321 §5.1: no MX records, so the domain itself is the mail host ("implicit MX").
    implicit: bool = False


def _temporary(what: str, exc: BaseException) -> TemporaryDnsError:
    # RFC 3463 X.4.3: "Directory server failure" (the name service could not answer).
    return TemporaryDnsError(f"DNS lookup of {what} failed: {_describe(exc)}",
                             code=451, enhanced="4.4.3")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no DNS server answered (SERVFAIL or refused)"
    return type(exc).__name__


class Resolver:
    """dnspython's asyncio resolver set up for mail: no search list, bounded, cached."""

    def __init__(self, nameservers: Sequence[NameServer] = (), *,
                 timeout: float = DEFAULT_DNS_TIMEOUT, ipv6: bool = True,
                 rng: random.Random | None = None, cache: bool = True) -> None:
        # configure=True reads /etc/resolv.conf; configured servers replace it entirely.
        self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers]
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(PER_SERVER_TIMEOUT, timeout)
        if cache:
            self._resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        self.ipv6 = ipv6
        self._rng = rng or random.SystemRandom()

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, or None when the name exists without records of this type (NODATA).

        Raises dns.resolver.NXDOMAIN and the other dnspython errors unchanged."""
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NoAnswer:
            return None

    async def mx(self, domain: str) -> list[MxHost]:
        """The domain's mail hosts in the order to try them.

        RFC 5321 §5.1: lowest preference first, hosts of equal preference in random order;
        with no MX records the domain's own address records are the one host (implicit MX)."""
        try:
            answer = await self._query(domain, "MX")
        except dns.resolver.NXDOMAIN:
            # RFC 3463 X.1.2: "Bad destination system address".
            raise PermanentDnsError(f"domain {domain} does not exist (NXDOMAIN)",
                                    code=550, enhanced="5.1.2") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise _temporary(f"{domain} MX", exc) from None
        if answer is None:
            return [MxHost(domain, 0, implicit=True)]
        records = [(int(r.preference), r.exchange) for r in answer]
        if any(target == dns.name.root for _, target in records):
            real = [(p, t) for p, t in records if t != dns.name.root]
            if not real:
                # RFC 7505 §4.1: a null MX is a permanent failure, 556 with 5.1.10.
                raise NullMxError(f"domain {domain} accepts no mail (null MX, RFC 7505)",
                                  code=556, enhanced="5.1.10")
            # RFC 7505 §3: a null MX must be the only MX; when it is not, ignore it and use
            # the real hosts (what Postfix does) rather than refuse the mail.
            records = real
        best: dict[str, int] = {}
        for preference, target in records:
            name = target.to_text(omit_final_dot=True).lower()
            best[name] = min(preference, best.get(name, preference))
        hosts = sorted((MxHost(n, p) for n, p in best.items()), key=lambda h: h.preference)
        ordered: list[MxHost] = []
        for _, group in groupby(hosts, key=lambda h: h.preference):
            same = list(group)
            self._rng.shuffle(same)  # RFC 5321 §5.1: spread load over equal preferences
            ordered.extend(same)
        return ordered

    async def addresses(self, host: str) -> tuple[str, ...]:
        """The host's IPv6 then IPv4 addresses.

        Raises PermanentDnsError when the name has none (NXDOMAIN or no A/AAAA), and
        TemporaryDnsError when neither lookup could complete."""
        families = ("AAAA", "A") if self.ipv6 else ("A",)
        found: list[str] = []
        failure: BaseException | None = None
        for rdtype in families:
            try:
                answer = await self._query(host, rdtype)
            except dns.resolver.NXDOMAIN:
                break
            except (dns.exception.DNSException, OSError) as exc:
                failure = exc
                continue
            if answer is not None:
                found.extend(r.to_text() for r in answer)
        if found:
            return tuple(dict.fromkeys(found))
        if failure is not None:
            raise _temporary(f"{host} address", failure)
        raise PermanentDnsError(f"host {host} has no address records",
                                code=550, enhanced="5.1.2")

    async def txt(self, name: str) -> list[str] | None:
        """The TXT records of a name, each one's strings joined; None when there are none.

        Raises TemporaryDnsError when the lookup could not complete."""
        try:
            answer = await self._query(name, "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.exception.DNSException, OSError) as exc:
            raise _temporary(f"{name} TXT", exc) from None
        if answer is None:
            return None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
