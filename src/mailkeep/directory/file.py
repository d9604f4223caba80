"""The file backend: a TOML users file, re-read when it changes.

    [users.alice]
    password = "$argon2id$v=19$..."        # or {SHA512-CRYPT}$6$... migrated from Dovecot
    addresses = ["alice@example.test", "a.smith@example.test"]
    send_as_others = false                 # may the header From name someone else?
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import tomllib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from mailkeep.directory.base import Account, DirectoryError
from mailkeep.directory.passwords import is_supported, verify_password

log = logging.getLogger("mailkeep.directory")

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9._+@-]{0,127}$")
ADDRESS = re.compile(r"^[^@\s<>\"]{1,64}@[a-z0-9.-]{1,253}$")
_USER_KEYS = {"password", "addresses", "send_as_others"}
# How often the file's mtime is looked at: a changed file is picked up within this time.
STAT_INTERVAL = 1.0
# Hashing is CPU-bound; more threads than cores only adds memory (19 MiB per argon2 call).
HASH_WORKERS = max(2, os.cpu_count() or 2)


@dataclass(frozen=True, slots=True)
class UserRecord:
    account: Account
    password_hash: str


def parse_users(raw: Mapping[str, Any], source: str) -> dict[str, UserRecord]:
    """Validate a users document; raise DirectoryError listing every problem."""
    problems: list[str] = []
    users = raw.get("users", {})
    extra = set(raw) - {"users"}
    problems += [f"{k}: unknown key (only [users.NAME] tables belong here)" for k in sorted(extra)]
    if not isinstance(users, dict):
        raise DirectoryError(f"{source}: users: expected tables [users.NAME]")
    records: dict[str, UserRecord] = {}
    owner: dict[str, str] = {}
    for name, table in users.items():
        key = f"users.{name}"
        if not ACCOUNT_NAME.match(name):
            problems.append(f"{key}: name must be lower-case letters, digits and . _ + @ -")
            continue
        if not isinstance(table, dict):
            problems.append(f"{key}: expected a table")
            continue
        problems += [f"{key}.{k}: unknown key" for k in sorted(set(table) - _USER_KEYS)]
        password = table.get("password")
        if not isinstance(password, str) or not password:
            problems.append(f"{key}.password: missing; set one with `mailkeep user passwd {name}`")
            password = ""
        elif not is_supported(password):
            problems.append(f"{key}.password: unsupported hash scheme (use argon2id, "
                            "SHA512-CRYPT, SHA256-CRYPT or bcrypt)")
        addresses = table.get("addresses", [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            problems.append(f"{key}.addresses: expected a list of strings")
            addresses = []
        clean: list[str] = []
        for i, given in enumerate(addresses):
            addr = given.strip().lower()
            if not ADDRESS.match(addr):
                problems.append(f"{key}.addresses[{i}]: {addr!r} is not an address")
            elif addr in owner and owner[addr] != name:
                problems.append(f"{key}.addresses[{i}]: {addr} already belongs to {owner[addr]}")
            else:
                owner[addr] = name
                clean.append(addr)
        send_as = table.get("send_as_others", False)
        if not isinstance(send_as, bool):
            problems.append(f"{key}.send_as_others: expected true or false")
            send_as = False
        records[name] = UserRecord(Account(name, tuple(clean), send_as), password)
    # Logins take a name or an address: one string must not mean two accounts.
    for name in records:
        if name in owner and owner[name] != name:
            problems.append(f"users.{name}: the account name is also an address of "
                            f"{owner[name]}; rename one of them")
    if problems:
        raise DirectoryError(f"{source}: " + "; ".join(problems))
    return records


def read_users_file(path: Path) -> dict[str, UserRecord]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DirectoryError(f"{path}: users file not found (mailkeep init writes one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectoryError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DirectoryError(f"{path}: not valid TOML: {exc}") from None
    return parse_users(raw, str(path))


_HEADER = """\
# mailkeep users file: one [users.NAME] table per account.
# Managed by `mailkeep user add|passwd|del|list`; safe to edit by hand (the daemon re-reads it).
#   password       a hash: argon2id (new), or {SHA512-CRYPT}/{SHA256-CRYPT}/{BLF-CRYPT}
#                  copied from a Dovecot passwd-file
#   addresses      the addresses this account receives mail for and may send as
#   send_as_others true lets the header From name other people
#                  (the envelope sender is checked all the same)

"""


def write_users_file(path: Path, records: Mapping[str, UserRecord]) -> None:
    """Atomic replace: write a sibling temp file, fsync, rename. Mode 0600 (it holds hashes)."""
    doc: dict[str, Any] = {"users": {}}
    for name in sorted(records):
        rec = records[name]
        doc["users"][name] = {
            "password": rec.password_hash,
            "addresses": list(rec.account.addresses),
            "send_as_others": rec.account.send_as_others,
        }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(_HEADER + tomli_w.dumps(doc))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FileDirectory:
    """UserDirectory over a users.toml file."""

    def __init__(self, options: Mapping[str, object], base_dir: Path) -> None:
        unknown = set(options) - {"path"}
        if unknown:
            raise DirectoryError(f"directory.{sorted(unknown)[0]}: unknown key (file backend "
                                 "knows only path)")
        raw_path = options.get("path", "users.toml")
        if not isinstance(raw_path, str):
            raise DirectoryError("directory.path: expected a string")
        # normpath, not resolve(): a symlinked users.toml swapped by configuration management
        # must be re-read, so we watch the link's path, not today's target.
        self.path = Path(os.path.normpath(base_dir / raw_path))
        self._records = read_users_file(self.path)
        self._by_login = self._index(self._records)
        self._mtime = self._current_mtime()
        self._checked = time.monotonic()
        self._pool = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="mailkeep-hash")

    @staticmethod
    def _index(records: Mapping[str, UserRecord]) -> dict[str, UserRecord]:
        index: dict[str, UserRecord] = {}
        for name, rec in records.items():
            index[name] = rec
            for addr in rec.account.addresses:
                index.setdefault(addr, rec)
        return index

    def _current_mtime(self) -> float:
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except OSError:
            return -1.0

    def _refresh(self) -> None:
        """Blocking: re-read the file if it changed. A broken file keeps the old users."""
        now = time.monotonic()
        if now - self._checked < STAT_INTERVAL:
            return
        self._checked = now
        mtime = self._current_mtime()
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            records = read_users_file(self.path)
        except DirectoryError as exc:
            log.error("users file not reloaded, keeping %d accounts: %s", len(self._records), exc)
            return
        self._records, self._by_login = records, self._index(records)
        log.info("users file reloaded: %d accounts", len(records))

    def _find(self, login: str) -> UserRecord | None:
        self._refresh()
        return self._by_login.get(login.strip().lower())

    def _authenticate(self, login: str, password: str) -> Account | None:
        rec = self._find(login)
        ok = verify_password(password, rec.password_hash if rec else None)
        return rec.account if ok and rec else None

    async def authenticate(self, login: str, password: str, service: str = "") -> Account | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._authenticate, login, password)

    async def lookup(self, address: str) -> Account | None:
        # A stat at most once a second; the rare re-read is a small file. Cheap enough inline,
        # but it is file I/O, so it runs off the loop like everything else here.
        if time.monotonic() - self._checked >= STAT_INTERVAL:
            await asyncio.to_thread(self._refresh)
        rec = self._by_login.get(address.strip().lower())
        if rec is None or address.strip().lower() not in rec.account.addresses:
            return None
        return rec.account

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def records(self) -> dict[str, UserRecord]:
        return dict(self._records)
