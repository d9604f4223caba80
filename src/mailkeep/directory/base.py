"""The UserDirectory protocol and backend discovery (entry-point group mailkeep.directories).

A backend is a class registered under the entry-point group; `load_directory` builds it from
the `[directory]` table and puts the shared layers in front of it (directory/front.py: the
verified-credentials cache and the group policy), so every backend behaves the same at the
doors. A backend that can be administered from the command line also offers `admin()`
returning a UserAdmin (directory/admin.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mailkeep.proto.address import canonical

if TYPE_CHECKING:
    from mailkeep.directory.admin import UserAdmin

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
    """One mail account. `name` is its login and the folder name of its Maildir.

    `groups` are the directory groups it belongs to (lower-case names), which policy can
    name: a relay connector's `auth_groups`, `[directory] send_as_groups`."""

    name: str
    addresses: tuple[str, ...]
    send_as_others: bool = False
    groups: tuple[str, ...] = ()

    def owns(self, address: str) -> bool:
        return canonical(address) in self.addresses

    def in_any_group(self, groups: tuple[str, ...] | frozenset[str]) -> bool:
        return any(g.lower() in self.groups for g in groups)

    def __repr__(self) -> str:  # never any secret in here, but keep reprs short
        return f"Account({self.name!r})"


@runtime_checkable
class UserDirectory(Protocol):
    """What every backend offers. Methods are async: backends do their I/O off the loop."""

    async def authenticate(self, login: str, password: str, service: str) -> Account | None:
        """The account for a login (name or any address) and password, or None.

        `service` is the door (one of SERVICES): an app password only opens the doors it
        was made for. Unknown logins cost the same time as wrong passwords. Raises
        DirectoryUnavailable when the backend cannot answer now."""
        ...

    async def lookup(self, address: str) -> Account | None:
        """The account that receives mail for an address, or None.

        Raises DirectoryUnavailable when the backend cannot answer now."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class CheckedDirectory(Protocol):
    """A backend that can say cheaply whether it can answer now (the admin listener's
    /readyz): the users file readable, the database answering SELECT 1, the LDAP server
    taking the service account's bind. Optional: a backend without it counts as ready."""

    async def check(self) -> None:
        """Return when the backend is reachable; raise DirectoryUnavailable saying why."""
        ...


def _backend_class(backend: str) -> Any:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if backend not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise DirectoryError(f"directory.backend: unknown backend {backend!r} (known: {known})")
    return found[backend].load()


def load_backend(backend: str, options: Mapping[str, object], base_dir: Path) -> UserDirectory:
    """Instantiate a backend alone (no cache, no policy); raise DirectoryError."""
    factory = _backend_class(backend)
    directory = factory(options, base_dir)
    if not isinstance(directory, UserDirectory):
        raise DirectoryError(f"directory.backend: {backend!r} does not provide UserDirectory")
    return directory


def load_directory(backend: str, options: Mapping[str, object], base_dir: Path) -> UserDirectory:
    """The directory the daemon uses: the backend behind the shared layers
    (credentials cache, group policy). Raise DirectoryError listing the problem."""
    from mailkeep.directory.front import DirectoryFront, split_front_options  # noqa: PLC0415

    front, rest = split_front_options(options)
    return DirectoryFront(load_backend(backend, rest, base_dir), front)


def load_admin(backend: str, options: Mapping[str, object], base_dir: Path) -> UserAdmin:
    """The administration interface of a backend (for `mailkeep user ...`)."""
    from mailkeep.directory.front import split_front_options  # noqa: PLC0415

    factory = _backend_class(backend)
    admin = getattr(factory, "admin", None)
    if admin is None:
        raise DirectoryError(f"directory.backend: {backend!r} cannot be administered by "
                             "mailkeep; manage its users where they live")
    _, rest = split_front_options(options)
    return admin(rest, base_dir)  # type: ignore[no-any-return]
