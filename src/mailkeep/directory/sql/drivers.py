"""SQL drivers: SQLite (the standard library, in threads) and PostgreSQL (asyncpg).

Both take queries with `:name` parameters and a mapping of values; both turn every failure
to reach the database (down, locked past the timeout, too slow) into DirectoryUnavailable.
Writes (the administration commands) run as one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from mailkeep.config.hints import admin_command
from mailkeep.directory.admin import AdminError
from mailkeep.directory.base import DirectoryError, DirectoryUnavailable
from mailkeep.directory.sql.schema import parameters, to_numbered

log = logging.getLogger("mailkeep.directory")

Row = tuple[Any, ...]
Statement = tuple[str, Mapping[str, object]]


class SqlDriver(Protocol):
    async def fetch(self, query: str, params: Mapping[str, object]) -> list[Row]: ...

    async def transaction(self, statements: Sequence[Statement]) -> list[int]:
        """Run the statements in one transaction; their row counts."""
        ...

    async def check(self) -> None:
        """The database answers (SELECT 1); DirectoryUnavailable when it does not."""
        ...

    async def close(self) -> None: ...


def _bind(query: str, params: Mapping[str, object]) -> dict[str, object]:
    """Only the parameters a query names (sqlite3 refuses extra ones)."""
    return {name: params[name] for name in parameters(query)}


class SqliteDriver:
    """SQLite through the standard library, off the event loop: a few threads, each with
    its own connection (sqlite3 connections are not for sharing across threads)."""

    def __init__(self, path: Path, *, timeout: float, workers: int, create: bool = False
                 ) -> None:
        self.path = path
        self.timeout = timeout
        if create and not path.exists():
            # The database holds password hashes: private from the first byte.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if not path.exists():
            raise DirectoryError(f"directory.database: {path} does not exist (create it with "
                                 f"`{admin_command('user', 'create-schema')}`)")
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mailkeep-sqlite")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # mode=rw: never create an empty database by accident; busy timeout: wait this
            # long for a writer (an administration command) before giving up.
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=self.timeout,
                                   check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _fetch(self, query: str, params: Mapping[str, object]) -> list[Row]:
        return [tuple(r) for r in self._connection().execute(query, _bind(query, params))]

    def _transaction(self, statements: Sequence[Statement]) -> list[int]:
        conn = self._connection()
        counts: list[int] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for query, params in statements:
                counts.append(conn.execute(query, _bind(query, params)).rowcount)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return counts

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout * 2):
                return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.IntegrityError as exc:
            raise AdminError(f"refused by the database: {exc}") from None
        except (sqlite3.Error, TimeoutError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                # A write (`mailkeep user ...`) on a read-only file or folder: say what to do.
                raise AdminError(readonly_sqlite(self.path, exc)) from None
            # Locked past the busy timeout, the file gone or unreadable, a broken query
            # (logged: an administrator's fix), or too slow.
            raise DirectoryUnavailable(f"sqlite {self.path}: {exc or 'timed out'}") from None

    async def fetch(self, query: str, params: Mapping[str, object]) -> list[Row]:
        rows: list[Row] = await self._run(self._fetch, query, params)
        return rows

    async def transaction(self, statements: Sequence[Statement]) -> list[int]:
        counts: list[int] = await self._run(self._transaction, statements)
        return counts

    def _check(self) -> None:
        # A thread's connection keeps a removed file open and would answer from it: the
        # file itself must still be there for the answer to mean anything.
        if not self.path.is_file():
            raise sqlite3.OperationalError("the database file is gone")
        self._connection().execute("SELECT 1").fetchall()

    async def check(self) -> None:
        await self._run(self._check)

    async def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()


def readonly_sqlite(path: Path, exc: sqlite3.Error) -> str:
    """SQLite says "attempt to write a readonly database" for a read-only mount and for a
    file or folder this user may not write alike (it needs the folder for its journal)."""
    return (f"cannot write {path}: {exc}: {path} or its folder {path.parent} is read-only "
            "here (a read-only volume or mount?): mount it read-write, or run this as the "
            "user that owns them (the user the daemon runs as)")


class PostgresDriver:
    """PostgreSQL through asyncpg: a pool created on first use (so the daemon starts while
    the database is down, and answers "try again later" until it is back). Several hosts in
    the DSN (postgresql://db1,db2/mail) are tried in turn by asyncpg."""

    def __init__(self, dsn: str, *, password: str | None, timeout: float, pool_size: int
                 ) -> None:
        self.dsn = dsn
        self.password = password
        self.timeout = timeout
        self.pool_size = pool_size
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        import asyncpg  # noqa: PLC0415 (only the PostgreSQL setups need it)

        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn, password=self.password, min_size=0, max_size=self.pool_size,
                    timeout=self.timeout, command_timeout=self.timeout,
                    max_inactive_connection_lifetime=60.0)
            return self._pool

    def _unavailable(self, exc: BaseException) -> DirectoryUnavailable:
        return DirectoryUnavailable(f"postgresql: {type(exc).__name__}: {exc or 'timed out'}")

    async def fetch(self, query: str, params: Mapping[str, object]) -> list[Row]:
        import asyncpg  # noqa: PLC0415

        sql, names = to_numbered(query)
        try:
            async with asyncio.timeout(self.timeout * 2):
                pool = await self._get_pool()
                async with pool.acquire() as conn:
                    records = await conn.fetch(sql, *[params[n] for n in names])
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Down, too slow, too many connections, or a broken query (logged by the
            # caller: an administrator's fix): the client is told to try again later.
            raise self._unavailable(exc) from None
        return [tuple(r) for r in records]

    async def check(self) -> None:
        await self.fetch("SELECT 1", {})

    async def transaction(self, statements: Sequence[Statement]) -> list[int]:
        import asyncpg  # noqa: PLC0415

        counts: list[int] = []
        try:
            async with asyncio.timeout(self.timeout * 2):
                pool = await self._get_pool()
                async with pool.acquire() as conn, conn.transaction():
                    for query, params in statements:
                        sql, names = to_numbered(query)
                        status = await conn.execute(sql, *[params[n] for n in names])
                        tail = str(status).rsplit(" ", 1)[-1]
                        counts.append(int(tail) if tail.isdigit() else 0)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise AdminError(f"refused by the database: {exc}") from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self._unavailable(exc) from None
        return counts

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            pool.terminate()
