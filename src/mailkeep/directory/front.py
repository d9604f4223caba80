"""What stands in front of every backend: the credentials cache and the group policy.

    [directory]
    cache_ttl = 60                 # seconds a verified login is remembered (0: off)
    cache_size = 10000             # entries at most
    send_as_groups = ["helpdesk"]  # members may put other people in the header From

Also here, once for all backends: over-long logins and empty passwords are refused before
any backend sees them (an empty password is an LDAP "unauthenticated bind", RFC 4513
§5.1.2, which some servers answer with success), and concurrent identical logins (a mail
client opening five connections at once) share one verification.

Throttling is not here: it lives in server/auth.py and counts failures per client address,
so a wrong main password and a wrong app password are the same kind of event, and neither
ever locks the account itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from mailkeep.directory.base import (
    Account,
    CheckedDirectory,
    DirectoryError,
    UserDirectory,
)
from mailkeep.directory.cache import DEFAULT_MAX_ENTRIES, DEFAULT_TTL, CredentialsCache
from mailkeep.directory.names import MAX_LOGIN_LENGTH, clean_groups

FRONT_KEYS = frozenset({"cache_ttl", "cache_size", "send_as_groups"})
# A sane ceiling: a cache that remembers a login for a day would hide a revoked password.
MAX_CACHE_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class FrontOptions:
    cache_ttl: float = DEFAULT_TTL
    cache_size: int = DEFAULT_MAX_ENTRIES
    send_as_groups: tuple[str, ...] = ()


def split_front_options(options: Mapping[str, object]) -> tuple[FrontOptions,
                                                                 dict[str, object]]:
    """The front's own keys parsed (DirectoryError on a bad value); the rest for the backend."""
    rest = {k: v for k, v in options.items() if k not in FRONT_KEYS}
    ttl = options.get("cache_ttl", DEFAULT_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not \
            0 <= ttl <= MAX_CACHE_TTL:
        raise DirectoryError(f"directory.cache_ttl: expected seconds from 0 (off) to "
                             f"{MAX_CACHE_TTL:g}, got {ttl!r}")
    size = options.get("cache_size", DEFAULT_MAX_ENTRIES)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DirectoryError(f"directory.cache_size: expected a positive integer, got {size!r}")
    groups = options.get("send_as_groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise DirectoryError('directory.send_as_groups: expected a list of group names, '
                             'e.g. ["helpdesk"]')
    return FrontOptions(float(ttl), size, clean_groups(groups)), rest


class DirectoryFront:
    """A UserDirectory wrapping a backend (see the module docstring)."""

    def __init__(self, backend: UserDirectory, options: FrontOptions = FrontOptions()) -> None:
        self.backend = backend
        self.options = options
        self.cache = CredentialsCache(options.cache_ttl, options.cache_size)
        self._generation: object = None
        self._inflight: dict[bytes, asyncio.Task[Account | None]] = {}

    def _policy(self, account: Account | None) -> Account | None:
        if account is None or account.send_as_others:
            return account
        if account.in_any_group(self.options.send_as_groups):
            return dataclasses.replace(account, send_as_others=True)
        return account

    async def _check_generation(self) -> None:
        """Clear the cache when the backend says its users changed."""
        probe: Callable[[], Awaitable[object]] | None = getattr(self.backend,
                                                                "current_generation", None)
        if probe is None:
            return
        generation = await probe()
        if generation != self._generation:
            self.cache.clear()
            self._generation = generation

    async def authenticate(self, login: str, password: str, service: str) -> Account | None:
        if not password or len(login) > MAX_LOGIN_LENGTH or not login.strip():
            return None
        key = self.cache.key(service, login, password)
        if self.cache.enabled:
            await self._check_generation()
            cached = self.cache.get(key)
            if cached is not None:
                return self._policy(cached)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self.backend.authenticate(login, password, service))
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._done(k, t))  # type: ignore[misc]
        account = await asyncio.shield(task)
        if account is not None:
            self.cache.put(key, account)
        return self._policy(account)

    def _done(self, key: bytes, task: asyncio.Task[Account | None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up (timeout)

    async def check(self) -> None:
        """The backend's own reachability check (CheckedDirectory), if it has one."""
        if isinstance(self.backend, CheckedDirectory):
            await self.backend.check()

    async def lookup(self, address: str) -> Account | None:
        if len(address) > MAX_LOGIN_LENGTH:
            return None
        return self._policy(await self.backend.lookup(address))

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self.backend.close()
