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
