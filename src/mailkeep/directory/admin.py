"""UserAdmin: what `mailkeep user ...` needs from a backend it can change.

The file and SQL backends manage accounts (add, passwd, del, list, import) and app
passwords; the LDAP backend manages app passwords only (its accounts live in LDAP, and
mailkeep only ever reads them). The methods are async so that one CLI drives them all; the
CLI runs them with asyncio.run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mailkeep.directory.apppasswords import AppPassword
from mailkeep.directory.base import Account, DirectoryError


class AdminError(DirectoryError):
    """A management command cannot be carried out (no such account, taken address...)."""


@dataclass(frozen=True, slots=True)
class UserEntry:
    """An account as stored: its Account, its main password hash and its app passwords."""

    account: Account
    password_hash: str
    app_passwords: tuple[AppPassword, ...] = field(default=())

    def __repr__(self) -> str:
        return f"UserEntry({self.account.name!r})"


class UserAdmin(Protocol):
    # False for backends whose accounts are managed elsewhere (LDAP): only app passwords.
    manages_accounts: bool

    async def list_users(self) -> list[UserEntry]: ...

    async def get_user(self, name: str) -> UserEntry | None: ...

    async def add_users(self, entries: Sequence[UserEntry]) -> None:
        """Add accounts; AdminError (and nothing added) if a name or address is taken."""
        ...

    async def set_password(self, name: str, password_hash: str) -> None: ...

    async def set_groups(self, name: str, groups: tuple[str, ...]) -> None: ...

    async def delete_user(self, name: str) -> None: ...

    async def add_app_password(self, name: str, app: AppPassword) -> None:
        """AdminError if the account is unknown or already has an app password so named."""
        ...

    async def list_app_passwords(self, name: str) -> list[AppPassword]: ...

    async def revoke_app_password(self, name: str, label: str) -> bool: ...

    async def close(self) -> None: ...


def check_new_entries(existing: Sequence[UserEntry], new: Sequence[UserEntry]) -> None:
    """AdminError naming every clash of new accounts with existing ones and each other."""
    names = {e.account.name for e in existing}
    owner = {a: e.account.name for e in existing for a in e.account.addresses}
    problems: list[str] = []
    for entry in new:
        acct = entry.account
        if acct.name in names:
            problems.append(f"{acct.name} exists")
            continue
        if acct.name in owner:
            problems.append(f"{acct.name}: the name is an address of {owner[acct.name]}")
        names.add(acct.name)
        for addr in acct.addresses:
            if addr in owner and owner[addr] != acct.name:
                problems.append(f"{addr} already belongs to {owner[addr]}")
            owner[addr] = acct.name
    if problems:
        raise AdminError("; ".join(problems))
