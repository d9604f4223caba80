"""The file backend: a TOML users file, re-read when it changes.

    [users.alice]
    password = "$argon2id$v=19$..."        # or {SHA512-CRYPT}$6$... migrated from Dovecot
    addresses = ["alice@example.test", "a.smith@example.test"]
    send_as_others = false                 # may the header From name someone else?
    groups = ["staff"]                     # for policy: auth_groups, send_as_groups

    [users.alice.app_passwords.phone]      # `mailkeep user app-password add alice phone ...`
    hash = "{SSHA256}..."
    services = ["imap", "submission"]
    created = 2025-01-01T12:00:00Z

The daemon never writes the users file (it is the administrator's, and every write would
look like a change and empty the credentials cache). App passwords' last-used times go to a
small JSON file beside it (USERS.last-used.json), written at most once a minute per app
password; if that file cannot be written, the times are kept in memory only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import threading
import time
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import tomli_w

from mailkeep.config.hints import admin_command
from mailkeep.directory.admin import AdminError, UserEntry, check_new_entries
from mailkeep.directory.apppasswords import (
    AppPassword,
    LastUsedCoalescer,
    is_supported_app_hash,
    verify_login,
)
from mailkeep.directory.base import SERVICES, Account, DirectoryError, DirectoryUnavailable
from mailkeep.directory.names import (
    ACCOUNT_NAME,
    ADDRESS,
    APP_PASSWORD_LABEL,
    GROUP_NAME,
)
from mailkeep.directory.passwords import hash_problem
from mailkeep.fsmodes import cannot_write

__all__ = ["ACCOUNT_NAME", "ADDRESS", "FileAdmin", "FileDirectory", "UserRecord",
           "parse_users", "read_users_file", "write_users_file"]

log = logging.getLogger("mailkeep.directory")

# The stored form of an account (kept under its historical name).
UserRecord = UserEntry

_USER_KEYS = {"password", "addresses", "send_as_others", "groups", "app_passwords"}
_APP_KEYS = {"hash", "services", "created"}
# How often the file's mtime is looked at: a changed file is picked up within this time.
STAT_INTERVAL = 1.0
# Hashing is CPU-bound; more threads than cores only adds memory (19 MiB per argon2 call).
HASH_WORKERS = max(2, os.cpu_count() or 2)


def _timestamp(value: object) -> float | None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _parse_app_passwords(raw: object, key: str, problems: list[str]) -> tuple[AppPassword, ...]:
    if not isinstance(raw, dict):
        problems.append(f"{key}: expected tables [{key}.LABEL]")
        return ()
    result: list[AppPassword] = []
    for label, table in raw.items():
        akey = f"{key}.{label}"
        if not APP_PASSWORD_LABEL.match(label):
            problems.append(f"{akey}: label must be lower-case letters, digits and . _ -")
            continue
        if not isinstance(table, dict):
            problems.append(f"{akey}: expected a table")
            continue
        problems += [f"{akey}.{k}: unknown key" for k in sorted(set(table) - _APP_KEYS)]
        stored = table.get("hash")
        if not isinstance(stored, str) or not is_supported_app_hash(stored):
            problems.append(f"{akey}.hash: missing or unsupported")
            continue
        services = table.get("services")
        if not isinstance(services, list) or not services or \
                not all(s in SERVICES for s in services):
            problems.append(f"{akey}.services: expected a list of {', '.join(SERVICES)}")
            continue
        created = _timestamp(table.get("created", 0))
        if created is None:
            problems.append(f"{akey}.created: expected a date and time")
            created = 0.0
        result.append(AppPassword(label, stored, tuple(dict.fromkeys(services)), created))
    return tuple(result)


def parse_users(raw: Mapping[str, Any], source: str, *,
                repairing: bool = False) -> dict[str, UserRecord]:
    """Validate a users document; raise DirectoryError listing every problem.

    `repairing`: a password is about to be replaced (`user passwd`), so missing or damaged
    hashes are not problems then (they are kept as they are): the command that repairs one
    runs as printed even while other accounts still wait for theirs."""
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
            if not repairing:
                problems.append(f"{key}.password: missing; set one with "
                                f"`{admin_command('user', 'passwd', name)}`")
            password = ""
        elif not repairing and (problem := hash_problem(password)) is not None:
            problems.append(f"{key}.password: {problem}; the account cannot log in: paste "
                            "the right hash, or set a new password with "
                            f"`{admin_command('user', 'passwd', name)}`")
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
        groups = table.get("groups", [])
        if not isinstance(groups, list) or not all(
                isinstance(g, str) and GROUP_NAME.match(g) for g in groups):
            problems.append(f"{key}.groups: expected a list of group names")
            groups = []
        apps = _parse_app_passwords(table.get("app_passwords", {}), f"{key}.app_passwords",
                                    problems)
        account = Account(name, tuple(clean), send_as,
                          tuple(dict.fromkeys(g.strip().lower() for g in groups)))
        records[name] = UserRecord(account, password, apps)
    # Logins take a name or an address: one string must not mean two accounts.
    for name in records:
        if name in owner and owner[name] != name:
            problems.append(f"users.{name}: the account name is also an address of "
                            f"{owner[name]}; rename one of them")
    if problems:
        raise DirectoryError(f"{source}: " + "; ".join(problems))
    return records


def read_users_file(path: Path, *, repairing: bool = False) -> dict[str, UserRecord]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DirectoryError(f"{path}: users file not found: "
                             f"`{admin_command('user', 'add', 'postmaster')}` creates it "
                             "with a first account (or correct directory.path)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DirectoryError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DirectoryError(f"{path}: not valid TOML: {exc}") from None
    return parse_users(raw, str(path), repairing=repairing)


_HEADER = """\
# mailkeep users file: one [users.NAME] table per account.
# Managed by `mailkeep user add|passwd|del|list|app-password`; safe to edit by hand (the
# daemon re-reads it).
#   password       a hash: argon2id (new), or {SHA512-CRYPT}/{SHA256-CRYPT}/{BLF-CRYPT}
#                  copied from a Dovecot passwd-file
#   addresses      the addresses this account receives mail for and may send as
#   send_as_others true lets the header From name other people
#                  (the envelope sender is checked all the same)
#   groups         group names for policy (auth_groups, send_as_groups)
#   [users.NAME.app_passwords.LABEL]  an app password: hash, services, created

