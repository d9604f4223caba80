"""Each directory backend set up with the contract accounts, for the tests that run the same
checks against all of them (file, SQLite, PostgreSQL, LDAP)."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from mailkeep.directory.admin import UserAdmin
from mailkeep.directory.apppasswords import AppPassword, new_app_password
from mailkeep.directory.base import (
    UserDirectory,
    load_admin,
    load_backend,
    load_directory,
)
from mailkeep.directory.file import write_users_file
from tests.support.directory_data import BASE_DN, SERVICE_DN, SERVICE_PASSWORD, entries
from tests.support.ldapserver import Slapd
from tests.support.pgserver import Postgres

KINDS = ("file", "sqlite", "postgresql", "ldap")
# The contract accounts' app password: alice's phone, for IMAP and submission only.
APP_LABEL = "phone"
APP_SERVICES = ("imap", "submission")


@dataclass
class BackendSetup:
    kind: str
    backend: str
    options: dict[str, Any]
    base_dir: Path
    app_secret: str = ""
    opened: list[Any] = field(default_factory=list)

    @property
    def manages_accounts(self) -> bool:
        return self.kind != "ldap"

    def directory(self, **front: Any) -> UserDirectory:
        d = load_directory(self.backend, {**self.options, **front}, self.base_dir)
        self.opened.append(d)
        return d

    def raw(self, **extra: Any) -> UserDirectory:
        d = load_backend(self.backend, {**self.options, **extra}, self.base_dir)
        self.opened.append(d)
        return d

    def admin(self) -> UserAdmin:
        a = load_admin(self.backend, self.options, self.base_dir)
        self.opened.append(a)
        return a

    def directory_toml(self) -> str:
        """The [directory] table for a daemon config with these options."""
        import json  # noqa: PLC0415

        lines = ["[directory]", f'backend = "{self.backend}"']
        for key, value in self.options.items():
            lines.append(f"{key} = {json.dumps(value)}")
        return "\n".join(lines) + "\n"

    async def close(self) -> None:
        for d in reversed(self.opened):
            await d.close()
        self.opened.clear()


def ldap_options(server: Slapd, base_dir: Path, *, uri: list[str] | None = None,
                 timeout: float = 3.0) -> dict[str, Any]:
    (base_dir / "ldap.secret").write_text(SERVICE_PASSWORD + "\n")
    return {"uri": uri or [server.ldaps_uri], "base_dn": BASE_DN, "bind_dn": SERVICE_DN,
            "bind_password_file": "ldap.secret", "ca_file": str(server.ca_file),
            "timeout": timeout}


async def make_backend(kind: str, base_dir: Path, *, slapd: Slapd | None = None,
                       pg: Postgres | None = None) -> BackendSetup:
    """A backend of `kind` holding the contract accounts and alice's app password."""
    if kind == "file":
        # Not users.toml: the daemon test helper writes its own accounts there.
        write_users_file(base_dir / "contract-users.toml", {})
        setup = BackendSetup(kind, "file", {"path": "contract-users.toml"}, base_dir)
    elif kind == "sqlite":
        setup = BackendSetup(kind, "sql", {"database": "users.sqlite3", "timeout": 2.0},
                             base_dir)
    elif kind == "postgresql":
        assert pg is not None
        schema = f"t_{secrets.token_hex(6)}"
        conn = await asyncpg.connect(pg.dsn(), password=pg.password)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()
        (base_dir / "pg.secret").write_text(pg.password + "\n")
        setup = BackendSetup(kind, "sql", {"dsn": pg.dsn(schema=schema),
                                           "password_file": "pg.secret", "timeout": 3.0},
                             base_dir)
    else:
        assert slapd is not None
        setup = BackendSetup(kind, "ldap", ldap_options(slapd, base_dir), base_dir)
    admin = load_admin(setup.backend, setup.options, base_dir)
    try:
        if kind in ("sqlite", "postgresql"):
            await admin.create_schema()  # type: ignore[attr-defined]
        if setup.manages_accounts:
            await admin.add_users(entries())
        secret, stored = new_app_password()
        await admin.add_app_password("alice", AppPassword(APP_LABEL, stored, APP_SERVICES,
                                                          time.time()))
        setup.app_secret = secret
    finally:
        await admin.close()
    return setup


def run(coro: Any) -> Any:
    return asyncio.run(coro)
