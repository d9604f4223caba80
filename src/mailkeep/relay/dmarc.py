"""DMARC (RFC 7489): the author domain, policy discovery, identifier alignment, the verdict.

authheaders has all of this in `check_dmarc()`, but version 0.16.3 gets it wrong where it
matters to a policy switch that rejects mail: its address parser stops at the first hyphen
(`a@my-domain.example` is read as domain `my`, so aligned mail fails DMARC), and it applies
the *subdomain* policy `sp=` to the organisational domain itself (`p=reject; sp=none` at
example.com does not protect mail From example.com). So the steps are here, small and tested,
and authheaders supplies the Public Suffix List it ships (for organisational domains,
RFC 7489 §3.2), which publicsuffix2 reads.

`evaluate()` does no I/O of its own: it is handed the TXT lookup to use.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from publicsuffix2 import PublicSuffixList

from mailkeep.proto.message import addresses_of, parse_header_fields, split_message
from mailkeep.relay.authdns import DnsTempError


class DmarcPolicy(Enum):
    """RFC 7489 §6.3 p= / sp=: what the domain owner asks receivers to do with failures."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    policy: DmarcPolicy
    subdomain_policy: DmarcPolicy | None = None
    adkim: str = "r"          # RFC 7489 §6.3: relaxed alignment by default
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    """The verdict (RFC 7489 §11.2 results: pass, fail, none, temperror, permerror)."""

    result: str
    from_domain: str | None = None
    policy: DmarcPolicy | None = None    # the policy that applies to this From domain
    pct: int = 100
    record_domain: str | None = None     # where the record was found
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Authenticated:
    """An identifier that passed: `domain` authenticated by SPF or a DKIM signature."""

    domain: str


TxtLookup = Callable[[str], Sequence[bytes]]


# -- organisational domain (RFC 7489 §3.2) --------------------------------------------------------

@functools.cache
def _public_suffix_list() -> PublicSuffixList:
    ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
    with importlib.resources.as_file(ref) as path, open(path, encoding="utf-8") as f:
        return PublicSuffixList(f)


def organizational_domain(domain: str) -> str:
    """The registered domain: one label below the public suffix (RFC 7489 §3.2).

    A name under a suffix the list does not know (".test", ".internal") falls to the list's
    default rule "*": its last label is the suffix."""
    domain = domain.lower().rstrip(".")
    found = _public_suffix_list().get_sld(domain, strict=True)
    if found:
        return str(found)
    return ".".join(domain.split(".")[-2:])


def aligned(identifier: str, author: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict is the same name; relaxed, the same organisational domain."""
    identifier, author = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if mode == "s":
        return identifier == author
    return organizational_domain(identifier) == organizational_domain(author)


# -- the author domain (RFC 7489 §6.6.1) ----------------------------------------------------------

def ascii_domain(domain: str) -> str | None:
    """A domain as DNS spells it (IDNA A-labels, lower case), or None if it is not one."""
    domain = domain.strip().rstrip(".")
    if not domain or domain.startswith("["):
        return None  # an address literal has no DNS records to publish a policy in
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


def author_domain(message: bytes) -> tuple[str | None, str | None]:
    """(RFC5322.From domain, None), or (None, why DMARC cannot apply)."""
    header, _ = split_message(message)
    fields = parse_header_fields(header)
    count = sum(1 for f in fields if f.key == "from")
    if count != 1:
        return None, "no From field" if count == 0 else "several From fields"
    addresses = addresses_of(fields, "from")
    if not addresses:
        return None, "From field without an address"
    domains = {ascii_domain(a.rpartition("@")[2]) for a in addresses}
    if len(domains) != 1 or None in domains:
        return None, "From addresses in several or invalid domains"
    (domain,) = domains
    assert domain is not None
    return domain, None


# -- records (RFC 7489 §6.3, §6.4) ----------------------------------------------------------------

def _tags(text: str) -> list[tuple[str, str]] | None:
    tags: list[tuple[str, str]] = []
    for raw in text.split(";"):
        part = raw.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            return None
        tags.append((key.strip().lower(), value.strip()))
    return tags


def _policy(value: str | None) -> DmarcPolicy | None:
    try:
        return DmarcPolicy((value or "").lower())
    except ValueError:
        return None


def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC record, or None if `text` is not a usable one (RFC 7489 §6.6.3 steps 5-6)."""
    tags = _tags(text)
    if not tags or tags[0] != ("v", "DMARC1"):
        return None  # §6.4: "v=DMARC1" must come first, exactly
    values = dict(tags)
    policy = _policy(values.get("p"))
    if policy is None:
        # §6.6.3: no valid p= but a reporting address: act as if p=none; otherwise no policy.
        if "rua" not in values:
            return None
        policy = DmarcPolicy.NONE
    try:
        pct = int(values.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(
        policy=policy,
        subdomain_policy=_policy(values.get("sp")),
        adkim="s" if values.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if values.get("aspf", "r").lower() == "s" else "r",
        pct=pct if 0 <= pct <= 100 else 100,
    )


def _records_at(domain: str, txt: TxtLookup) -> list[str]:
    found = []
    for raw in txt(f"_dmarc.{domain}"):
        text = raw.decode("utf-8", "replace")
        if text.startswith("v=DMARC1") and text[8:9] in ("", ";", " ", "\t"):
            found.append(text)
    return found


def discover(from_domain: str, txt: TxtLookup) -> tuple[DmarcRecord, str] | str:
    """(record, where found) for the author domain, or a comment on why there is none.

    RFC 7489 §6.6.3: ask _dmarc.<From domain>; with no record there, ask the organisational
    domain. Several records at one name mean no policy at all. Raises DnsTempError."""
    candidates = [from_domain]
    org = organizational_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    for domain in candidates:
        records = _records_at(domain, txt)
        if len(records) > 1:
            return f"several DMARC records at _dmarc.{domain}"
        if records:
            record = parse_record(records[0])
            if record is None:
                return f"unusable DMARC record at _dmarc.{domain}"
            return record, domain
    return "no DMARC record"


def evaluate(message: bytes, authenticated_spf: Authenticated | None,
             authenticated_dkim: Sequence[Authenticated], txt: TxtLookup) -> DmarcOutcome:
    """The DMARC verdict for `message`, given the SPF-authenticated domain (MAIL FROM, or HELO
    for the null sender, RFC 7489 §4.1) if SPF passed, and the d= of each passing signature."""
    from_domain, problem = author_domain(message)
    if from_domain is None:
        return DmarcOutcome("permerror", comment=problem)
    try:
        found = discover(from_domain, txt)
    except DnsTempError:
        return DmarcOutcome("temperror", from_domain=from_domain,
                            comment="DNS lookup failed")
    if isinstance(found, str):
        return DmarcOutcome("none", from_domain=from_domain, comment=found)
    record, record_domain = found
    policy = record.policy
    if record_domain != from_domain and record.subdomain_policy is not None:
        # RFC 7489 §6.3 sp=: for subdomains of the domain that published the record -- and
        # only for them (the organisational domain itself is under p=).
        policy = record.subdomain_policy
    dkim_ok = any(aligned(d.domain, from_domain, record.adkim) for d in authenticated_dkim)
    spf_ok = authenticated_spf is not None and \
        aligned(authenticated_spf.domain, from_domain, record.aspf)
    return DmarcOutcome(
        "pass" if dkim_ok or spf_ok else "fail",
        from_domain=from_domain, policy=policy, pct=record.pct, record_domain=record_domain,
        comment=f"p={policy.value}" + (f" pct={record.pct}" if record.pct != 100 else ""),
    )