"""


def _app_doc(app: AppPassword) -> dict[str, Any]:
    created = dt.datetime.fromtimestamp(int(app.created), dt.UTC)
    return {"hash": app.password_hash, "services": list(app.services), "created": created}


def write_users_file(path: Path, records: Mapping[str, UserRecord]) -> None:
    """Atomic replace: write a sibling temp file, fsync, rename. Mode 0600 (it holds hashes)."""
    doc: dict[str, Any] = {"users": {}}
    for name in sorted(records):
        rec = records[name]
        table: dict[str, Any] = {
            "password": rec.password_hash,
            "addresses": list(rec.account.addresses),
            "send_as_others": rec.account.send_as_others,
        }
        if rec.account.groups:
            table["groups"] = list(rec.account.groups)
        if rec.app_passwords:
            table["app_passwords"] = {a.label: _app_doc(a) for a in rec.app_passwords}
        doc["users"][name] = table
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(_HEADER + tomli_w.dumps(doc))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def last_used_path(users_path: Path) -> Path:
    return users_path.with_name(users_path.name.removesuffix(".toml") + ".last-used.json")


def read_last_used(users_path: Path) -> dict[str, float]:
    """{"NAME/LABEL": unix time}; empty when the file is missing or damaged."""
    try:
        raw = json.loads(last_used_path(users_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: float(v) for k, v in raw.items()
            if isinstance(k, str) and isinstance(v, (int, float))}


class FileDirectory:
    """UserDirectory over a users.toml file."""

    def __init__(self, options: Mapping[str, object], base_dir: Path) -> None:
        self.path = _users_path(options, base_dir)
        self._records = read_users_file(self.path)
        self._by_login = self._index(self._records)
        self._mtime = self._current_mtime()
        self._checked = time.monotonic()
        self._generation = 0
        self._pool = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="mailkeep-hash")
        self._coalescer = LastUsedCoalescer()
        self._last_used = read_last_used(self.path)
        self._last_used_lock = threading.Lock()
        self._last_used_warned = False

    @classmethod
    def admin(cls, options: Mapping[str, object], base_dir: Path) -> FileAdmin:
        return FileAdmin(_users_path(options, base_dir))

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
        self._generation += 1
        log.info("users file reloaded: %d accounts", len(records))

    async def current_generation(self) -> int:
        """Changes whenever the users file was re-read (the credentials cache listens)."""
        if time.monotonic() - self._checked >= STAT_INTERVAL:
            await asyncio.to_thread(self._refresh)
        return self._generation

    def _find(self, login: str) -> UserRecord | None:
        self._refresh()
        return self._by_login.get(login.strip().lower())

    def _authenticate(self, login: str, password: str, service: str) -> Account | None:
        rec = self._find(login)
        match = verify_login(password, rec.password_hash if rec else None,
                             rec.app_passwords if rec else (), service)
        if match is None or rec is None:
            return None
        if match.label is not None:
            self._note_used(rec.account.name, match.label)
        return rec.account

    def _note_used(self, name: str, label: str) -> None:
        """Blocking, in the hash pool: record an app password's use, coalesced."""
        now = time.time()
        if not self._coalescer.due(name, label, now):
            return
        with self._last_used_lock:
            self._last_used[f"{name}/{label}"] = now
            data = json.dumps(self._last_used, sort_keys=True).encode("utf-8")
            target = last_used_path(self.path)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target)
            except OSError as exc:
                if not self._last_used_warned:
                    log.warning("app password last-used times kept in memory only: %s: %s",
                                target, exc.strerror or exc)
                    self._last_used_warned = True

    async def authenticate(self, login: str, password: str, service: str = "") -> Account | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._authenticate, login, password,
                                          service)

    async def lookup(self, address: str) -> Account | None:
        # A stat at most once a second; the rare re-read is a small file. Cheap enough inline,
        # but it is file I/O, so it runs off the loop like everything else here.
        if time.monotonic() - self._checked >= STAT_INTERVAL:
            await asyncio.to_thread(self._refresh)
        rec = self._by_login.get(address.strip().lower())
        if rec is None or address.strip().lower() not in rec.account.addresses:
            return None
        return rec.account

    def _check(self) -> None:
        with self.path.open("rb") as f:
            f.read(1)

    async def check(self) -> None:
        """The users file can be read (CheckedDirectory)."""
        try:
            await asyncio.to_thread(self._check)
        except OSError as exc:
            raise DirectoryUnavailable(f"users file {self.path}: {exc.strerror or exc}") \
                from None

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def records(self) -> dict[str, UserRecord]:
        return dict(self._records)


