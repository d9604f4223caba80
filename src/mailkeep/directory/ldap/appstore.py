"""App passwords for LDAP accounts, kept in a small local SQLite file.

mailkeep only reads the LDAP directory (it binds as the user to check a password and
never reads or writes password attributes), so the app passwords it adds live beside the
config: app-passwords.sqlite3, table app_passwords as in the SQL backend's schema. The file
need not exist: without it there are simply no app passwords; it is created by the first
`mailkeep user app-password add`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from mailkeep.directory.admin import AdminError
from mailkeep.directory.apppasswords import AppPassword
from mailkeep.directory.base import SERVICES, DirectoryUnavailable
from mailkeep.directory.sql.drivers import readonly_sqlite
from mailkeep.directory.sql.schema import APP_PASSWORD_STORE_SCHEMA
from mailkeep.fsmodes import cannot_write

log = logging.getLogger("mailkeep.directory")
BUSY_TIMEOUT = 5.0


class AppPasswordStore:
    """Blocking and thread-safe (one connection behind a lock: every call is one quick
    query on a small local file)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self, create: bool = False) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if self.path is None:
            return None
        if not self.path.exists():
            if not create:
                return None
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=BUSY_TIMEOUT,
                               check_same_thread=False, isolation_level=None)
        if create:
            for statement in APP_PASSWORD_STORE_SCHEMA:
                conn.execute(statement)
        self._conn = conn
        return conn

    def for_user(self, name: str) -> tuple[AppPassword, ...]:
        with self._lock:
            try:
                conn = self._connection()
                if conn is None:
                    return ()
                rows = conn.execute("SELECT label, password, services, created, last_used "
                                    "FROM app_passwords WHERE user_name = ? ORDER BY label",
                                    (name,)).fetchall()
            except sqlite3.Error as exc:
                raise DirectoryUnavailable(f"app passwords {self.path}: {exc}") from None
        result: list[AppPassword] = []
        for label, stored, services, created, last_used in rows:
            wanted = tuple(s for s in str(services).split(",") if s in SERVICES)
            if wanted:
                result.append(AppPassword(str(label), str(stored), wanted, float(created or 0),
                                          None if last_used is None else float(last_used)))
        return tuple(result)

    def note_used(self, name: str, label: str) -> None:
        with self._lock:
            try:
                conn = self._connection()
                if conn is not None:
                    conn.execute("UPDATE app_passwords SET last_used = ? WHERE user_name = ? "
                                 "AND label = ?", (int(time.time()), name, label))
            except sqlite3.Error as exc:
                log.warning("app password last-used not recorded: %s", exc)

    def add(self, name: str, app: AppPassword) -> None:
        try:
            self._add(name, app)
        except OSError as exc:
            assert self.path is not None
            raise AdminError(cannot_write(self.path, exc, "the app passwords")) from None
        except sqlite3.OperationalError as exc:
            assert self.path is not None
            raise AdminError(readonly_sqlite(self.path, exc)) from None

    def _add(self, name: str, app: AppPassword) -> None:
        with self._lock:
            conn = self._connection(create=True)
            assert conn is not None
            try:
                conn.execute("INSERT INTO app_passwords (user_name, label, password, services, "
                             "created) VALUES (?, ?, ?, ?, ?)",
                             (name, app.label, app.password_hash, ",".join(app.services),
                              int(app.created or time.time())))
            except sqlite3.IntegrityError:
                raise AdminError(f"{name} already has an app password {app.label!r}; revoke "
                                 "it first") from None

    def revoke(self, name: str, label: str) -> bool:
        with self._lock:
            conn = self._connection()
            if conn is None:
                return False
            try:
                cur = conn.execute("DELETE FROM app_passwords WHERE user_name = ? AND "
                                   "label = ?", (name, label))
            except sqlite3.OperationalError as exc:
                assert self.path is not None
                raise AdminError(readonly_sqlite(self.path, exc)) from None
            return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
