"""`mailkeep user ...` on the default SQL schema (sql/schema.py).

An administrator who pointed mailkeep at tables of their own (custom queries) manages users
there; these commands write the default tables only, and say so when they are missing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mailkeep.config.hints import admin_command
from mailkeep.directory.admin import AdminError, UserEntry, check_new_entries
from mailkeep.directory.apppasswords import AppPassword
from mailkeep.directory.base import Account, DirectoryError, DirectoryUnavailable
from mailkeep.directory.names import clean_groups
from mailkeep.directory.sql import app_passwords_from_rows, open_driver
from mailkeep.directory.sql.drivers import Row, SqlDriver, Statement
from mailkeep.directory.sql.schema import SCHEMA


def _unavailable(exc: DirectoryUnavailable) -> AdminError:
    text = str(exc)
    if "no such table" in text or "does not exist" in text:
        return AdminError(f"{text} (create the default tables with "
                          f"`{admin_command('user', 'create-schema')}`)")
    return AdminError(f"the database cannot be used: {text}")


class SqlAdmin:
    manages_accounts = True

    def __init__(self, options: Mapping[str, object], base_dir: Path) -> None:
        self.options = options
        self.base_dir = base_dir
        self._driver: SqlDriver | None = None

    def _open(self, create: bool = False) -> SqlDriver:
        if self._driver is None:
            self._driver = open_driver(self.options, self.base_dir, create=create)
        return self._driver

    async def _fetch(self, query: str, **params: object) -> list[Row]:
        try:
            return await self._open().fetch(query, params)
        except DirectoryUnavailable as exc:
            raise _unavailable(exc) from None

    async def _write(self, statements: Sequence[Statement]) -> list[int]:
        try:
            return await self._open().transaction(statements)
        except DirectoryUnavailable as exc:
            raise _unavailable(exc) from None

    async def create_schema(self) -> None:
        try:
            await self._open(create=True).transaction([(s, {}) for s in SCHEMA])
        except DirectoryUnavailable as exc:
            raise AdminError(f"the database cannot be used: {exc}") from None

    async def _entry(self, name: str, row: tuple[object, ...]) -> UserEntry:
        addresses = await self._fetch(
            "SELECT address FROM addresses WHERE user_name = :name ORDER BY address", name=name)
        groups = await self._fetch(
            "SELECT group_name FROM user_groups WHERE user_name = :name ORDER BY group_name",
            name=name)
        account = Account(name, tuple(str(r[0]) for r in addresses), bool(row[2]),
                          clean_groups([str(r[0]) for r in groups]))
        return UserEntry(account, str(row[1]), tuple(await self.list_app_passwords(name)))

    async def list_users(self) -> list[UserEntry]:
        rows = await self._fetch("SELECT name, password, send_as_others FROM users "
                                 "ORDER BY name")
        return [await self._entry(str(r[0]), r) for r in rows]

    async def get_user(self, name: str) -> UserEntry | None:
        rows = await self._fetch("SELECT name, password, send_as_others FROM users "
                                 "WHERE name = :name", name=name)
        return await self._entry(name, rows[0]) if rows else None

    async def _require(self, name: str) -> None:
        if not await self._fetch("SELECT name FROM users WHERE name = :name", name=name):
            raise AdminError(f"no account {name}")

    async def add_users(self, entries: Sequence[UserEntry]) -> None:
        new_names = [e.account.name for e in entries]
        new_addresses = [a for e in entries for a in e.account.addresses]
        existing: list[UserEntry] = []
        # Only the rows that could clash are read (an import into a large table).
        for key in dict.fromkeys(new_names + new_addresses):
            for row in await self._fetch(
                    "SELECT name FROM users WHERE name = :key UNION "
                    "SELECT user_name FROM addresses WHERE address = :key", key=key):
                found = await self.get_user(str(row[0]))
                if found is not None and found.account.name not in \
                        {e.account.name for e in existing}:
                    existing.append(found)
        check_new_entries(existing, entries)
        statements: list[Statement] = []
        for entry in entries:
            acct = entry.account
            statements.append(("INSERT INTO users (name, password, send_as_others) "
                               "VALUES (:name, :password, :send_as)",
                               {"name": acct.name, "password": entry.password_hash,
                                "send_as": acct.send_as_others}))
            statements += [("INSERT INTO addresses (address, user_name) VALUES (:a, :name)",
                            {"a": a, "name": acct.name}) for a in acct.addresses]
            statements += [("INSERT INTO user_groups (user_name, group_name) VALUES (:name, :g)",
                            {"g": g, "name": acct.name}) for g in acct.groups]
            statements += [self._insert_app(acct.name, app) for app in entry.app_passwords]
        await self._write(statements)

    async def set_password(self, name: str, password_hash: str) -> None:
        counts = await self._write([("UPDATE users SET password = :password WHERE name = :name",
                                     {"password": password_hash, "name": name})])
        if counts[0] == 0:
            raise AdminError(f"no account {name}")

    async def set_groups(self, name: str, groups: tuple[str, ...]) -> None:
        await self._require(name)
        await self._write([("DELETE FROM user_groups WHERE user_name = :name", {"name": name}),
                           *[("INSERT INTO user_groups (user_name, group_name) "
                              "VALUES (:name, :g)", {"name": name, "g": g}) for g in groups]])

    async def delete_user(self, name: str) -> None:
        await self._require(name)
        # The foreign keys cascade; deleting the dependent rows too keeps it correct where
        # they were declared without ON DELETE CASCADE.
        statements = ("DELETE FROM app_passwords WHERE user_name = :name",
                      "DELETE FROM user_groups WHERE user_name = :name",
                      "DELETE FROM addresses WHERE user_name = :name",
                      "DELETE FROM users WHERE name = :name")
        await self._write([(s, {"name": name}) for s in statements])

    @staticmethod
    def _insert_app(name: str, app: AppPassword) -> Statement:
        return ("INSERT INTO app_passwords (user_name, label, password, services, created) "
                "VALUES (:name, :label, :password, :services, :created)",
                {"name": name, "label": app.label, "password": app.password_hash,
                 "services": ",".join(app.services),
                 "created": int(app.created or time.time())})

    async def add_app_password(self, name: str, app: AppPassword) -> None:
        await self._require(name)
        if await self._fetch("SELECT label FROM app_passwords WHERE user_name = :name AND "
                             "label = :label", name=name, label=app.label):
            raise AdminError(f"{name} already has an app password {app.label!r}; revoke it "
                             "first")
        await self._write([self._insert_app(name, app)])

    async def list_app_passwords(self, name: str) -> list[AppPassword]:
        rows = await self._fetch("SELECT label, password, services, created, last_used FROM "
                                 "app_passwords WHERE user_name = :name ORDER BY label",
                                 name=name)
        apps = app_passwords_from_rows(rows, f"account {name}")
        extra = {str(r[0]): r for r in rows}
        return [AppPassword(a.label, a.password_hash, a.services,
                            float(extra[a.label][3] or 0),
                            None if extra[a.label][4] is None else float(extra[a.label][4]))
                for a in apps]

    async def revoke_app_password(self, name: str, label: str) -> bool:
        await self._require(name)
        counts = await self._write([("DELETE FROM app_passwords WHERE user_name = :name AND "
                                     "label = :label", {"name": name, "label": label})])
        return counts[0] > 0

    async def close(self) -> None:
        if self._driver is not None:
            await self._driver.close()


__all__ = ["DirectoryError", "SqlAdmin"]
