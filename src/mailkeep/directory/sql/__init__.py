"""The SQL backend: SQLite out of the box, PostgreSQL with asyncpg.

    [directory]
    backend = "sql"
    database = "users.sqlite3"            # SQLite, relative to the config file; or
    # dsn = "postgresql://mailkeep@db.example.test/mail"
    # password_file = "db.secret"         # the database password (mode 0600), not in the DSN
    # timeout = 5.0                       # seconds per query before "try again later"
    # pool_size = 4                       # connections (threads for SQLite)
    # login_query = "SELECT ..."          # and the other queries of sql/schema.py

Passwords are verified here, as in the file backend (argon2id, Dovecot's {SHA512-CRYPT},
{SHA256-CRYPT}, {BLF-CRYPT}), with app passwords from the app_passwords query.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailkeep.config.hints import admin_command
from mailkeep.directory.apppasswords import (
    AppPassword,
    LastUsedCoalescer,
    verify_login,
)
from mailkeep.directory.base import SERVICES, Account, DirectoryError, DirectoryUnavailable
from mailkeep.directory.names import clean_groups, valid_account_name
from mailkeep.directory.passwords import hash_problem
from mailkeep.directory.sql.drivers import PostgresDriver, Row, SqlDriver, SqliteDriver
from mailkeep.directory.sql.schema import QUERIES

log = logging.getLogger("mailkeep.directory")

DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL_SIZE = 4
HASH_WORKERS = max(2, os.cpu_count() or 2)
# Accounts whose unusable hash has been logged (each once); past this many, every failing
# login of a further one is logged (memory stays bounded whatever the table holds).
MAX_DAMAGED_REPORTED = 1024
_KEYS = {"database", "dsn", "password_file", "timeout", "pool_size", *QUERIES}


def _number(options: Mapping[str, object], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise DirectoryError(f"directory.{key}: expected a positive number, got {value!r}")
    return float(value)


def open_driver(options: Mapping[str, object], base_dir: Path, *, create: bool = False
                ) -> SqlDriver:
    """The driver the options name; DirectoryError for every mistake in them."""
    unknown = sorted(set(options) - _KEYS)
    if unknown:
        raise DirectoryError(f"directory.{unknown[0]}: unknown key for backend \"sql\" "
                             f"(known: {', '.join(sorted(_KEYS))})")
    timeout = _number(options, "timeout", DEFAULT_TIMEOUT)
    pool_size = int(_number(options, "pool_size", DEFAULT_POOL_SIZE))
    database, dsn = options.get("database"), options.get("dsn")
    if (database is None) == (dsn is None):
        raise DirectoryError('directory: give either database = "users.sqlite3" (SQLite) or '
                             'dsn = "postgresql://..." (PostgreSQL)')
    if database is not None:
        if not isinstance(database, str) or not database:
            raise DirectoryError("directory.database: expected a file name")
        if "password_file" in options:
            raise DirectoryError("directory.password_file: only for dsn (PostgreSQL)")
        return SqliteDriver(base_dir / database, timeout=timeout, workers=pool_size,
                            create=create)
    if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
        raise DirectoryError('directory.dsn: expected "postgresql://USER@HOST[:PORT]/DATABASE"')
    password = None
    pw_file = options.get("password_file")
    if pw_file is not None:
        if not isinstance(pw_file, str):
            raise DirectoryError("directory.password_file: expected a file name")
        try:
            password = (base_dir / pw_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DirectoryError(f"directory.password_file: {base_dir / pw_file}: "
                                 f"{exc.strerror or exc}") from None
    return PostgresDriver(dsn, password=password, timeout=timeout, pool_size=pool_size)


def queries(options: Mapping[str, object]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, (default, _) in QUERIES.items():
        value = options.get(key, default)
        if not isinstance(value, str):
            raise DirectoryError(f"directory.{key}: expected an SQL query (a string)")
        result[key] = value.strip()
    for key in ("login_query", "account_query", "address_query", "addresses_query"):
        if not result[key]:
            raise DirectoryError(f"directory.{key}: required")
    return result


def app_passwords_from_rows(rows: list[Row], where: str) -> tuple[AppPassword, ...]:
    apps: list[AppPassword] = []
    for row in rows:
        label, stored, services = (str(v) for v in row[:3])
        wanted = tuple(s.strip() for s in services.split(",") if s.strip() in SERVICES)
        if not wanted:
            log.error("%s: app password %r names no known service (%s)", where, label,
                      ", ".join(SERVICES))
            continue
        apps.append(AppPassword(label, stored, wanted))
    return tuple(apps)


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SqlDirectory:
    """UserDirectory over SQL queries."""

    def __init__(self, options: Mapping[str, object], base_dir: Path) -> None:
        self.queries = queries(options)
        self.driver = open_driver(options, base_dir)
        self._pool = ThreadPoolExecutor(HASH_WORKERS, thread_name_prefix="mailkeep-hash")
        self._coalescer = LastUsedCoalescer()
        self._damaged_reported: set[str] = set()

    @classmethod
    def admin(cls, options: Mapping[str, object], base_dir: Path) -> object:
        from mailkeep.directory.sql.admin import SqlAdmin  # noqa: PLC0415

        return SqlAdmin(options, base_dir)

    async def _fetch(self, key: str, **params: object) -> list[Row]:
        query = self.queries[key]
        if not query:
            return []
        try:
            return await self.driver.fetch(query, params)
        except DirectoryUnavailable as exc:
            log.error("directory: %s failed: %s", key, exc)
            raise

    async def _account(self, name: str) -> Account | None:
        rows = await self._fetch("account_query", name=name)
        if not rows:
            return None
        addresses = await self._fetch("addresses_query", name=name)
        groups = await self._fetch("groups_query", name=name)
        return Account(name, tuple(str(r[0]).strip().lower() for r in addresses),
                       bool(rows[0][1]), clean_groups([str(r[0]) for r in groups]))

    async def authenticate(self, login: str, password: str, service: str) -> Account | None:
        key = login.strip().lower()
        # PostgreSQL text cannot hold NUL, nor UTF-8 lone surrogates: no account has them.
        rows = await self._fetch("login_query", login=key) if _storable(key) else []
        names = {str(r[0]) for r in rows}
        stored: str | None = None
        apps: tuple[AppPassword, ...] = ()
        name = ""
        if len(names) > 1:
            log.error("directory: login %r matches several accounts (%s): refused", key[:64],
                      ", ".join(sorted(names)))
        elif rows:
            name = str(rows[0][0])
            if valid_account_name(name):
                stored = str(rows[0][1] or "")
                self._report_damaged(name, stored)
                apps = app_passwords_from_rows(
                    await self._fetch("app_passwords_query", name=name), f"account {name}")
            else:
                log.error("directory: account name %r is not usable as a mailbox name "
                          "(lower-case letters, digits and . _ + @ -): refused", name[:64])
        loop = asyncio.get_running_loop()
        match = await loop.run_in_executor(self._pool, verify_login, password, stored, apps,
                                           service)
        if match is None or stored is None:
            return None
        if match.label is not None and self.queries["app_password_used_query"] and \
                self._coalescer.due(name, match.label):
            try:
                await self.driver.transaction([(self.queries["app_password_used_query"],
                                                {"name": name, "label": match.label,
                                                 "now": int(time.time())})])
            except (DirectoryError, DirectoryUnavailable) as exc:  # not worth refusing over
                log.warning("directory: app password last-used not recorded: %s", exc)
        return await self._account(name)

    def _report_damaged(self, name: str, stored: str) -> None:
        """A hash that cannot be verified (a damaged copy, a scheme we do not know): the
        login fails like a wrong password; the administrator hears of it once per account
        (not once per attempt: a client retries every few minutes)."""
        if not stored or name in self._damaged_reported:
            return  # an empty password is how a table disables an account
        problem = hash_problem(stored)
        if problem is None:
            return
        if len(self._damaged_reported) < MAX_DAMAGED_REPORTED:
            self._damaged_reported.add(name)
        log.error("directory: account %s: unusable password hash in the database (%s); its "
                  "logins fail until it is replaced (default schema: `%s`)", name, problem,
                  admin_command("user", "passwd", name))

    async def lookup(self, address: str) -> Account | None:
        key = address.strip().lower()
        if not _storable(key):
            return None
        rows = await self._fetch("address_query", address=key)
        names = {str(r[0]) for r in rows}
        if len(names) != 1:
            return None
        name = names.pop()
        if not valid_account_name(name):
            log.error("directory: account name %r is not usable as a mailbox name: ignored",
                      name[:64])
            return None
        return await self._account(name)

    async def check(self) -> None:
        """The database answers (CheckedDirectory)."""
        await self.driver.check()

    async def close(self) -> None:
        await self.driver.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
