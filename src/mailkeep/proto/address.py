"""Mailbox addresses as the envelope and header carry them, reduced to one spelling.

RFC 5321 §4.1.2 and RFC 5322 §3.4.1: a local part may be a dot-atom or a quoted string, and
`"alice"@example.test` names the same mailbox as `alice@example.test` (the quotes add
nothing when what they enclose is a valid dot-atom). Policy decisions (is this sender the
account's own? is this recipient local?) compare the canonical spelling, so a needless pair
of quotes neither makes a real user's address look spoofed nor slips a stranger past a check.
"""

from __future__ import annotations

import re

# RFC 5322 §3.2.3 atext, plus any non-ASCII character (RFC 6531 §3.3 UTF8-non-ascii).
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
# RFC 5322 §3.2.4 quoted-pair inside a quoted string: a backslash and the character it quotes.
_QUOTED_PAIR = re.compile(r"\\(.)")
# What inet_aton(3) reads as an IPv4 address: one to four parts, each decimal, octal or hex
# ("127.0.0.1", "127.1", "2130706433", "0x7f000001"). A resolver library handed such a
# "domain" connects to the address without asking DNS.
_INET_ATON = re.compile(r"(?:0[xX][0-9A-Fa-f]*|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]*|[0-9]+)){0,3}")
_DIGITS = re.compile(r"[0-9]+")
# Characters that route mail onward from inside a local part when another MTA reads them:
# the percent hack ("user%remote@relay", RFC 1123 §5.2.16, RFC 5321 Appendix C) and UUCP
# bang paths ("remote!user@relay", RFC 976), and "@" inside a quoted local part.
_ROUTING_CHARACTERS = frozenset("%!@")


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain) at the last "@" (a quoted local part may contain "@")."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def canonical_local_part(local: str) -> str:
    """A quoted local part whose content is a dot-atom, unquoted; anything else as given."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        inner = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        if _DOT_ATOM.fullmatch(inner):
            return inner
    return local


def canonical(address: str) -> str:
    """The spelling policy compares: unneeded quotes removed, lower case (mailbox names are
    compared case-insensitively here, as Dovecot and Postfix do for local users). A
    trailing dot on the domain is kept: RFC 5321 §4.1.2 has no such syntax, so
    "alice@example.test." is not alice's address."""
    local, domain = split_address(address.strip())
    if not domain:
        return canonical_local_part(local).lower()
    return f"{canonical_local_part(local)}@{domain}".lower()


def is_numeric_domain(domain: str) -> bool:
    """Is `domain` an IP address written without brackets ("user@127.0.0.1")?

    RFC 1123 §2.1 and RFC 3696 §2: no top-level domain is all-numeric, so a name whose last
    label is all digits is an address, not a domain; RFC 5321 §4.1.3 writes addresses as
    bracketed literals ("user@[127.0.0.1]"). The other inet_aton(3) spellings count too."""
    text = domain.rstrip(".")
    return bool(_DIGITS.fullmatch(text.rpartition(".")[2]) or _INET_ATON.fullmatch(text))


def has_routing_characters(address: str) -> bool:
    """Does the local part carry a route to another host ("%", "!", or a quoted "@")?

    Harmless here (mailkeep never reads a local part as a route: such an address is just
    a mailbox that does not exist), but another server may: an address like this must not
    be handed on to one (split delivery's legacy server) on a stranger's say-so."""
    local = split_address(address.strip())[0]
    return any(c in _ROUTING_CHARACTERS for c in local)
