"""The UserDirectory protocol and backend discovery (entry-point group mailkeep.directories)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

from mailkeep.proto.address import canonical

ENTRY_POINT_GROUP = "mailkeep.directories"


class DirectoryError(Exception):
    """The directory cannot be used (bad file, bad options): an administrator's fix."""


class DirectoryUnavailable(Exception):
    """The backend cannot answer right now (down, too slow): a temporary failure for the
    client (454 4.7.0, NO [UNAVAILABLE], -ERR [SYS/TEMP]), never "wrong password"."""


# The doors a login is for (app passwords may be limited to some of them).
SERVICES = ("imap", "pop3", "submission", "smtp", "relay")


@dataclass(frozen=True, slots=True)
class Account:
    """One mail account. `name` is its login and the folder name of its Maildir."""

    name: str
    addresses: tuple[str, ...]
    send_as_others: bool = False

    def owns(self, address: str) -> bool:
        return canonical(address) in self.addresses

    def __repr__(self) -> str:  # never any secret in here, but keep reprs short
        return f"Account({self.name!r})"


@runtime_checkable
class UserDirectory(Protocol):
    """What every backend offers. Methods are async: backends do their I/O off the loop."""

    async def authenticate(self, login: str, password: str, service: str) -> Account | None:
        """The account for a login (name or any address) and password, or None.

        `service` is the door (one of SERVICES). Unknown logins cost the same time as wrong
        passwords. Raises DirectoryUnavailable when the backend cannot answer now."""
        ...

    async def lookup(self, address: str) -> Account | None:
        """The account that receives mail for an address, or None.

        Raises DirectoryUnavailable when the backend cannot answer now."""
        ...

    async def close(self) -> None: ...


def load_directory(backend: str, options: Mapping[str, object], base_dir: Path) -> UserDirectory:
    """Instantiate a backend named in the entry-point group; raise DirectoryError."""
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if backend not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise DirectoryError(f"directory.backend: unknown backend {backend!r} (known: {known})")
    factory = found[backend].load()
    directory = factory(options, base_dir)
    if not isinstance(directory, UserDirectory):
        raise DirectoryError(f"directory.backend: {backend!r} does not provide UserDirectory")
    return directory
