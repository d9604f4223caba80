"""The IMAP steady command mix on open mailboxes, against any IMAPS server.

What a connected mail client does all day, without logins: each client logs in once (users
user0001.. with one password, as the anchor in ../shared/anchors sets up), selects INBOX and
then, until the duration runs out, repeats a fixed mix of commands:

    FETCH 1:10 (FLAGS UID RFC822.SIZE ENVELOPE)           a message list refresh
    UID FETCH <one> (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])
    UID FETCH <one> (BODY.PEEK[])                          opening a message
    UID STORE <one> +FLAGS (\\Seen)   and  -FLAGS (\\Seen)
    SEARCH UNSEEN                    and  SEARCH SUBJECT "m"
    APPEND INBOX (a 2 KB message) ... UID STORE <new> +FLAGS (\\Deleted) ... UID EXPUNGE <new>
    NOOP

One op is one command; ops/s and per-command p50/p99 latencies are printed, as JSON with
--json. Every client works on its own user (no lock contention between clients). Loopback
only; it stops by itself.

    python bench/imapmix.py --port 20993 -c 10 -d 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import statistics
import time
from collections import defaultdict

MESSAGE = (b"From: mix@mail.test\r\nTo: someone@mail.test\r\nSubject: mix message\r\n"
           b"Message-ID: <mix@mail.test>\r\n\r\n" + (b"y" * 76 + b"\r\n") * 25)  # ~2 KB


def context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.n = 0

    async def command(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        if literal is None:
            self.w.write(tag + b" " + text + b"\r\n")
        else:
            self.w.write(tag + b" " + text + b" {%d}\r\n" % len(literal))
            line = await self.r.readline()
            if not line.startswith(b"+"):
                raise RuntimeError(f"no continuation: {line!r}")
            self.w.write(literal + b"\r\n")
        untagged: list[bytes] = []
        while True:
            line = await self.r.readline()
            if not line:
                raise ConnectionError("closed")
            while line.endswith(b"}\r\n") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1:-3].rstrip(b"+"))
                await self.r.readexactly(size)
                line = await self.r.readline()
            if line.startswith(tag + b" "):
                if not line[len(tag) + 1:].startswith(b"OK"):
                    raise RuntimeError(f"{text[:40]!r}: {line[:200]!r}")
                return untagged
            untagged.append(line)


def _uids(lines: list[bytes]) -> list[int]:
    out = []
    for line in lines:
        if line.startswith(b"* SEARCH"):
            out += [int(x) for x in line.split()[2:] if x.isdigit()]
        else:
            m = re.search(rb"UID (\d+)", line)
            if m:
                out.append(int(m.group(1)))
    return out


async def session(a: argparse.Namespace, user: int, deadline: float,
                  lat: dict[str, list[float]]) -> int:
    r, w = await asyncio.open_connection(a.host, a.port, ssl=context(),
                                         server_hostname="mail.test", limit=1 << 22)
    c = Client(r, w)
    try:
        await r.readline()
        name = f"user{user + 1:04d}"
        await c.command(f'LOGIN "{name}" "{a.password}"'.encode())
        await c.command(b"SELECT INBOX")
        listing = await c.command(b"FETCH 1:* (UID)")
        uids = _uids(listing)
        if not uids:
            raise RuntimeError(f"{name}: INBOX is empty (seed it first)")
        ops = 0
        i = 0
        while time.perf_counter() < deadline:
            one = uids[i % len(uids)]
            i += 1
            steps: list[tuple[str, bytes, bytes | None]] = [
                ("fetch-list", b"FETCH 1:10 (FLAGS UID RFC822.SIZE ENVELOPE)", None),
                ("fetch-headers",
                 b"UID FETCH %d (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])" % one, None),
                ("fetch-body", b"UID FETCH %d (BODY.PEEK[])" % one, None),
                ("store", b"UID STORE %d +FLAGS (\\Seen)" % one, None),
                ("store", b"UID STORE %d -FLAGS (\\Seen)" % one, None),
                ("search", b"SEARCH UNSEEN", None),
                ("search", b'SEARCH SUBJECT "m"', None),
                ("append", b"APPEND INBOX ()", MESSAGE),
            ]
            for kind, text, literal in steps:
                t0 = time.perf_counter()
                await c.command(text, literal)
                lat[kind].append(time.perf_counter() - t0)
                ops += 1
            t0 = time.perf_counter()
            found = _uids(await c.command(b'UID SEARCH HEADER Message-ID "mix@mail.test"'))
            lat["search"].append(time.perf_counter() - t0)
            ops += 1
            if found:
                t0 = time.perf_counter()
                await c.command(b"UID STORE %s +FLAGS.SILENT (\\Deleted)"
                                % ",".join(map(str, found)).encode())
                lat["store"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await c.command(b"UID EXPUNGE %s" % ",".join(map(str, found)).encode())
                lat["expunge"].append(time.perf_counter() - t0)
                ops += 2
            t0 = time.perf_counter()
            await c.command(b"NOOP")
            lat["noop"].append(time.perf_counter() - t0)
            ops += 1
        await c.command(b"LOGOUT")
        return ops
    finally:
        w.close()


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


async def main(a: argparse.Namespace) -> dict[str, object]:
    lat: dict[str, list[float]] = defaultdict(list)
    start = time.perf_counter()
    deadline = start + a.duration
    results = await asyncio.gather(*(session(a, i, deadline, lat) for i in range(a.clients)))
    elapsed = time.perf_counter() - start
    ops = sum(results)
    everything = [x for v in lat.values() for x in v]
    out: dict[str, object] = {
        "test": "imap_mix", "port": a.port, "clients": a.clients, "elapsed_s": round(elapsed, 2),
        "ops": ops, "ops_per_s": round(ops / elapsed, 1),
        "p50_ms": round(pct(everything, 50), 2), "p99_ms": round(pct(everything, 99), 2),
    }
    for kind, values in sorted(lat.items()):
        out[f"{kind}_p50_ms"] = round(statistics.median(values) * 1000, 2)
        out[f"{kind}_p99_ms"] = round(pct(values, 99), 2)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=993)
    p.add_argument("--password", default="secret")
    p.add_argument("-c", "--clients", type=int, default=10)
    p.add_argument("-d", "--duration", type=float, default=15.0)
    p.add_argument("--json", help="append the result to this file")
    a = p.parse_args()
    if not a.host.startswith("127.") and a.host != "::1":
        p.error("loopback only")
    if a.duration > 600:
        p.error("duration capped at 600 s")
    result = asyncio.run(main(a))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")
