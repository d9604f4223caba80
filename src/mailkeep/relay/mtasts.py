"""MTA-STS (RFC 8461): a recipient domain's published demand for verified TLS to named MX hosts.

Discovery: TXT `_mta-sts.<domain>` holds `v=STSv1; id=...` (§3.1); the policy itself is at
`https://mta-sts.<domain>/.well-known/mta-sts.txt` (§3.2, §3.3), fetched with a checked
certificate, no redirects, a timeout and a size limit. Policies are cached until max_age and
refetched only when the TXT id changes (§5.1). Applying a policy is nexthop.py's job.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mailkeep.relay.dns import DnsFailure, Resolver
from mailkeep.relay.httpsget import FetchError, https_get
from mailkeep.relay.routes import is_hostname
from mailkeep.relay.tlsclient import build_client_context

log = logging.getLogger("mailkeep.relay")

StsMode = Literal["enforce", "testing", "none"]
POLICY_PATH = "/.well-known/mta-sts.txt"
# RFC 8461 §3.3: "A suggested timeout is one minute, and a suggested maximum policy size
# 64 kilobytes".
FETCH_TIMEOUT = 60.0
MAX_POLICY_SIZE = 64 * 1024
# RFC 8461 §3.2: max_age is at most 31557600 seconds (about one year).
MAX_MAX_AGE = 31_557_600
# RFC 8461 §3.3: after a failed fetch "implementations may limit further attempts to a period
# of five minutes or longer per version ID".
FETCH_RETRY_INTERVAL = 300.0
# Bound on cached policies (one per recipient domain seen); oldest dropped first.
MAX_CACHED_POLICIES = 10_000
HTTPS_PORT = 443

_TXT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")  # RFC 8461 §3.1 sts-id
_POLICY_FIELD = re.compile(r"^([A-Za-z0-9_]+)[ \t]*:[ \t]*(.*?)[ \t]*$")


class PolicyError(ValueError):
    """A TXT record or policy file that does not follow RFC 8461 §3."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    domain: str
    id: str
    mode: StsMode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.max_age

    def matches(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact, or "*." standing for exactly one left-most label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the `_mta-sts` TXT records, or None when there is not exactly one.

    RFC 8461 §3.1: records not starting with "v=STSv1;" are discarded; if the number of
    remaining records is not one, the domain is treated as not implementing MTA-STS."""
    sts = [r for r in records if r.startswith("v=STSv1;") or r == "v=STSv1"]
    if len(sts) != 1:
        return None
    fields: dict[str, str] = {}
    for part in sts[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key not in fields:
            fields[key] = value.strip()
    record_id = fields.get("id", "")
    return record_id if _TXT_ID.match(record_id) else None


def parse_policy(text: str) -> tuple[StsMode, tuple[str, ...], int]:
    """(mode, mx patterns, max_age) from a policy body; raises PolicyError.

    RFC 8461 §3.2: key/value lines separated by LF or CRLF (erratum 6253), unknown keys
    ignored, "version: STSv1", "mode", "max_age" and - unless mode is none - at least one
    "mx" are required."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        m = _POLICY_FIELD.match(line)
        if not m:
            raise PolicyError(f"malformed policy line {line[:80]!r}")
        key, value = m.group(1), m.group(2)
        if key == "mx":
            mx.append(value)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not STSv1")
    mode = fields.get("mode")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode is {mode!r}, not enforce, testing or none")
    age_text = fields.get("max_age", "")
    if not age_text.isdigit() or len(age_text) > 10:
        raise PolicyError(f"max_age {age_text!r} is not a number of seconds")
    max_age = min(int(age_text), MAX_MAX_AGE)
    for pattern in mx:
        bare = pattern[2:] if pattern.startswith("*.") else pattern
        if not is_hostname(bare):
            raise PolicyError(f"mx {pattern!r} is not a host name or *.domain pattern")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without any mx")
    return mode, tuple(p.lower().rstrip(".") for p in mx), max_age  # type: ignore[return-value]


class MtaSts:
    """Policy discovery and cache. One instance lives as long as the delivery runner."""

    def __init__(self, resolver: Resolver, *, ca_file: Path | None = None,
                 context: ssl.SSLContext | None = None, port: int = HTTPS_PORT,
                 timeout: float = FETCH_TIMEOUT, clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.ca_file = ca_file  # None: the system CA store (the Web PKI, RFC 8461 §3.3)
        self.context = context  # built at the first fetch when not given
        self.port = port
        self.timeout = timeout
        self.clock = clock
        self._cache: dict[str, StsPolicy] = {}
        self._failed: dict[tuple[str, str], float] = {}

    async def policy(self, domain: str) -> StsPolicy | None:
        """The domain's policy in force, or None. Never raises for the domain's faults.

        RFC 8461 §3.3 / §5.1: when discovery or fetching fails, a cached unexpired policy
        stays in force; without one, delivery goes on as if the domain had no policy."""
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expired(now):
            del self._cache[domain]
            cached = None
        try:
            records = await self.resolver.txt(f"_mta-sts.{domain}")
        except DnsFailure as exc:
            log.info("MTA-STS %s: TXT lookup failed (%s)%s", domain, exc,
                     "; using the cached policy" if cached else "")
            return cached
        record_id = parse_txt(records or [])
        if record_id is None:
            # §3.1: an absent record does not withdraw a cached policy before max_age.
            return cached
        if cached is not None and cached.id == record_id:
            return cached
        failed_at = self._failed.get((domain, record_id))
        if failed_at is not None and now - failed_at < FETCH_RETRY_INTERVAL:
            return cached
        try:
            mode, mx, max_age = parse_policy(await self._fetch(domain))
        except (FetchError, PolicyError, DnsFailure) as exc:
            log.warning("MTA-STS %s: policy id %s not fetched: %s%s", domain, record_id, exc,
                        "; using the cached policy" if cached else "")
            self._remember_failure(domain, record_id, now)
            return cached
        self._failed.pop((domain, record_id), None)
        policy = StsPolicy(domain, record_id, mode, mx, max_age, now)
        self._store(policy)
        log.info("MTA-STS %s: policy id %s, mode %s, mx %s, max_age %d", domain, record_id,
                 mode, ", ".join(mx) or "-", max_age)
        return policy

    def cached(self, domain: str) -> StsPolicy | None:
        return self._cache.get(domain)

    async def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        if self.context is None:
            self.context = await asyncio.to_thread(build_client_context, verify=True,
                                                   ca_file=self.ca_file)
        addresses = await self.resolver.addresses(host)
        last: FetchError | None = None
        for address in addresses:
            try:
                response = await https_get(address, self.port, host, POLICY_PATH,
                                           context=self.context, timeout=self.timeout,
                                           max_body=MAX_POLICY_SIZE)
            except FetchError as exc:
                last = exc
                continue
            # §3.3: "HTTP 3xx redirects MUST NOT be followed"; only 200 carries a policy.
            if response.status != 200:
                raise FetchError(f"https://{host}{POLICY_PATH} answered HTTP {response.status}")
            # §3.2: the media type is text/plain (parameters ignored).
            media = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "text/plain":
                raise FetchError(f"media type {media or 'missing'!r}, not text/plain")
            try:
                return response.body.decode("utf-8")
            except UnicodeDecodeError:
                raise FetchError("policy is not UTF-8 text") from None
        raise last or FetchError(f"{host} has no address")

    def _store(self, policy: StsPolicy) -> None:
        self._cache.pop(policy.domain, None)
        while len(self._cache) >= MAX_CACHED_POLICIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[policy.domain] = policy

    def _remember_failure(self, domain: str, record_id: str, now: float) -> None:
        while len(self._failed) >= MAX_CACHED_POLICIES:
            self._failed.pop(next(iter(self._failed)))
        self._failed[(domain, record_id)] = now
