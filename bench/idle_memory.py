#!/usr/bin/env python3
"""Memory of idle sessions: the daemon's PSS with 100, 1,000 and 10,000 idle TLS sessions
of each door, opened from several client processes.

    .venv/bin/python bench/idle_memory.py                          # every kind, up to 10,000
    .venv/bin/python bench/idle_memory.py --kinds imap-select --levels 100,1000
    .venv/bin/python bench/idle_memory.py --kinds imap-select --levels 1000 --tracemalloc

Issue 10 asks for under 100 KB per idle logged-in IMAPS connection: 10,000 idle sessions in
under 1 GB of daemon PSS. Kinds (one fresh daemon each, so one kind's garbage does not count
against the next):

  imap-select   IMAPS (993): LOGIN, SELECT INBOX, then silent (not IDLE)
  imap-idle     the same, then IDLE
  submission    587: EHLO, STARTTLS, EHLO, AUTH PLAIN, then silent
  submissions   465 (implicit TLS): EHLO, AUTH PLAIN, then silent
  pop3s         POP3S (995): USER/PASS, STAT, then silent; one account per session (a
                maildrop is locked by its session), each with --pop3-messages messages

Figures per level, one line each (nothing asserted):
  pss_kb / rss_kb         the daemon's /proc/PID/smaps_rollup (median of 3 samples 0.5 s apart)
  per_session_kb          PSS / sessions: the whole daemon counted against its sessions (how
                          issue 10's ~510 KB was figured, with 100 sessions)
  growth_per_session_kb   (PSS - PSS before the first session) / sessions
  fds                     the daemon's open descriptors

--warm first drives --warm-sessions short sessions of every door through the daemon (TLS,
login, a FETCH / a message / a RETR, logout), as a daemon that has served clients for a while
would have, then measures the idle sessions on top of that (allocator pages touched by the
load stay in PSS).

--tracemalloc runs the daemon under `python -X tracemalloc=N` and prints, for the highest
level, the Python allocations (file:line) that grew the most, per session. Slow; use it with
1,000 sessions or fewer. OpenSSL's own allocations are not seen by tracemalloc.

Setup: `mailkeep init` in a temporary directory, listeners on 127.0.0.1:0, security and
per-user limits raised for one client machine (security.max_connections, per-IP, per-user
session limits; the connections come from --sources addresses 127.0.0.2, 127.0.0.3, ...), long
idle timeouts, RLIMIT_NOFILE raised to the hard limit in the daemon and in every client
process. Passwords are SHA256-CRYPT with 1,000 rounds (10,000 logins must not measure
password hashing).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import imap as imap_bench  # bench/imap.py: setup helpers

HOSTNAME = imap_bench.HOSTNAME
PASSWORD = imap_bench.PASSWORD
KINDS = ("imap-select", "imap-idle", "submission", "submissions", "pop3s")
CONNECT_CONCURRENCY = 32  # handshakes in flight per client process
REPLY_TIMEOUT = 300.0


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the daemon ---------------------------------------------------------------------------------

def prepare(root: Path, *, accounts: int, messages: int, pop3_accounts: int,
            pop3_messages: int, max_sessions: int) -> Path:
    users = [f"mem{i:03d}" for i in range(accounts)]
    cfg = imap_bench.prepare(root, users, messages, 2048, max_sessions)
    text = cfg.read_text()
    # One process: the figures are one daemon's PSS per session (with `workers` above 1 the
    # pid started is the supervisor, which holds no session).
    text = text.replace("\n[tls]\n", "\nworkers = 1\n\n[tls]\n", 1)
    if os.geteuid() == 0:  # a throw-away bench daemon on loopback
        text = text.replace("\n[tls]\n", "\nallow_root = true\n\n[tls]\n", 1)
    text = text.replace("[security]\n", f"[security]\nmax_connections = {max_sessions + 500}\n"
                        "login_timeout = 900\n", 1)
    text = text.replace("max_connections_per_ip = 1000",
                        f"max_connections_per_ip = {max_sessions + 500}")
    text = text.replace("[imap]\n", f"[imap]\nmax_connections_per_user_ip = {max_sessions}\n"
                        "idle_timeout = 7200\n", 1)
    text = text.replace("[submission]\n", "[submission]\nidle_timeout = 7200\n", 1)
    text = text.replace("[pop3]\n", "[pop3]\nidle_timeout = 7200\n", 1)
    text = text.replace('path = "users.toml"', 'path = "users.toml"\ncache_size = '
                        f"{max(10_000, accounts + pop3_accounts)}", 1)
    cfg.write_text(text)
    from passlib.hash import sha256_crypt  # noqa: PLC0415

    cheap = sha256_crypt.using(rounds=1000).hash(PASSWORD)
    pop_users = [f"pop{i:05d}" for i in range(pop3_accounts)]
    (root / "users.toml").write_text("".join(
        f'[users.{u}]\npassword = "{cheap}"\naddresses = ["{u}@example.test"]\n'
        for u in [*users, *pop_users]))
    mail = root / "data" / "mail"
    sample = mail / users[0] / "new"
    sources = sorted(sample.iterdir())[:pop3_messages]
    for u in pop_users:
        new = mail / u / "new"
        new.mkdir(parents=True)
        for sub in ("cur", "tmp"):
            (mail / u / sub).mkdir()
        for src in sources:  # hard links: 10,000 maildrops cost no disk
            os.link(src, new / src.name)
    return cfg


def start_daemon(cfg: Path, loop: str, tracemalloc: int) -> tuple[subprocess.Popen[bytes],
                                                                  dict[str, int]]:
    ready = cfg.parent / "ready.json"
    with contextlib.suppress(FileNotFoundError):
        ready.unlink()
    log = open(cfg.parent / "daemon.log", "ab")  # noqa: SIM115
    serve = ["serve", "--config", str(cfg), "--loop", loop, "--ready-file", str(ready),
             "--log-level", "warning"]
    if tracemalloc:
        argv = [sys.executable, "-X", f"tracemalloc={tracemalloc}", __file__,
                "--traced-daemon", str(cfg.parent / "tm"), *serve]
    else:
        argv = [sys.executable, "-m", "mailkeep", *serve]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=raise_nofile)
    log.close()
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit((cfg.parent / "daemon.log").read_text()[-5000:])
        time.sleep(0.05)
    listeners = json.loads(ready.read_text())["listeners"]
    return proc, {k: int(v[0].rsplit(":", 1)[1]) for k, v in listeners.items()}


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def traced_daemon(tm_dir: str, serve_args: list[str]) -> int:
    """`mailkeep serve` with a thread that writes a tracemalloc snapshot whenever the bench
    drops a request file (tm_dir/request holds the snapshot's path)."""
    import tracemalloc  # noqa: PLC0415

    from mailkeep.cli import main as cli_main  # noqa: PLC0415

    folder = Path(tm_dir)
    folder.mkdir(exist_ok=True)

    def watch() -> None:
        request = folder / "request"
        while True:
            time.sleep(0.2)
            if request.exists():
                target = request.read_text().strip()
                tracemalloc.take_snapshot().dump(target + ".tmp")
                os.replace(target + ".tmp", target)
                request.unlink()

    threading.Thread(target=watch, daemon=True).start()
    return int(cli_main(serve_args) or 0)


def snapshot(tm_dir: Path, name: str) -> Path:
    target = tm_dir / name
    (tm_dir / "request").write_text(str(target))
    deadline = time.monotonic() + 600
    while not target.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no tracemalloc snapshot")
        time.sleep(0.2)
    return target


def smaps(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            out[key] = int(rest.split()[0])
    return out


def measure(pid: int) -> dict[str, int]:
    samples = []
    for k in range(3):
        if k:
            time.sleep(0.5)
        samples.append(smaps(pid))
    pss = int(statistics.median(s["Pss"] for s in samples))
    rss = int(statistics.median(s["Rss"] for s in samples))
    return {"pss_kb": pss, "rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


# -- the client processes ----------------------------------------------------------------------

class Conn:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def line(self) -> bytes:
        assert self.reader is not None
        data = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
        if not data:
            raise ConnectionError("closed by the server")
        return data

    def send(self, text: bytes) -> None:
        assert self.writer is not None
        self.writer.write(text + b"\r\n")

    async def imap(self, tag: bytes, text: bytes) -> None:
        self.send(tag + b" " + text)
        while True:
            data = await self.line()
            if data.startswith(tag + b" "):
                if not data[len(tag) + 1:].startswith(b"OK"):
                    raise RuntimeError(data[:200].decode("ascii", "replace"))
                return

    async def smtp(self, text: bytes | None, expect: int) -> None:
        if text is not None:
            self.send(text)
        while True:
            data = await self.line()
            if data[3:4] != b"-":
                if int(data[:3]) != expect:
                    raise RuntimeError(data[:200].decode("ascii", "replace"))
                return

    async def pop3(self, text: bytes | None) -> None:
        if text is not None:
            self.send(text)
        data = await self.line()
        if not data.startswith(b"+OK"):
            raise RuntimeError(data[:200].decode("ascii", "replace"))

    async def open(self, kind: str, ports: dict[str, int], ctx: ssl.SSLContext, user: str,
                   source: str) -> None:
        tls = kind != "submission"
        port = {"imap-select": ports["imaps"], "imap-idle": ports["imaps"],
                "submission": ports["submission"], "submissions": ports["submissions"],
                "pop3s": ports["pop3s"]}[kind]
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx if tls else None,
            server_hostname=HOSTNAME if tls else None, local_addr=(source, 0))
        plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        if kind.startswith("imap"):
            await self.line()
            await self.imap(b"l", b'LOGIN ' + user.encode() + b' "' + PASSWORD.encode() + b'"')
            await self.imap(b"s", b"SELECT INBOX")
            if kind == "imap-idle":
                self.send(b"i IDLE")
                if not (await self.line()).startswith(b"+"):
                    raise RuntimeError("IDLE refused")
        elif kind == "submission":
            await self.smtp(None, 220)
            await self.smtp(b"EHLO bench.example.test", 250)
            await self.smtp(b"STARTTLS", 220)
            await self.writer.start_tls(ctx, server_hostname=HOSTNAME)
            await self.smtp(b"EHLO bench.example.test", 250)
            await self.smtp(b"AUTH PLAIN " + plain, 235)
        elif kind == "submissions":
            await self.smtp(None, 220)
            await self.smtp(b"EHLO bench.example.test", 250)
            await self.smtp(b"AUTH PLAIN " + plain, 235)
        else:
            await self.pop3(None)
            await self.pop3(b"USER " + user.encode())
            await self.pop3(b"PASS " + PASSWORD.encode())
            await self.pop3(b"STAT")

    async def close(self) -> None:
        w, self.writer = self.writer, None
        if w is not None:
            w.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(w.wait_closed(), 5)


async def warm_session(kind: str, ports: dict[str, int], ctx: ssl.SSLContext, user: str,
                       source: str) -> None:
    """One short session that does some work and leaves (the --warm load)."""
    c = Conn()
    try:
        await c.open(kind, ports, ctx, user, source)
        if kind.startswith("imap"):
            await c.imap(b"f", b"FETCH 1:20 (FLAGS BODY.PEEK[])")
            await c.imap(b"o", b"LOGOUT")
        elif kind.startswith("submission"):
            await c.smtp(f"MAIL FROM:<{user}@example.test>".encode(), 250)
            await c.smtp(f"RCPT TO:<{user}@example.test>".encode(), 250)
            await c.smtp(b"DATA", 354)
            body = b"Subject: warm\r\n\r\n" + b"warm-up line of text 0123456789\r\n" * 300
            assert c.writer is not None
            c.writer.write(body + b".\r\n")
            await c.smtp(None, 250)
            await c.smtp(b"QUIT", 221)
        else:
            await c.pop3(b"RETR 1")
            assert c.reader is not None
            await asyncio.wait_for(c.reader.readuntil(b"\r\n.\r\n"), REPLY_TIMEOUT)
            await c.pop3(b"QUIT")
    finally:
        await c.close()


async def worker_main(args: argparse.Namespace) -> None:
    """A client process: reads commands on stdin, answers one JSON line each.
       open KIND COUNT   hold COUNT sessions of KIND (this process's share)
       warm COUNT        COUNT short sessions spread over the kinds
       close             close every session held"""
    raise_nofile()
    ports = json.loads(args.ports)
    ctx = ssl.create_default_context(cafile=args.cafile)
    held: list[Conn] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    accounts, pop_accounts = args.accounts, args.pop3_accounts
    next_index = args.index  # this process's sessions: index, index + procs, ...

    def who(kind: str, k: int) -> tuple[str, str]:
        user = f"pop{k:05d}" if kind == "pop3s" else f"mem{k % accounts:03d}"
        return user, f"127.0.0.{2 + k % args.sources}"

    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "exit":
            break
        errors: list[str] = []
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        if line[0] == "open":
            kind, want = line[1], int(line[2])

            async def one(k: int, kind: str = kind, sem: asyncio.Semaphore = sem,
                          errors: list[str] = errors) -> None:
                async with sem:
                    c = Conn()
                    try:
                        await c.open(kind, ports, ctx, *who(kind, k))
                        held.append(c)
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        await c.close()

            todo = []
            while len(held) + len(todo) < want:
                if kind == "pop3s" and next_index >= pop_accounts:
                    break
                todo.append(next_index)
                next_index += args.procs
            await asyncio.gather(*(one(k) for k in todo))
        elif line[0] == "warm":
            count = int(line[1])

            async def warm(k: int, sem: asyncio.Semaphore = sem,
                           errors: list[str] = errors) -> None:
                async with sem:
                    kind = ("imap-select", "submission", "submissions", "pop3s")[k % 4]
                    user, source = who(kind, k % pop_accounts if kind == "pop3s" else k)
                    try:
                        await warm_session(kind, ports, ctx, user, source)
                    except Exception as exc:
                        errors.append(f"{kind} {type(exc).__name__}: {exc}")

            # POP3: one session per maildrop at a time; give each process its own range.
            await asyncio.gather(*(warm(args.index + args.procs * k) for k in range(count)))
        elif line[0] == "close":
            await asyncio.gather(*(c.close() for c in held))
            held.clear()
            next_index = args.index
        print(json.dumps({"held": len(held), "errors": len(errors), "samples": errors[:3]}),
              flush=True)


class Clients:
    def __init__(self, procs: int, args: argparse.Namespace, ports: dict[str, int],
                 cafile: Path) -> None:
        self.procs = [subprocess.Popen(
            [sys.executable, __file__, "--worker", "--index", str(i), "--procs", str(procs),
             "--ports", json.dumps(ports), "--cafile", str(cafile), "--sources",
             str(args.sources), "--accounts", str(args.accounts), "--pop3-accounts",
             str(args.pop3_accounts), "--loop", args.loop],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
            for i in range(procs)]

    def ask(self, command: str, per_proc: list[int] | None = None) -> tuple[int, int, list[str]]:
        for k, p in enumerate(self.procs):
            assert p.stdin is not None
            arg = f" {per_proc[k]}" if per_proc is not None else ""
            p.stdin.write(command + arg + "\n")
            p.stdin.flush()
        held = errors = 0
        samples: list[str] = []
        for p in self.procs:
            assert p.stdout is not None
            answer = json.loads(p.stdout.readline())
            held += answer["held"]
            errors += answer["errors"]
            samples += answer["samples"]
        return held, errors, samples[:3]

    def share(self, total: int) -> list[int]:
        n = len(self.procs)
        return [total // n + (1 if k < total % n else 0) for k in range(n)]

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert p.stdin is not None
                p.stdin.write("exit\n")
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


# -- the run ------------------------------------------------------------------------------------

def run_kind(kind: str, args: argparse.Namespace, cfg: Path, root: Path) -> None:
    proc, ports = start_daemon(cfg, args.loop, args.tracemalloc)
    clients = Clients(args.procs, args, ports, root / "certs" / "mailkeep.crt")
    tm_dir = root / "tm"
    try:
        time.sleep(1)
        if args.warm:
            t0 = time.monotonic()
            _, errors, samples = clients.ask("warm", clients.share(args.warm_sessions))
            print(f"mem.{kind}.warm sessions={args.warm_sessions} errors={errors} "
                  f"secs={time.monotonic() - t0:.1f} {' | '.join(samples)}", flush=True)
            time.sleep(2)
        base = measure(proc.pid)
        print(f"mem.{kind}.base pss_kb={base['pss_kb']} rss_kb={base['rss_kb']} "
              f"fds={base['fds']} loop={args.loop}", flush=True)
        base_snap = snapshot(tm_dir, f"{kind}.base") if args.tracemalloc else None
        for level in args.levels:
            t0 = time.monotonic()
            held, errors, samples = clients.ask(f"open {kind}", clients.share(level))
            secs = time.monotonic() - t0
            time.sleep(2)
            m = measure(proc.pid)
            n = max(held, 1)
            print(f"mem.{kind} sessions={held} errors={errors} pss_kb={m['pss_kb']} "
                  f"rss_kb={m['rss_kb']} per_session_kb={m['pss_kb'] / n:.1f} "
                  f"growth_per_session_kb={(m['pss_kb'] - base['pss_kb']) / n:.1f} "
                  f"fds={m['fds']} open_secs={secs:.1f}"
                  + (f" errors: {' | '.join(samples)}" if samples else ""), flush=True)
            if held < level and kind == "pop3s" and held >= args.pop3_accounts:
                break
        if base_snap is not None:
            top = snapshot(tm_dir, f"{kind}.top")
            report_tracemalloc(kind, base_snap, top, max(held, 1), args.tracemalloc_top)
        clients.ask("close")
    finally:
        clients.close()
        stop_daemon(proc)


def report_tracemalloc(kind: str, base: Path, top: Path, n: int, count: int) -> None:
    import tracemalloc  # noqa: PLC0415

    before, after = tracemalloc.Snapshot.load(str(base)), tracemalloc.Snapshot.load(str(top))
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"mem.{kind}.tracemalloc sessions={n} python_growth_per_session_kb="
          f"{total / n / 1024:.1f} (top {count} lines, bytes and blocks per session)")
    for s in stats[:count]:
        frame = s.traceback[0]
        name = "/".join(Path(frame.filename).parts[-3:])
        print(f"  {s.size_diff / n:9.0f} B {s.count_diff / n:6.1f} blk  {name}:{frame.lineno}")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--traced-daemon":
        return traced_daemon(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--levels", default="100,1000,10000")
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument("--sources", type=int, default=50, help="client addresses 127.0.0.2...")
    p.add_argument("--accounts", type=int, default=100)
    p.add_argument("--messages", type=int, default=100, help="messages per IMAP INBOX")
    p.add_argument("--pop3-accounts", type=int, default=0,
                   help="default: the highest level when pop3s is measured")
    p.add_argument("--pop3-messages", type=int, default=10)
    p.add_argument("--warm", action="store_true", help="serve a load before measuring")
    p.add_argument("--warm-sessions", type=int, default=2000)
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES")
    p.add_argument("--tracemalloc-top", type=int, default=25)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    # client process mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ports", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--cafile", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        if args.loop == "uvloop":
            import uvloop  # noqa: PLC0415

            uvloop.run(worker_main(args))
        else:
            asyncio.run(worker_main(args))
        return 0
    args.levels = [int(x) for x in args.levels.split(",")]
    kinds = args.kinds.split(",")
    if not args.pop3_accounts:
        # --warm: POP3 sessions in flight at once (procs x CONNECT_CONCURRENCY) need a
        # maildrop each.
        args.pop3_accounts = max(max(args.levels) if "pop3s" in kinds else 0, 400)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="mailkeep-bench-mem-") as tmp:
        root = Path(tmp)
        cfg = prepare(root, accounts=args.accounts, messages=args.messages,
                      pop3_accounts=args.pop3_accounts, pop3_messages=args.pop3_messages,
                      max_sessions=max(args.levels))
        print(f"# bench: python {sys.version.split()[0]} nproc={os.cpu_count()} "
              f"loop={args.loop} levels={args.levels} procs={args.procs} "
              f"sources={args.sources} accounts={args.accounts} messages/inbox={args.messages} "
              f"pop3_accounts={args.pop3_accounts} warm={args.warm} "
              f"nofile={resource.getrlimit(resource.RLIMIT_NOFILE)}", flush=True)
        for kind in kinds:
            run_kind(kind, args, cfg, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
