#!/usr/bin/env python3
"""Benchmark of IMAP IDLE (RFC 2177): many idle IMAPS connections, and how fast a delivery
reaches the idlers.

    .venv/bin/python bench/idle.py                       # 10,000 idlers, 1,000 for latency
    .venv/bin/python bench/idle.py --connections 2000 --latency-idlers 500 --deliveries 50

Issue 9 asks for: "10,000 concurrent idle IMAPS connections in IDLE (RSS per connection, CPU
while idle, file descriptors), and IDLE notification latency p50/p99 from a delivery through
587 with 1,000 idlers". Targets: under 100 KB RSS per idle connection, p99 under 1 s.

Setup: `mailkeep init` in a temporary directory (bench/imap.py's prepare(): ephemeral ports
on 127.0.0.1, --accounts accounts with --messages messages each), with the limits raised for
one client host (security.max_connections, per-IP and per-user session limits, a long login
timeout) and RLIMIT_NOFILE raised to the hard limit in the daemon and in this client. The
connections come from --sources addresses 127.0.0.2, 127.0.0.3, ... (per-IP limits stay
meaningful). The bench users' passwords are SHA256-CRYPT with 1,000 rounds instead of
argon2id: 10,000 logins at ~0.1 s of argon2 CPU each would measure password hashing, not
IDLE.

Phases (figures one line each, nothing asserted about time):

  idle.base        the daemon's RSS (VmRSS) and open descriptors before any connection
  idle.tls         N connections with TLS done and the greeting read (not logged in)
  idle.login       the same N logged in
  idle.idle        the same N with INBOX selected and in IDLE: RSS per connection (total
                   growth over base / N, and per stage: TLS, login, SELECT+IDLE), fds
  idle.cpu         the daemon's CPU over --quiet-seconds with every connection idling
  idle.latency     --latency-idlers of them stay (the rest log out), spread over the
                   accounts; --deliveries messages are submitted on 587 one after the
                   other, each to one account; for every idler of that account, the time
                   from the start of the submission (and from its 250 reply) to its
                   "* n EXISTS": p50 / p99 / max
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import imap as imap_bench  # bench/imap.py: setup helpers

HOSTNAME = imap_bench.HOSTNAME
PASSWORD = imap_bench.PASSWORD
SENDER = "sender"
CONNECT_CONCURRENCY = 64


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def prepare(root: Path, users: list[str], messages: int, connections: int) -> Path:
    cfg = imap_bench.prepare(root, [*users, SENDER], messages, 2048, connections)
    text = cfg.read_text()
    text = text.replace("[security]\n", f"[security]\nmax_connections = {connections + 100}\n"
                        "login_timeout = 900\n", 1)
    text = text.replace("max_connections_per_ip = 1000", f"max_connections_per_ip = "
                        f"{connections + 100}")
    text = text.replace("[imap]\n", f"[imap]\nmax_connections_per_user_ip = {connections}\n",
                        1)
    cfg.write_text(text)
    from passlib.hash import sha256_crypt  # noqa: PLC0415

    cheap = sha256_crypt.using(rounds=1000).hash(PASSWORD)
    (root / "users.toml").write_text("".join(
        f'[users.{u}]\npassword = "{cheap}"\naddresses = ["{u}@example.test"]\n'
        for u in [*users, SENDER]))
    return cfg


def start_daemon(cfg: Path, loop: str) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    import json  # noqa: PLC0415

    ready = cfg.parent / "ready.json"
    log = open(cfg.parent / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "mailkeep", "serve", "--config", str(cfg),
                             "--loop", loop, "--ready-file", str(ready), "--log-level",
                             "warning"], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=raise_nofile)
    log.close()
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit((cfg.parent / "daemon.log").read_text())
        time.sleep(0.05)
    listeners = json.loads(ready.read_text())["listeners"]
    return proc, {k: int(v[0].rsplit(":", 1)[1]) for k, v in listeners.items()}


@dataclass
class Idler:
    user: str
    source: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    exists: int = 0
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def line(self) -> bytes:
        assert self.reader is not None
        data = await asyncio.wait_for(self.reader.readline(), 300)
        if not data:
            raise ConnectionError("closed")
        return data

    async def command(self, tag: str, text: str) -> list[bytes]:
        assert self.writer is not None
        self.writer.write(f"{tag} {text}\r\n".encode())
        out: list[bytes] = []
        while True:
            data = await self.line()
            if data.startswith(tag.encode() + b" "):
                if b" OK" not in data[:len(tag) + 4]:
                    raise RuntimeError(data.decode("ascii", "replace"))
                return out
            out.append(data)

    async def connect(self, port: int, ctx: ssl.SSLContext) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=HOSTNAME,
            local_addr=(self.source, 0))
        await self.line()  # greeting

    async def login(self) -> None:
        await self.command("l", f'LOGIN {self.user} "{PASSWORD}"')

    async def idle(self) -> None:
        for data in await self.command("s", "SELECT INBOX"):
            if data.rstrip().endswith(b" EXISTS"):
                self.exists = int(data.split()[1])
        assert self.writer is not None
        self.writer.write(b"i IDLE\r\n")
        if not (await self.line()).startswith(b"+"):
            raise RuntimeError("IDLE refused")
        self.task = asyncio.create_task(self.listen())

    async def listen(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError,
                                 TimeoutError, ssl.SSLError):
            while True:
                assert self.reader is not None
                data = await self.reader.readline()
                if not data:
                    return
                if data.rstrip().endswith(b" EXISTS"):
                    self.exists = int(data.split()[1])
                    self.arrivals.append((self.exists, time.monotonic()))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        w, self.writer = self.writer, None
        if w is not None:
            w.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(w.wait_closed(), 5)


async def each(items: list[Idler], step: str) -> None:
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: Idler) -> None:
        async with sem:
            await getattr(i, step)()

    await asyncio.gather(*(one(i) for i in items))


def measure(pid: int) -> tuple[int, int]:
    return imap_bench.rss_kb(pid), fds(pid)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, *, pid: int, ports: dict[str, int], ctx: ssl.SSLContext,
              users: list[str], root: Path) -> None:
    n = args.connections
    base_rss, base_fds = measure(pid)
    print(f"idle.base rss_kb={base_rss} fds={base_fds}", flush=True)
    idlers = [Idler(users[k % len(users)], f"127.0.0.{2 + k % args.sources}")
              for k in range(n)]
    started = time.monotonic()

    async def connect(i: Idler) -> None:
        await i.connect(ports["imaps"], ctx)
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def guarded(i: Idler) -> None:
        async with sem:
            await connect(i)
    await asyncio.gather(*(guarded(i) for i in idlers))
    tls_rss, tls_fds = measure(pid)
    print(f"idle.tls connections={n} rss_kb={tls_rss} fds={tls_fds} "
          f"per_conn_kb={(tls_rss - base_rss) / n:.1f} secs={time.monotonic() - started:.1f}",
          flush=True)
    await each(idlers, "login")
    login_rss, login_fds = measure(pid)
    print(f"idle.login connections={n} rss_kb={login_rss} fds={login_fds} "
          f"per_conn_kb={(login_rss - tls_rss) / n:.1f} (over idle.tls)", flush=True)
    await each(idlers, "idle")
    await asyncio.sleep(2)
    idle_rss, idle_fds = measure(pid)
    print(f"idle.idle connections={n} rss_kb={idle_rss} fds={idle_fds} "
          f"per_conn_kb={(idle_rss - base_rss) / n:.1f} "
          f"(tls {(tls_rss - base_rss) / n:.1f} + login {(login_rss - tls_rss) / n:.1f} "
          f"+ select_idle {(idle_rss - login_rss) / n:.1f}) "
          f"hwm_kb={imap_bench.rss_kb(pid, 'VmHWM')} messages/inbox={args.messages}",
          flush=True)
    cpu0, t0 = imap_bench.cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(args.quiet_seconds)
    cpu1, t1 = imap_bench.cpu_seconds(pid), time.monotonic()
    print(f"idle.cpu connections={n} seconds={t1 - t0:.1f} "
          f"cpu_pct={100 * (cpu1 - cpu0) / (t1 - t0):.2f}", flush=True)

    # Latency: keep --latency-idlers, spread over the accounts.
    keep, leave = idlers[:args.latency_idlers], idlers[args.latency_idlers:]
    await asyncio.gather(*(i.close() for i in leave))
    await asyncio.sleep(2)
    by_user: dict[str, list[Idler]] = {}
    for i in keep:
        by_user.setdefault(i.user, []).append(i)
    targets = sorted(by_user)
    from_start: list[float] = []
    from_250: list[float] = []
    missing = 0
    loop = asyncio.get_running_loop()
    for k in range(args.deliveries):
        user = targets[k % len(targets)]
        group = by_user[user]
        wanted = {id(i): i.exists + 1 for i in group}
        t_start = time.monotonic()
        t_250 = await loop.run_in_executor(None, submit, ports["submission"], root, user, k)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(i.exists < wanted[id(i)] for i in group):
            await asyncio.sleep(0.005)
        for i in group:
            when = next((t for count, t in i.arrivals if count >= wanted[id(i)]), None)
            if when is None:
                missing += 1
                continue
            from_start.append(when - t_start)
            from_250.append(when - t_250)
    if from_start:
        print(f"idle.latency idlers={len(keep)} deliveries={args.deliveries} "
              f"samples={len(from_start)} missing={missing} "
              f"p50_ms={1000 * statistics.median(from_start):.1f} "
              f"p99_ms={1000 * pct(from_start, 0.99):.1f} "
              f"max_ms={1000 * max(from_start):.1f} "
              f"after_250_p50_ms={1000 * statistics.median(from_250):.1f} "
              f"after_250_p99_ms={1000 * pct(from_250, 0.99):.1f}", flush=True)
    await asyncio.gather(*(i.close() for i in keep))


def submit(port: int, root: Path, user: str, k: int) -> float:
    """One message on 587 (STARTTLS, AUTH PLAIN); the monotonic time of the 250 to DATA."""
    ctx = ssl.create_default_context(cafile=str(root / "certs" / "mailkeep.crt"))
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s._host = HOSTNAME  # type: ignore[attr-defined]
        s.starttls(context=ctx)
        s.login(SENDER, PASSWORD)
        s.sendmail(f"{SENDER}@example.test", [f"{user}@example.test"],
                   f"From: {SENDER}@example.test\r\nTo: {user}@example.test\r\n"
                   f"Subject: idle bench {k}\r\n\r\nhello\r\n".encode())
        return time.monotonic()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--latency-idlers", type=int, default=1_000)
    p.add_argument("--deliveries", type=int, default=100)
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--messages", type=int, default=100, help="messages per INBOX")
    p.add_argument("--sources", type=int, default=50, help="client addresses 127.0.0.2...")
    p.add_argument("--quiet-seconds", type=float, default=10.0)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args()
    raise_nofile()
    users = [f"idle{i:03d}" for i in range(args.accounts)]
    with tempfile.TemporaryDirectory(prefix="mailkeep-bench-idle-") as tmp:
        root = Path(tmp)
        cfg = prepare(root, users, args.messages, args.connections)
        proc, ports = start_daemon(cfg, args.loop)
        try:
            ctx = ssl.create_default_context(cafile=str(root / "certs" / "mailkeep.crt"))
            print(f"# bench: python {sys.version.split()[0]} nproc={os.cpu_count()} "
                  f"server_loop={args.loop} connections={args.connections} "
                  f"latency_idlers={args.latency_idlers} accounts={args.accounts} "
                  f"messages/inbox={args.messages} sources={args.sources} "
                  f"nofile={resource.getrlimit(resource.RLIMIT_NOFILE)}", flush=True)
            try:
                import uvloop  # noqa: PLC0415

                uvloop.run(run(args, pid=proc.pid, ports=ports, ctx=ctx, users=users, root=root))
            except ImportError:
                asyncio.run(run(args, pid=proc.pid, ports=ports, ctx=ctx, users=users, root=root))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
