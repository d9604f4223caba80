"""What account names, addresses, group names and app-password labels may look like.

Account names become Maildir folder names (DATA_DIR/mail/NAME), so whatever a backend
returns (a users file, an SQL row, an LDAP attribute) is checked against ACCOUNT_NAME before
it is used: no "/", no "..", no upper case that would make two folders of one account.
"""

from __future__ import annotations

import re

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9._+@-]{0,127}$")
ADDRESS = re.compile(r"^[^@\s<>\"]{1,64}@[a-z0-9.-]{1,253}$")
# Group names as directories spell them ("Mail Users", "helpdesk", "printers"): compared in
# lower case; no control characters.
GROUP_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
APP_PASSWORD_LABEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# A login longer than this is refused before any backend is asked (RFC 5321 §4.5.3.1.3 paths
# are at most 256 octets; no account name or address is longer).
MAX_LOGIN_LENGTH = 256


def valid_account_name(name: str) -> bool:
    return bool(ACCOUNT_NAME.match(name)) and ".." not in name


def clean_address(value: str) -> str | None:
    """The canonical (lower-case, trimmed) form of an address, or None if it is not one."""
    addr = value.strip().lower()
    return addr if ADDRESS.match(addr) else None


def clean_groups(values: object) -> tuple[str, ...]:
    """Group names in lower case, without duplicates or unusable ones, in their order."""
    if not isinstance(values, (list, tuple)):
        return ()
    seen: list[str] = []
    for value in values:
        if isinstance(value, str) and GROUP_NAME.match(value.strip()):
            group = value.strip().lower()
            if group not in seen:
                seen.append(group)
    return tuple(seen)
