"""DNS for message authentication: one dnspython resolver behind dkimpy, pyspf and DMARC.

Each library looks names up its own way; this module gives all three the same resolver (the
system's, or a given server -- tests run one on loopback), the same per-query time limit, and
one rule for failures: a name that does not exist or has no such record is an empty answer, and
anything else (time-out, SERVFAIL, no server reachable) is a temporary error, so the verdict
becomes `temperror` instead of a wrong `fail` or `none`.

How each library is pointed at the resolver:
- dkimpy: `DKIM.verify(dnsfunc=...)` and `ARC.verify(dnsfunc=...)` take a lookup function
  (`DkimKeyFetcher`).
- pyspf has no such parameter: `spf.query.dns()` calls the module-level `spf.DNSLookup`.
  Importing this module replaces that function, once, with a dispatcher that reads a context
  variable: inside `spf_resolver(resolver)` (set in the worker thread doing the check) lookups go
  to our resolver; anywhere else pyspf's own lookup runs as before. This is the one
  monkeypatch here; a context variable rather than swapping the function at call time keeps
  concurrent checks in different threads from seeing each other's resolver.
- DMARC is ours (relay/dmarc.py) and calls `txt_records()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import spf

# Per DNS query, including retries and the TCP fallback: dkimpy's own default.
DNS_QUERY_TIMEOUT = 5.0


class DnsTempError(Exception):
    """A lookup that may work later: time-out, SERVFAIL, no reachable server."""


def make_resolver(nameservers: Sequence[str | tuple[str, int]], port: int = 53,
                  timeout: float = DNS_QUERY_TIMEOUT) -> dns.resolver.Resolver:
    """A resolver that asks only `nameservers`: IP addresses (on `port`) or (address, port)
    pairs, each asked on its own port. No servers: the host's (/etc/resolv.conf, read here:
    call it off the event loop). `timeout` bounds each lookup, retries included (the
    operator's `delivery.dns_timeout`): no library's default stretches it."""
    if not nameservers:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        servers: list[str | dns.nameserver.Nameserver] = []
        for ns in nameservers:
            host, own_port = (ns, port) if isinstance(ns, str) else ns
            servers.append(dns.nameserver.Do53Nameserver(str(ipaddress.ip_address(host)),
                                                         own_port))
        resolver.nameservers = servers
        resolver.port = port
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


# When make_resolver() finds neither servers nor a usable resolv.conf for the inbound checks.
NO_INBOUND_RESOLVER = (
    "delivery.dns_servers: none set and this host has no usable /etc/resolv.conf; the "
    "inbound SMTP listener needs DNS for SPF/DKIM/DMARC: set delivery.dns_servers = "
    "[\"192.0.2.53\"] (your resolver)")


def inbound_resolver(servers: Sequence[tuple[str, int]],
                     timeout: float) -> dns.resolver.Resolver:
    """The inbound checks' (SPF, DKIM, DMARC) resolver: the same servers as outbound
    delivery, each on its own port, within the same `delivery.dns_timeout` per lookup; none
    configured: the host's resolv.conf (read here: call it off the loop).
    dns.resolver.NoResolverConfiguration when there is none (NO_INBOUND_RESOLVER says why)."""
    return make_resolver(list(servers), timeout=timeout)


_system: dns.resolver.Resolver | None = None


def system_resolver() -> dns.resolver.Resolver:
    """The host's resolver (/etc/resolv.conf), made once; call it off the event loop."""
    global _system  # noqa: PLW0603 -- one lazily-read resolv.conf per process
    if _system is None:
        resolver = dns.resolver.Resolver()
        resolver.lifetime = DNS_QUERY_TIMEOUT
        _system = resolver
    return _system


def _answer(resolver: dns.resolver.Resolver, name: str, rdtype: str,
            lifetime: float | None = None) -> dns.resolver.Answer | None:
    # The resolver's own lifetime is the ceiling: a library's default (dkimpy asks for 5 s)
    # never stretches what the operator -- or a test -- configured.
    limit = resolver.lifetime if lifetime is None else min(lifetime, resolver.lifetime)
    try:
        return resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False,
                                lifetime=limit)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel):
        return None  # no such name can exist
    except dns.exception.DNSException as e:
        raise DnsTempError(f"{name}/{rdtype}: {type(e).__name__}: {e}") from None


def txt_records(resolver: dns.resolver.Resolver, name: str,
                lifetime: float | None = None) -> list[bytes]:
    """Every TXT record at `name`, each one's strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
    answer = _answer(resolver, name, "TXT", lifetime)
    if answer is None or answer.rrset is None:
        return []
    return [b"".join(rdata.strings) for rdata in answer.rrset]


class DkimKeyFetcher:
    """dkimpy's `dnsfunc`: the key record for NAME, raising DnsTempError on temporary errors.

    dkimpy turns its own DnsTimeoutError into a plain "signature invalid"; our exception
    passes through it, so a DNS outage reads `temperror`, not `fail`. `missing` records whether
    the last lookup found no record (RFC 6376 §6.1.2: no key is a permanent error)."""

    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver
        self.missing = False

    def __call__(self, name: bytes, timeout: float = DNS_QUERY_TIMEOUT) -> bytes | None:
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            self.missing = True
            return None
        records = txt_records(self.resolver, text, timeout)
        self.missing = not records
        return records[0] if records else None


# -- pyspf ----------------------------------------------------------------------------------------

_spf_resolver: contextvars.ContextVar[dns.resolver.Resolver | None] = contextvars.ContextVar(
    "mailkeep_spf_resolver", default=None)
_pyspf_lookup: Callable[..., Any] = spf.DNSLookup


def _spf_lookup(resolver: dns.resolver.Resolver, name: str, qtype: str,
                timeout: float) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's DNSLookup contract (see spf.DNSLookup_dnspython), on our resolver."""
    try:
        answer = _answer(resolver, name, qtype, timeout)
    except DnsTempError as e:
        raise spf.TempError(f"DNS {e}") from None
    if answer is None or answer.rrset is None:
        return []
    out: list[tuple[tuple[str, str], Any]] = []
    for rdata in answer.rrset:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), rdata.strings))
    return out


def _dispatching_lookup(name: str, qtype: str, strict: bool = True,
                        timeout: float = 30) -> list[tuple[tuple[str, str], Any]]:
    resolver = _spf_resolver.get()
    if resolver is None:
        result: list[tuple[tuple[str, str], Any]] = _pyspf_lookup(name, qtype, strict, timeout)
        return result
    return _spf_lookup(resolver, name, qtype, timeout)


if getattr(spf.DNSLookup, "__name__", "") != _dispatching_lookup.__name__:
    spf.DNSLookup = _dispatching_lookup


@contextlib.contextmanager
def spf_resolver(resolver: dns.resolver.Resolver) -> Iterator[None]:
    """Within this block (in this thread's context), pyspf asks `resolver`."""
    token = _spf_resolver.set(resolver)
    try:
        yield
    finally:
        _spf_resolver.reset(token)

