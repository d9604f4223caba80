#!/usr/bin/env python3
"""Benchmark of mailkeep's POP3S service (implicit TLS): logins/s, messages/s, memory.

    .venv/bin/python bench/pop3.py              # full run, about 2 minutes
    .venv/bin/python bench/pop3.py --quick      # smoke run, about 20 seconds

It writes a throw-away config with `mailkeep init`, binds every listener to 127.0.0.1 on
ephemeral ports (plus a pop3s listener), creates one account per client (bench00, bench01,
...: a POP3 maildrop is locked by one session at a time), fills each INBOX with --messages
messages of --size octets (files written straight into new/, named like our deliveries),
starts `mailkeep serve` and drives it with an asyncio POP3 client (TLS verified).

Figures, one line each (nothing is asserted about time):

  pop3.logins    clients=N  connect + TLS + USER/PASS + STAT + QUIT per iteration
  pop3.retr      clients=N  one login, then RETR 1..M (no DELE), then QUIT, repeat
  pop3.rss       the daemon's VmRSS idle after start, with 50 idle logged-in sessions,
                 and its peak (VmHWM) at the end
  pop3.verify    messages still in the Maildirs == messages created (RETR deletes nothing)

Each load level is bounded by --seconds and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOSTNAME = "mail.example.test"
PASSWORD = "bench-password-not-secret"
REPLY_TIMEOUT = 60.0


def make_message(size: int, n: int) -> bytes:
    head = (f"From: bench@example.test\r\nTo: bench@example.test\r\nSubject: pop3 bench {n}\r\n"
            f"Message-ID: <pop3-bench-{n}@example.test>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= size:
        body += line
    return head + bytes(body)


# -- the client -------------------------------------------------------------------------------

class Pop3Error(Exception):
    pass


@dataclass
class Target:
    port: int
    context: ssl.SSLContext


class Pop3Conn:
    def __init__(self, t: Target) -> None:
        self.t = t
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def line(self) -> bytes:
        assert self.reader is not None
        line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
        if not line:
            raise Pop3Error("connection closed")
        return line

    async def command(self, text: bytes) -> bytes:
        assert self.writer is not None
        self.writer.write(text + b"\r\n")
        reply = await self.line()
        if not reply.startswith(b"+OK"):
            raise Pop3Error(reply.decode("ascii", "replace").strip())
        return reply

    async def open(self, user: str) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.t.port, ssl=self.t.context, server_hostname=HOSTNAME,
            limit=1 << 20)
        await self.line()
        await self.command(f"USER {user}".encode())
        await self.command(f"PASS {PASSWORD}".encode())

    async def retr(self, n: int) -> int:
        await self.command(f"RETR {n}".encode())
        total = 0
        while (ln := await self.line()) != b".\r\n":
            total += len(ln)
        return total

    async def quit(self) -> None:
        with contextlib.suppress(Pop3Error, OSError):
            await self.command(b"QUIT")
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
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(f"{type(exc).__name__}: {exc}")


async def login_worker(t: Target, user: str, deadline: float, st: Stats) -> None:
    while time.monotonic() < deadline:
        c = Pop3Conn(t)
        try:
            await c.open(user)
            await c.command(b"STAT")
            await c.quit()
            st.ok += 1
        except (Pop3Error, OSError, TimeoutError, ssl.SSLError) as exc:
            st.error(exc)
            await c.close()


async def retr_worker(t: Target, user: str, messages: int, deadline: float, st: Stats) -> None:
    while time.monotonic() < deadline:
        c = Pop3Conn(t)
        try:
            await c.open(user)
            for n in range(1, messages + 1):
                if time.monotonic() >= deadline:
                    break
                await c.retr(n)
                st.ok += 1
            await c.quit()
        except (Pop3Error, OSError, TimeoutError, ssl.SSLError) as exc:
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


def prepare(root: Path, users: list[str], messages: int, size: int) -> Path:
    mailkeep("init", str(root), "--hostname", HOSTNAME, "--ports", "unprivileged",
             "--bind-host", "127.0.0.1", "--no-demo-user")
    cfg = root / "mailkeep.toml"
    text = re.sub(r'^bind = \["127\.0\.0\.1:\d+"\]$', 'bind = ["127.0.0.1:0"]',
                  cfg.read_text(), flags=re.MULTILINE)
    text = re.sub(r"^\[security\]$", "[security]\nmax_connections_per_ip = 500", text,
                  flags=re.MULTILINE)
    if "[listeners.pop3s]" not in text:  # mailkeep init writes it since POP3 landed
        text += ('\n[listeners.pop3s]\nprotocol = "pop3"\ntls = "implicit"\n'
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
    addrs = json.loads(ready.read_text())["listeners"]["pop3s"]
    return proc, int(addrs[0].rsplit(":", 1)[1])


async def run(args: argparse.Namespace, t: Target, pid: int, users: list[str]) -> None:
    print(f"pop3.rss idle_start={rss_kb(pid) / 1024:.1f}MB", flush=True)
    for kind in ("logins", "retr"):
        for clients in args.levels:
            st = Stats()
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            deadline = t0 + args.seconds
            if kind == "logins":
                jobs = [login_worker(t, users[i], deadline, st) for i in range(clients)]
            else:
                jobs = [retr_worker(t, users[i], args.messages, deadline, st)
                        for i in range(clients)]
            await asyncio.gather(*jobs)
            wall = time.monotonic() - t0
            unit = "logins/s" if kind == "logins" else f"msgs/s ({args.size} B)"
            print(f"pop3.{kind} clients={clients:<3} {st.ok / wall:8.1f} {unit}  ok={st.ok} "
                  f"errors={st.errors} srv_cpu={100 * (cpu_seconds(pid) - cpu0) / wall:.0f}% "
                  f"rss={rss_kb(pid) / 1024:.1f}MB"
                  + (f"  e.g. {st.samples[0]}" if st.samples else ""), flush=True)
    idle = [Pop3Conn(t) for _ in range(min(50, len(users)))]
    await asyncio.gather(*(c.open(u) for c, u in zip(idle, users, strict=False)))
    await asyncio.sleep(0.5)
    print(f"pop3.rss sessions={len(idle)}_idle_logged_in={rss_kb(pid) / 1024:.1f}MB "
          f"peak(VmHWM)={rss_kb(pid, 'VmHWM') / 1024:.1f}MB", flush=True)
    await asyncio.gather(*(c.quit() for c in idle))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 10, 50])
    p.add_argument("--messages", type=int, default=200, help="messages per INBOX")
    p.add_argument("--size", type=int, default=10 * 1024)
    args = p.parse_args()
    if args.quick:
        args.seconds, args.messages = 3.0, 50
    users = [f"bench{i:02d}" for i in range(max(max(args.levels), 50))]
    with tempfile.TemporaryDirectory(prefix="mailkeep-bench-pop3-") as tmp:
        root = Path(tmp)
        cfg = prepare(root, users, args.messages, args.size)
        proc, port = start_daemon(cfg, args.loop)
        try:
            ctx = ssl.create_default_context(cafile=str(root / "certs" / "mailkeep.crt"))
            print(f"# bench: python {sys.version.split()[0]} nproc={os.cpu_count()} "
                  f"server_loop={args.loop} size={args.size} seconds/level={args.seconds} "
                  f"messages/inbox={args.messages}", flush=True)
            asyncio.run(run(args, Target(port, ctx), proc.pid, users))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        left = sum(len(os.listdir(root / "data/mail" / u / sub)) for u in users
                   for sub in ("new", "cur"))
        print(f"pop3.verify messages_left={left} expected={len(users) * args.messages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
