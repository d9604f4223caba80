"""Which certificate a TLS client gets, from the server name it sent (SNI, RFC 6066 §3).

Selection, in order: a certificate that lists the name exactly; then one that lists a
wildcard standing for the name's left-most label (RFC 6125 §6.4.3: `*.example.net` selects
`mail.example.net`, not `example.net` nor `a.b.example.net`); else the listener's default.
A client that sends no name gets the default. The table is immutable: a reload builds a new
one and swaps the reference, so the SNI callback never sees a half-built table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

K = TypeVar("K")

# RFC 1123 §2.1 host name labels (letters, digits, inner hyphens), 253 octets in all; the
# same rule as config.load.is_hostname. Names in SNI are A-labels (RFC 6066 §3), so IDNs
# are configured in their xn-- form.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+$")


def normalize_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def is_selectable_name(pattern: str) -> bool:
    """A fully qualified host name, or `*.` and one (at least two labels long): RFC 6125
    §6.4.3 wildcards stand for the whole left-most label only, and never for a top-level
    domain's direct children (`*.com` is refused)."""
    pattern = normalize_name(pattern)
    stem = pattern[2:] if pattern.startswith("*.") else pattern
    # RFC 3696 §2: a top-level domain is never all digits, which also keeps IPv4 addresses
    # (never sent in SNI, RFC 6066 §3) out of the table.
    return bool(_HOSTNAME.match(stem)) and not stem.rpartition(".")[2].isdigit()


@dataclass(frozen=True, slots=True)
class SniTable(Generic[K]):
    """Exact names and wildcard parents, each mapped to the key of one certificate."""

    exact: Mapping[str, K] = field(default_factory=lambda: MappingProxyType({}))
    wildcard: Mapping[str, K] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(cls, entries: Iterable[tuple[K, Iterable[str]]]) -> tuple[SniTable[K],
                                                                         list[str]]:
        """Entries in priority order; a name already taken by an earlier entry stays with
        it. Returns the table and one message per name that was shadowed that way."""
        exact: dict[str, K] = {}
        wildcard: dict[str, K] = {}
        shadowed: list[str] = []
        for key, names in entries:
            for raw in names:
                name = normalize_name(raw)
                if not is_selectable_name(name):
                    continue  # IP addresses and odd SANs: SNI never carries them (RFC 6066 §3)
                table, stem = (wildcard, name[2:]) if name.startswith("*.") else (exact, name)
                if stem in table:
                    if table[stem] != key:
                        shadowed.append(f"{name} (kept by {table[stem]})")
                    continue
                table[stem] = key
        return cls(MappingProxyType(exact), MappingProxyType(wildcard)), shadowed

    def select(self, server_name: str | None) -> K | None:
        """The key of the certificate for this name, or None for the listener's default."""
        if not server_name:
            return None
        name = normalize_name(server_name)
        found = self.exact.get(name)
        if found is not None:
            return found
        head, _, parent = name.partition(".")
        if head and parent:
            return self.wildcard.get(parent)
        return None

    def names_of(self, key: K) -> list[str]:
        """The names that select `key`, exact ones first (for `cert show`)."""
        return ([n for n, k in self.exact.items() if k == key]
                + [f"*.{n}" for n, k in self.wildcard.items() if k == key])