def _users_path(options: Mapping[str, object], base_dir: Path) -> Path:
    unknown = set(options) - {"path"}
    if unknown:
        raise DirectoryError(f"directory.{sorted(unknown)[0]}: unknown key (file backend "
                             "knows only path)")
    raw_path = options.get("path", "users.toml")
    if not isinstance(raw_path, str):
        raise DirectoryError("directory.path: expected a string")
    # normpath, not resolve(): a symlinked users.toml swapped by configuration management
    # must be re-read, so we watch the link's path, not today's target.
    return Path(os.path.normpath(base_dir / raw_path))


class FileAdmin:
    """`mailkeep user ...` on the users file: read, change, write back atomically."""

    manages_accounts = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self, repairing: bool = False) -> dict[str, UserRecord]:
        if not self.path.exists():
            return {}
        return read_users_file(self.path, repairing=repairing)

    def _write(self, records: Mapping[str, UserRecord]) -> None:
        try:
            write_users_file(self.path, records)
        except OSError as exc:
            raise AdminError(cannot_write(
                self.path, exc, "the users file",
                instead='keep the accounts in SQL or LDAP ([directory] backend = "sql" or '
                        '"ldap")')) from None

    def _get(self, records: Mapping[str, UserRecord], name: str) -> UserRecord:
        if name not in records:
            raise AdminError(f"no account {name}")
        return records[name]

    async def list_users(self) -> list[UserEntry]:
        return [rec for _, rec in sorted(self._read().items())]

    async def get_user(self, name: str) -> UserEntry | None:
        return self._read().get(name)

    async def add_users(self, entries: Sequence[UserEntry]) -> None:
        records = self._read()
        check_new_entries(list(records.values()), entries)
        for entry in entries:
            records[entry.account.name] = entry
        self._write(records)

    async def set_password(self, name: str, password_hash: str) -> None:
        records = self._read(repairing=True)
        rec = self._get(records, name)
        records[name] = UserRecord(rec.account, password_hash, rec.app_passwords)
        self._write(records)

    async def set_groups(self, name: str, groups: tuple[str, ...]) -> None:
        records = self._read()
        rec = self._get(records, name)
        account = Account(rec.account.name, rec.account.addresses, rec.account.send_as_others,
                          groups)
        records[name] = UserRecord(account, rec.password_hash, rec.app_passwords)
        self._write(records)

    async def delete_user(self, name: str) -> None:
        records = self._read()
        self._get(records, name)
        del records[name]
        self._write(records)

    async def add_app_password(self, name: str, app: AppPassword) -> None:
        records = self._read()
        rec = self._get(records, name)
        if any(a.label == app.label for a in rec.app_passwords):
            raise AdminError(f"{name} already has an app password {app.label!r}; revoke it "
                             "first")
        records[name] = UserRecord(rec.account, rec.password_hash, (*rec.app_passwords, app))
        self._write(records)

    async def list_app_passwords(self, name: str) -> list[AppPassword]:
        rec = self._get(self._read(), name)
        used = read_last_used(self.path)
        return [AppPassword(a.label, a.password_hash, a.services, a.created,
                            used.get(f"{name}/{a.label}")) for a in rec.app_passwords]

    async def revoke_app_password(self, name: str, label: str) -> bool:
        records = self._read()
        rec = self._get(records, name)
        kept = tuple(a for a in rec.app_passwords if a.label != label)
        if len(kept) == len(rec.app_passwords):
            return False
        records[name] = UserRecord(rec.account, rec.password_hash, kept)
        self._write(records)
        return True

    async def close(self) -> None:
        return None
