#!/usr/bin/env python3
"""Benchmark of mailkeep's IMAPS service (implicit TLS): logins, FETCH, SEARCH, APPEND, STORE.

    .venv/bin/python bench/imap.py              # full run, about 4 minutes
    .venv/bin/python bench/imap.py --quick      # smoke run, under a minute

It writes a throw-away config with `mailkeep init`, binds every listener to 127.0.0.1 on
ephemeral ports, creates --accounts accounts (bench00, bench01, ...; client i uses account
i % accounts, several sessions per mailbox as real clients do) and fills each INBOX with
--messages messages of --size octets (files written straight into new/, named like our
deliveries), starts `mailkeep serve` as a subprocess and drives it with an asyncio IMAP
client (TLS verified against the generated certificate).

Figures, one line each (nothing is asserted about time):

  imap.logins   clients=N  connect + TLS + LOGIN + LOGOUT per iteration
  imap.fetch    clients=N  SELECT INBOX + UID FETCH 1:* (BODY.PEEK[HEADER]) of every message
                           (messages/s and selects/s)
  imap.search   clients=N  SEARCH SUBJECT "<one subject>" and SEARCH FLAGGED, alternating
  imap.append   clients=N  APPEND of a --size message into the account's "Bench" folder
  imap.store    clients=N  UID STORE n +FLAGS/-FLAGS (\\Flagged) on random messages
  imap.rss      the daemon's VmRSS idle after start, with 50 idle sessions (logged in,
                INBOX selected), per idle session, and its peak (VmHWM)
  imap.verify   INBOX files left == files created (nothing above deletes)

Each load level is bounded by --seconds and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

HOSTNAME = "mail.example.test"
PASSWORD = "bench-password-not-secret"
REPLY_TIMEOUT = 120.0
_LITERAL = re.compile(rb"\{(\d+)\}\r\n\Z")


def make_message(size: int, n: int) -> bytes:
    head = (f"From: bench@example.test\r\nTo: bench@example.test\r\nSubject: imap bench {n}\r\n"
            f"Date: Mon, 02 Feb 2026 10:00:00 +0000\r\n"
            f"Message-ID: <imap-bench-{n}@example.test>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= size:
        body += line
    return head + bytes(body)


# -- the client -------------------------------------------------------------------------------

class ImapError(Exception):
    pass


@dataclass
class Target:
    port: int
    context: ssl.SSLContext


class ImapConn:
    def __init__(self, t: Target) -> None:
        self.t = t
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.tag = 0

    async def response(self) -> bytes:
        """One response line with its literals read (and counted, not kept)."""
        assert self.reader is not None
        line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
        if not line:
            raise ImapError("connection closed")
        first = line
        while m := _LITERAL.search(line):
            await asyncio.wait_for(self.reader.readexactly(int(m.group(1))), REPLY_TIMEOUT)
            line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
        return first

    async def command(self, text: str, literal: bytes | None = None) -> int:
        """Send a command; the number of untagged responses on OK, ImapError otherwise."""
        assert self.writer is not None
        self.tag += 1
        tag = f"b{self.tag}".encode()
        if literal is None:
            self.writer.write(tag + b" " + text.encode() + b"\r\n")
        else:
            self.writer.write(tag + b" " + text.encode() + f" {{{len(literal)}}}\r\n".encode())
            cont = await self.response()
            if not cont.startswith(b"+"):
                raise ImapError(cont.decode("ascii", "replace").strip())
            self.writer.write(literal + b"\r\n")
        untagged = 0
        while True:
            line = await self.response()
            if line.startswith(tag + b" "):
                if line[len(tag) + 1:len(tag) + 3] != b"OK":
                    raise ImapError(line.decode("ascii", "replace").strip())
                return untagged
            if line.startswith(b"* "):
                untagged += 1

    async def open(self, user: str) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.t.port, ssl=self.t.context, server_hostname=HOSTNAME,
            limit=1 << 22)
        greeting = await self.response()
        if not greeting.startswith(b"* OK"):
            raise ImapError(greeting.decode("ascii", "replace"))
        await self.command(f'LOGIN {user} "{PASSWORD}"')

    async def logout(self) -> None:
        with contextlib.suppress(ImapError, OSError, TimeoutError):
            await self.command("LOGOUT")
        await self.close()

    async def close(self) -> None:
        w, self.writer = self.writer, None
        if w is not None:
            w.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(w.wait_closed(), 5)


@dataclass
class Stats:
    ok: int = 0
    units: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(f"{type(exc).__name__}: {exc}")


ERRORS = (ImapError, OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError)
Step = Callable[[ImapConn, int], Awaitable[int]]


async def session_worker(t: Target, user: str, deadline: float, st: Stats, *, setup: str | None,
                         step: Step) -> None:
    """One logged-in session doing `step` until the deadline (reconnecting after errors)."""
    n = 0
    while time.monotonic() < deadline:
        c = ImapConn(t)
        try:
            await c.open(user)
            if setup:
                await c.command(setup)
            while time.monotonic() < deadline:
                # Await first, then add: `st.units += await ...` reads st.units before the
                # await, so concurrent workers overwrote each other's counts.
                done = await step(c, n)
                st.units += done
                st.ok += 1
                n += 1
            await c.logout()
        except ERRORS as exc:
            st.error(exc)
            await c.close()


async def login_worker(t: Target, user: str, deadline: float, st: Stats) -> None:
    while time.monotonic() < deadline:
        c = ImapConn(t)
        try:
            await c.open(user)
            await c.logout()
            st.ok += 1
        except ERRORS as exc:
            st.error(exc)
            await c.close()


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- setup ------------------------------------------------------------------------------------

def mailkeep(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mailkeep", *args], check=True, capture_output=True,
                   timeout=120)


def prepare(root: Path, users: list[str], messages: int, size: int, max_clients: int) -> Path:
    mailkeep("init", str(root), "--hostname", HOSTNAME, "--ports", "unprivileged",
             "--bind-host", "127.0.0.1", "--no-demo-user")
    cfg = root / "mailkeep.toml"
    text = re.sub(r'^bind = \["127\.0\.0\.1:\d+"\]$', 'bind = ["127.0.0.1:0"]',
                  cfg.read_text(), flags=re.MULTILINE)
    text = re.sub(r"^\[security\]$", "[security]\nmax_connections_per_ip = 1000", text,
                  flags=re.MULTILINE)
    text = re.sub(r"^\[imap\]$", f"[imap]\nmax_connections_per_user = {max_clients + 10}",
                  text, flags=re.MULTILINE)
    if "[listeners.imaps]" not in text:
        text += ('\n[listeners.imaps]\nprotocol = "imap"\ntls = "implicit"\n'
                 'bind = ["127.0.0.1:0"]\n')
    cfg.write_text(text)
    from mailkeep.directory.passwords import hash_password  # noqa: PLC0415

    pw = hash_password(PASSWORD)
    (root / "users.toml").write_text("".join(
        f'[users.{u}]\npassword = "{pw}"\naddresses = ["{u}@example.test"]\n' for u in users))
    for u in users:
        new = root / "data" / "mail" / u / "new"
        new.mkdir(parents=True)
        for sub in ("cur", "tmp"):
            (new.parent / sub).mkdir()
        bench = root / "data" / "mail" / u / ".Bench"
        for sub in ("cur", "new", "tmp"):
            (bench / sub).mkdir(parents=True)
        for i in range(messages):
            data = make_message(size, i)
            name = f"1700000000.M{i}P1Q{i}.bench,S={len(data)},W={len(data)}"
            (new / name).write_bytes(data)
    return cfg


def start_daemon(cfg: Path, loop: str) -> tuple[subprocess.Popen[bytes], int]:
    ready = cfg.parent / "ready.json"
    log = open(cfg.parent / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "mailkeep", "serve", "--config", str(cfg),
                             "--loop", loop, "--ready-file", str(ready), "--log-level",
                             "warning"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit((cfg.parent / "daemon.log").read_text())
        time.sleep(0.05)
    addrs = json.loads(ready.read_text())["listeners"]["imaps"]
    return proc, int(addrs[0].rsplit(":", 1)[1])


def steps(args: argparse.Namespace) -> dict[str, tuple[str | None, Step, str]]:
    message = make_message(args.size, 0)

    async def fetch(c: ImapConn, n: int) -> int:
        await c.command("SELECT INBOX")
        return await c.command("UID FETCH 1:* (BODY.PEEK[HEADER])")

    async def search(c: ImapConn, n: int) -> int:
        if n % 2:
            await c.command("SEARCH FLAGGED")
        else:
            await c.command(f'SEARCH SUBJECT "imap bench {random.randrange(args.messages)}"')
        return 1

    async def append(c: ImapConn, n: int) -> int:
        await c.command("APPEND Bench (\\Seen)", message)
        return 1

    async def store(c: ImapConn, n: int) -> int:
        uid = random.randrange(1, args.messages + 1)
        await c.command(f"UID STORE {uid} {'+-'[n % 2]}FLAGS.SILENT (\\Flagged)")
        return 1

    return {"fetch": ("EXAMINE INBOX", fetch, "msgs/s"),
            "search": ("SELECT INBOX", search, "searches/s"),
            "append": (None, append, f"appends/s ({args.size} B)"),
            "store": ("SELECT INBOX", store, "stores/s")}


async def run(args: argparse.Namespace, t: Target, pid: int, users: list[str]) -> None:
    print(f"imap.rss idle_start={rss_kb(pid) / 1024:.1f}MB", flush=True)
    kinds = ["logins", *steps(args)]
    for kind in kinds:
        for clients in args.levels:
            st = Stats()
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            deadline = t0 + args.seconds
            who = [users[i % len(users)] for i in range(clients)]
            if kind == "logins":
                await asyncio.gather(*(login_worker(t, u, deadline, st) for u in who))
                rate, unit = st.ok, "logins/s"
            else:
                setup, step, unit = steps(args)[kind]
                await asyncio.gather(*(session_worker(t, u, deadline, st, setup=setup, step=step)
                                       for u in who))
                rate = st.units
            wall = time.monotonic() - t0
            extra = f" selects/s={st.ok / wall:.2f}" if kind == "fetch" else ""
            print(f"imap.{kind:<6} clients={clients:<3} {rate / wall:9.1f} {unit}{extra}  "
                  f"ok={st.ok} errors={st.errors} "
                  f"srv_cpu={100 * (cpu_seconds(pid) - cpu0) / wall:.0f}% "
                  f"rss={rss_kb(pid) / 1024:.1f}MB"
                  + (f"  e.g. {st.samples[0]}" if st.samples else ""), flush=True)
    await asyncio.sleep(1.0)
    before = rss_kb(pid)
    idle = [ImapConn(t) for _ in range(50)]
    await asyncio.gather(*(c.open(users[i % len(users)]) for i, c in enumerate(idle)))
    await asyncio.gather(*(c.command("SELECT INBOX") for c in idle))
    await asyncio.sleep(1.0)
    after = rss_kb(pid)
    print(f"imap.rss sessions=50_idle_selected={after / 1024:.1f}MB "
          f"per_session={(after - before) / 50:.0f}kB "
          f"peak(VmHWM)={rss_kb(pid, 'VmHWM') / 1024:.1f}MB", flush=True)
    await asyncio.gather(*(c.logout() for c in idle))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 10, 50])
    p.add_argument("--accounts", type=int, default=10)
    p.add_argument("--messages", type=int, default=1000, help="messages per INBOX")
    p.add_argument("--size", type=int, default=4096)
    args = p.parse_args()
    if args.quick:
        args.seconds, args.accounts = 3.0, 5
    users = [f"bench{i:02d}" for i in range(args.accounts)]
    with tempfile.TemporaryDirectory(prefix="mailkeep-bench-imap-") as tmp:
        root = Path(tmp)
        cfg = prepare(root, users, args.messages, args.size, max(args.levels))
        proc, port = start_daemon(cfg, args.loop)
        try:
            ctx = ssl.create_default_context(cafile=str(root / "certs" / "mailkeep.crt"))
            print(f"# bench: python {sys.version.split()[0]} nproc={os.cpu_count()} "
                  f"server_loop={args.loop} size={args.size} seconds/level={args.seconds} "
                  f"messages/inbox={args.messages} accounts={args.accounts}", flush=True)
            asyncio.run(run(args, Target(port, ctx), proc.pid, users))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        left = sum(len(os.listdir(root / "data/mail" / u / sub)) for u in users
                   for sub in ("new", "cur"))
        print(f"imap.verify inbox_messages_left={left} expected={len(users) * args.messages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
