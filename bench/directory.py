#!/usr/bin/env python3
"""Benchmark of the directory backends: logins/s and login latency, per backend.

    PYTHONPATH=. .venv/bin/python bench/directory.py            # about 3 minutes
    PYTHONPATH=. .venv/bin/python bench/directory.py --quick    # about 40 seconds

Each backend is loaded with the contract accounts (tests/support/directory_data.py: three
people, argon2id and SHA512-CRYPT hashes) and driven through the daemon's own login path
below the doors: load_directory() -> DirectoryFront (credentials cache) -> backend. Real
servers: the users file, SQLite, PostgreSQL (a throwaway cluster, as in the tests) and
slapd (LDAPS with a generated CA, as in the tests).

Figures, one line each (nothing is asserted about time):

  directory.logins  backend=B cache=on|off clients=N  logins/s, p50/p99 ms, failures, and
                    cpu_ms/login: this process's CPU (all threads: argon2id, drivers,
                    TLS to the servers) per login; the servers' own CPU is not counted.
                    On a shared machine logins/s and latency vary; cpu_ms/login less.
  directory.slow    LDAP behind a proxy that delays every bind response by --delay-ms:
                    p50/p99 login latency with 1/10/50 clients, cache off and on

Clients are asyncio tasks in one process; client i logs in as its own account bench<i>
(argon2id in the users file and SQL, {SSHA} in LDAP), over and over: with the cache on,
all but each client's first login are cache hits, which is the point of the cache (a mail
client reconnecting). Each level runs --seconds and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.directory_backends import make_backend
from tests.support.directory_data import Person, bench_people, people_ldif
from tests.support.ldapserver import start_slapd
from tests.support.pgserver import start_postgres

from mailkeep.directory.admin import UserEntry
from mailkeep.directory.base import Account, load_directory
from mailkeep.directory.passwords import hash_password

LEVELS = (1, 10, 50)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


BENCH_PEOPLE = bench_people(max(LEVELS))


async def add_bench_people(setup: Any) -> None:
    """The bench accounts, in the file and SQL backends (LDAP has them from its LDIF)."""
    if not setup.manages_accounts:
        return
    admin = setup.admin()
    hashes = await asyncio.gather(*[asyncio.to_thread(hash_password, p.password)
                                    for p in BENCH_PEOPLE])
    await admin.add_users([UserEntry(Account(p.name, p.addresses), h)
                           for p, h in zip(BENCH_PEOPLE, hashes, strict=True)])


async def drive(directory: Any, clients: int, seconds: float) -> tuple[int, int, list[float]]:
    """(ok logins, failures, latencies in ms) of `clients` looping for `seconds`."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    counts = [0, 0]

    async def client(i: int) -> None:
        person: Person = BENCH_PEOPLE[i]
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                account = await directory.authenticate(person.name, person.password, "imap")
            except Exception:  # a temporary failure counts as a failure
                account = None
            latencies.append((time.perf_counter() - t0) * 1000)
            counts[0 if account is not None else 1] += 1

    await asyncio.gather(*[client(i) for i in range(clients)])
    return counts[0], counts[1], latencies


async def bench_backend(kind: str, root: Path, seconds: float, **servers: Any) -> None:
    setup = await make_backend(kind, root, **servers)
    await add_bench_people(setup)
    try:
        for cache in ("off", "on"):
            for clients in LEVELS:
                d = load_directory(setup.backend, {**setup.options,
                                                   "cache_ttl": 60 if cache == "on" else 0},
                                   setup.base_dir)
                try:
                    t0, c0 = time.monotonic(), time.process_time()
                    ok, failed, lat = await drive(d, clients, seconds)
                    wall, cpu = time.monotonic() - t0, time.process_time() - c0
                finally:
                    await d.close()
                print(f"directory.logins backend={kind:<10} cache={cache:<3} "
                      f"clients={clients:<3} logins/s={ok / wall:9.1f} "
                      f"p50_ms={statistics.median(lat):7.1f} p99_ms={percentile(lat, 99):7.1f} "
                      f"cpu_ms/login={cpu * 1000 / max(ok, 1):6.2f} failures={failed}",
                      flush=True)
    finally:
        await setup.close()


# -- a TLS-terminating proxy that delays bind responses ------------------------------------------


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    """One BER-encoded LDAPMessage (RFC 4511 §4.1.1: SEQUENCE, definite length)."""
    head = await reader.readexactly(2)
    length = head[1]
    extra = b""
    if length & 0x80:
        extra = await reader.readexactly(length & 0x7F)
        length = int.from_bytes(extra, "big")
    return head + extra + await reader.readexactly(length)


def _op_tag(message: bytes) -> int:
    i = 2 + (message[1] & 0x7F if message[1] & 0x80 else 0)
    id_len = message[i + 1]  # messageID INTEGER: 0x02 LEN VALUE
    return message[i + 2 + id_len]


BIND_RESPONSE = 0x61  # [APPLICATION 1]


async def slow_ldap_proxy(ctx: ssl.SSLContext, upstream_port: int, delay: float
                          ) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return

        async def pump_up() -> None:
            with contextlib.suppress(Exception):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.close()

        async def pump_down() -> None:
            with contextlib.suppress(Exception):
                while True:
                    message = await _read_message(up_reader)
                    if _op_tag(message) == BIND_RESPONSE:
                        await asyncio.sleep(delay)
                    writer.write(message)
                    await writer.drain()
            writer.close()

        try:
            await asyncio.gather(pump_up(), pump_down())
        except asyncio.CancelledError:  # the bench is over: no traceback for that
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


async def bench_slow_ldap(root: Path, seconds: float, delay_ms: float) -> None:
    slapd = start_slapd(require_tls=False, extra_ldif=people_ldif(BENCH_PEOPLE))
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf = slapd.ca.issue_cert("127.0.0.1")
        leaf.configure_cert(ctx)
        proxy = await slow_ldap_proxy(ctx, slapd.ldap_port, delay_ms / 1000)
        port = proxy.sockets[0].getsockname()[1]
        setup = await make_backend("ldap", root, slapd=slapd)
        setup.options["uri"] = [f"ldaps://127.0.0.1:{port}"]
        setup.options["timeout"] = 5.0
        try:
            for cache in ("off", "on"):
                for clients in LEVELS:
                    d = load_directory("ldap", {**setup.options,
                                                "cache_ttl": 60 if cache == "on" else 0},
                                       root)
                    try:
                        t0 = time.monotonic()
                        ok, failed, lat = await drive(d, clients, seconds)
                        wall = time.monotonic() - t0
                    finally:
                        await d.close()
                    print(f"directory.slow    backend=ldap+{delay_ms:.0f}ms cache={cache:<3} "
                          f"clients={clients:<3} logins/s={ok / wall:9.1f} "
                          f"p50_ms={statistics.median(lat):7.1f} "
                          f"p99_ms={percentile(lat, 99):7.1f} failures={failed}", flush=True)
        finally:
            await setup.close()
            proxy.close()
    finally:
        slapd.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per level")
    parser.add_argument("--quick", action="store_true", help="1.5 s per level")
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--backends", default="file,sqlite,postgresql,ldap")
    args = parser.parse_args()
    seconds = 1.5 if args.quick else args.seconds
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]}, {seconds:g} s per level", flush=True)
    with tempfile.TemporaryDirectory(prefix="mailkeep-bench-") as tmp:
        root = Path(tmp)
        slapd = pg = None
        try:
            for kind in args.backends.split(","):
                servers: dict[str, Any] = {}
                if kind == "ldap":
                    slapd = slapd or start_slapd(extra_ldif=people_ldif(BENCH_PEOPLE))
                    servers["slapd"] = slapd
                if kind == "postgresql":
                    pg = pg or start_postgres()
                    servers["pg"] = pg
                (root / kind).mkdir()
                await bench_backend(kind, root / kind, seconds, **servers)
            (root / "slow").mkdir()
            await bench_slow_ldap(root / "slow", seconds, args.delay_ms)
        finally:
            for server in (slapd, pg):
                if server is not None:
                    server.stop()


if __name__ == "__main__":
    asyncio.run(main())
