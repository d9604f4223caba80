#!/usr/bin/env python3
"""Benchmark of mailkeep's SMTP submission service: throughput, latency and memory.

Run it with the project's venv (it starts `python -m mailkeep` with the same interpreter):

    .venv/bin/python bench/submission.py              # full run, about 2 minutes
    .venv/bin/python bench/submission.py --quick      # smoke run, about 30 seconds

It creates a throw-away config with `mailkeep init`, binds every listener to 127.0.0.1 on
ephemeral ports (port 0, read back from `serve --ready-file`), adds the account `bench`,
starts `mailkeep serve` as a subprocess and drives it with an asyncio SMTP client (plain
streams + ssl, verifying the generated self-signed certificate for mail.example.test).

Figures, one line each (nothing is asserted about time; this is a measurement script):

  submission.conn_per_msg  tls=starttls|implicit  one connection per 10 KB message:
                           connect, [EHLO, STARTTLS,] EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT
  submission.msgs_per_conn tls=starttls           one STARTTLS + AUTH, then up to
                           --per-conn messages on the same connection (then reconnect)
  submission.rss           the daemon's VmRSS: idle after start, with 50 idle authenticated
                           connections, peak during the load (sampled + VmHWM), idle at the end
  submission.verify        files in the Maildir == 250 replies to DATA

Each load level is bounded by --seconds (no new message starts after it) and stops by itself.
srv_cpu% / cli_cpu% are CPU time of the daemon / this client process over the level's wall
time, in percent of one core (the machine's cores are shared by both); other_cpu% is what
every other process and the kernel used meanwhile: a high value means the level was
measured on a busy machine and its figures are low.

--external measures another server (e.g. Postfix) with the same client: see --help.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOSTNAME = "mail.example.test"
DOMAIN = "example.test"
USER = "bench"
PASSWORD = "bench-password-not-secret"
CLIENT_NAME = "bench-client.example.test"
REPLY_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the message ----------------------------------------------------------------------------

def make_message(size: int, sender: str, rcpt: str) -> bytes:
    """A message of exactly `size` octets (CRLF lines, no line starts with '.')."""
    head = (f"From: Bench <{sender}>\r\nTo: <{rcpt}>\r\nSubject: mailkeep submission bench\r\n"
            f"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <bench-{os.getpid()}@{CLIENT_NAME}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= size:
        body += line
    rest = size - len(head) - len(body)
    if rest >= 3:
        body += b"x" * (rest - 2) + b"\r\n"
    else:
        body += b"\r\n"[:rest]
    msg = head + bytes(body)
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    return msg


# -- the client -----------------------------------------------------------------------------

@dataclass
class Target:
    host: str
    starttls_port: int
    implicit_port: int | None
    server_hostname: str
    context: ssl.SSLContext
    user: str
    password: str
    sender: str
    rcpt: str


class SmtpError(Exception):
    pass


class SmtpConn:
    """A minimal SMTP submission client on asyncio streams."""

    def __init__(self, target: Target) -> None:
        self.t = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def reply(self, expect: int) -> None:
        assert self.reader is not None
        while True:
            line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            if not line:
                raise SmtpError(f"connection closed while waiting for {expect}")
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = int(line[:3])
        if code != expect:
            raise SmtpError(f"expected {expect}, got {line.decode('ascii', 'replace').strip()}")

    async def command(self, text: bytes, expect: int) -> None:
        assert self.writer is not None
        self.writer.write(text + b"\r\n")
        await self.reply(expect)

    async def open(self, implicit: bool) -> None:
        t = self.t
        if implicit:
            assert t.implicit_port is not None
            self.reader, self.writer = await asyncio.open_connection(
                t.host, t.implicit_port, ssl=t.context, server_hostname=t.server_hostname)
        else:
            self.reader, self.writer = await asyncio.open_connection(t.host, t.starttls_port)
        await self.reply(220)
        await self.command(b"EHLO " + CLIENT_NAME.encode(), 250)
        if not implicit:
            await self.command(b"STARTTLS", 220)
            await self.writer.start_tls(t.context, server_hostname=t.server_hostname)
            await self.command(b"EHLO " + CLIENT_NAME.encode(), 250)

    async def auth(self) -> None:
        blob = base64.b64encode(b"\0" + self.t.user.encode() + b"\0" + self.t.password.encode())
        await self.command(b"AUTH PLAIN " + blob, 235)

    async def send(self, message: bytes) -> None:
        assert self.writer is not None
        await self.command(f"MAIL FROM:<{self.t.sender}> SIZE={len(message)}".encode(), 250)
        await self.command(f"RCPT TO:<{self.t.rcpt}>".encode(), 250)
        await self.command(b"DATA", 354)
        self.writer.write(message)
        self.writer.write(b".\r\n")
        await self.reply(250)

    async def quit(self) -> None:
        try:
            await self.command(b"QUIT", 221)
        finally:
            await self.close()

    async def close(self) -> None:
        w = self.writer
        self.writer = None
        if w is None:
            return
        w.close()
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(w.wait_closed(), 5)


@dataclass
class LevelStats:
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)   # seconds per message (see mode)
    setup: list[float] = field(default_factory=list)       # connect + TLS
    auth: list[float] = field(default_factory=list)        # AUTH PLAIN round trip

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(f"{type(exc).__name__}: {exc}")


async def conn_per_msg_worker(t: Target, implicit: bool, msg: bytes, deadline: float,
                              st: LevelStats) -> None:
    while time.monotonic() < deadline:
        c = SmtpConn(t)
        t0 = time.perf_counter()
        try:
            await c.open(implicit)
            t1 = time.perf_counter()
            await c.auth()
            t2 = time.perf_counter()
            await c.send(msg)
            st.ok += 1
            await c.quit()
            t3 = time.perf_counter()
            st.latencies.append(t3 - t0)
            st.setup.append(t1 - t0)
            st.auth.append(t2 - t1)
        except (OSError, SmtpError, ssl.SSLError, TimeoutError, ValueError) as exc:
            st.error(exc)
            await c.close()
            await asyncio.sleep(0.05)


async def msgs_per_conn_worker(t: Target, implicit: bool, msg: bytes, deadline: float,
                               st: LevelStats, *, per_conn: int) -> None:
    while time.monotonic() < deadline:
        c = SmtpConn(t)
        try:
            t0 = time.perf_counter()
            await c.open(implicit)
            t1 = time.perf_counter()
            await c.auth()
            st.setup.append(t1 - t0)
            st.auth.append(time.perf_counter() - t1)
            for _ in range(per_conn):
                if time.monotonic() >= deadline:
                    break
                m0 = time.perf_counter()
                await c.send(msg)
                st.ok += 1
                st.latencies.append(time.perf_counter() - m0)
            await c.quit()
        except (OSError, SmtpError, ssl.SSLError, TimeoutError, ValueError) as exc:
            st.error(exc)
            await c.close()
            await asyncio.sleep(0.05)


# -- measuring the daemon -------------------------------------------------------------------

def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine (all cores), from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
    return (sum(f[:8]) - idle) / CLK_TCK  # guest time is already inside user


def named_cpu_seconds(names: frozenset[str]) -> float:
    """CPU time of every process whose comm is in `names`, plus their reaped children."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                raw = fh.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1:raw.rfind(")")]
        if comm in names:
            f = raw.rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def proc_cpu_seconds(pid: int | None, names: frozenset[str] = frozenset()) -> float:
    if names:
        return named_cpu_seconds(names)
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except OSError:
        return 0.0


class RssSampler(threading.Thread):
    """Samples the daemon's VmRSS every `interval` seconds, keeping the maximum."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.max_kb = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            kb = proc_status_kb(self.pid, "VmRSS")
            if kb is not None:
                self.max_kb = max(self.max_kb, kb)
                self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f}"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def count_maildir(maildir: Path | None) -> int | None:
    if maildir is None:
        return None
    n = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            n += sum(1 for e in os.scandir(maildir / sub) if not e.name.startswith("."))
    return n


# -- a run ----------------------------------------------------------------------------------

@dataclass
class Bench:
    target: Target
    pid: int | None
    maildir: Path | None
    label: str
    seconds: float
    per_conn: int
    levels: list[int]
    size: int
    proc_names: frozenset[str] = frozenset()
    replies_250: int = 0

    async def level(self, kind: str, implicit: bool, clients: int) -> None:
        msg = make_message(self.size, self.target.sender, self.target.rcpt)
        st = LevelStats()
        before_files = count_maildir(self.maildir)
        cpu0_srv = proc_cpu_seconds(self.pid, self.proc_names)
        t_cli0, busy0 = os.times(), machine_busy_seconds()
        w0 = time.perf_counter()
        deadline = time.monotonic() + self.seconds
        if kind == "conn_per_msg":
            workers = [conn_per_msg_worker(self.target, implicit, msg, deadline, st)
                       for _ in range(clients)]
        else:
            workers = [msgs_per_conn_worker(self.target, implicit, msg, deadline, st,
                                            per_conn=self.per_conn) for _ in range(clients)]
        await asyncio.gather(*workers)
        wall = time.perf_counter() - w0
        cpu_srv = proc_cpu_seconds(self.pid, self.proc_names) - cpu0_srv
        t_cli1 = os.times()
        cpu_cli = (t_cli1.user - t_cli0.user) + (t_cli1.system - t_cli0.system)
        # Everything else that ran on the machine meanwhile (other jobs skew the figures).
        cpu_other = max(0.0, machine_busy_seconds() - busy0 - cpu_srv - cpu_cli)
        self.replies_250 += st.ok
        after_files = count_maildir(self.maildir)
        delivered = "n/a" if after_files is None or before_files is None \
            else str(after_files - before_files)
        ms = [x * 1000 for x in st.latencies]
        parts = [f"submission.{kind}", f"server={self.label}",
                 f"tls={'implicit' if implicit else 'starttls'}", f"clients={clients}"]
        if kind == "msgs_per_conn":
            parts.append(f"per_conn={self.per_conn}")
        parts += [f"msgs={st.ok}", f"wall_s={wall:.2f}", f"msgs/s={st.ok / wall:.1f}",
                  f"p50_ms={pct(ms, 50):.1f}", f"p99_ms={pct(ms, 99):.1f}"]
        if kind == "conn_per_msg":
            parts += [f"tls_p50_ms={pct([x * 1000 for x in st.setup], 50):.1f}",
                      f"auth_p50_ms={pct([x * 1000 for x in st.auth], 50):.1f}"]
        else:
            parts.append(f"conns={len(st.setup)}")
        if self.pid is not None or self.proc_names:
            parts += [f"srv_cpu%={100 * cpu_srv / wall:.0f}",
                      f"srv_cpu_ms/msg={1000 * cpu_srv / st.ok if st.ok else float('nan'):.2f}"]
        parts += [f"cli_cpu%={100 * cpu_cli / wall:.0f}",
                  f"other_cpu%={100 * cpu_other / wall:.0f}", f"errors={st.errors}",
                  f"delivered={delivered}"]
        print(" ".join(parts), flush=True)
        for sample in st.error_samples:
            print(f"  # error sample: {sample}", flush=True)

    async def idle_connections(self, n: int) -> None:
        """n authenticated connections held open; the daemon's RSS with them."""
        assert self.pid is not None
        await asyncio.sleep(0.5)
        base = proc_status_kb(self.pid, "VmRSS")
        conns = [SmtpConn(self.target) for _ in range(n)]

        async def login(c: SmtpConn) -> None:
            await c.open(False)
            await c.auth()

        results = await asyncio.gather(*(login(c) for c in conns), return_exceptions=True)
        opened = sum(1 for r in results if not isinstance(r, BaseException))
        await asyncio.sleep(1.0)
        with_conns = proc_status_kb(self.pid, "VmRSS")
        per = "n/a" if base is None or with_conns is None or not opened \
            else f"{(with_conns - base) / opened:.0f}"
        print(f"submission.rss phase=idle_auth_conns conns={opened} rss_mb={mb(with_conns)} "
              f"before_mb={mb(base)} delta_kb/conn={per}", flush=True)
        await asyncio.gather(*(c.quit() for c in conns), return_exceptions=True)
        for c in conns:
            await c.close()

    async def run_loads(self, implicit_too: bool) -> None:
        for clients in self.levels:
            await self.level("conn_per_msg", False, clients)
        if implicit_too and self.target.implicit_port is not None:
            for clients in self.levels:
                await self.level("conn_per_msg", True, clients)
        for clients in self.levels:
            await self.level("msgs_per_conn", False, clients)


# -- mailkeep setup -------------------------------------------------------------------------

def mailkeep(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "mailkeep", *args], input=stdin, text=True,
                          capture_output=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"mailkeep {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout


def prepare(root: Path, per_ip: int) -> Path:
    mailkeep("init", str(root), "--hostname", HOSTNAME, "--ports", "unprivileged",
             "--bind-host", "127.0.0.1", "--no-demo-user")
    cfg = root / "mailkeep.toml"
    text = cfg.read_text(encoding="utf-8")
    # Ephemeral ports: nothing collides with a running mailkeep or anything else.
    text, n = re.subn(r'^bind = \["127\.0\.0\.1:\d+"\]$', 'bind = ["127.0.0.1:0"]', text,
                      flags=re.MULTILINE)
    if n < 2:  # submission and submissions, plus pop3s/imaps since mailkeep init has them
        raise SystemExit(f"{cfg}: expected at least 2 bind lines to rewrite, found {n}")
    # All bench clients come from 127.0.0.1: the per-address budget (default 20) must admit
    # the 50-client levels and the 50 idle connections.
    text, n = re.subn(r"^\[security\]$", f"[security]\nmax_connections_per_ip = {per_ip}", text,
                      flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"{cfg}: no [security] table to extend")
    cfg.write_text(text, encoding="utf-8")
    mailkeep("user", "add", USER, "--config", str(cfg), stdin=PASSWORD + "\n")
    return cfg


def start_daemon(cfg: Path, loop: str, log_path: Path,
                 log_level: str | None) -> tuple[subprocess.Popen[bytes], dict[str, list[str]]]:
    ready = cfg.parent / "ready.json"
    extra = ["--log-level", log_level] if log_level else []
    log = open(log_path, "wb")  # noqa: SIM115 (the child keeps writing to it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailkeep", "serve", "--config", str(cfg), "--loop", loop,
         "--ready-file", str(ready), *extra],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited ({proc.returncode}):\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            stop_daemon(proc)
            raise SystemExit("daemon did not become ready within 30 s")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return proc, info["listeners"]


def stop_daemon(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def port_of(addrs: list[str]) -> int:
    return int(addrs[0].rsplit(":", 1)[1])


def client_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))  # verifies chain and hostname
    return ctx


def new_client_loop(kind: str) -> asyncio.Runner:
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def machine_line(args: argparse.Namespace) -> str:
    return (f"# bench: python {sys.version.split()[0]} nproc={os.cpu_count()} "
            f"server_loop={args.loop} client_loop={args.client_loop} size={args.size} "
            f"seconds/level={args.seconds} per_conn={args.per_conn} "
            f"levels={','.join(map(str, args.levels))}")


def run_mailkeep(args: argparse.Namespace) -> int:
    keep = args.workdir is not None
    root = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="mailkeep-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    cfg = prepare(root, per_ip=max(200, 2 * max(args.levels) + args.idle_conns))
    proc, listeners = start_daemon(cfg, args.loop, root / "daemon.log", args.log_level)
    sampler: RssSampler | None = None
    try:
        target = Target(
            host="127.0.0.1", starttls_port=port_of(listeners["submission"]),
            implicit_port=port_of(listeners["submissions"]) if "submissions" in listeners
            else None, server_hostname=HOSTNAME,
            context=client_context(root / "certs" / "mailkeep.crt"),
            user=USER, password=PASSWORD, sender=f"{USER}@{DOMAIN}", rcpt=f"{USER}@{DOMAIN}")
        maildir = root / "data" / "mail" / USER
        print(machine_line(args), flush=True)
        print(f"# daemon pid={proc.pid} workdir={root} submission={target.starttls_port} "
              f"submissions={target.implicit_port}", flush=True)
        time.sleep(1.0)
        print(f"submission.rss phase=idle_start rss_mb={mb(proc_status_kb(proc.pid, 'VmRSS'))}",
              flush=True)
        bench = Bench(target, proc.pid, maildir, "mailkeep", args.seconds, args.per_conn,
                      args.levels, args.size)
        sampler = RssSampler(proc.pid)
        sampler.start()
        with new_client_loop(args.client_loop) as runner:
            if args.idle_conns:
                runner.run(bench.idle_connections(args.idle_conns))
            runner.run(bench.run_loads(not args.no_implicit))
        sampler.stop()
        time.sleep(1.0)
        print(f"submission.rss phase=peak_during_runs sampled_max_mb={mb(sampler.max_kb)} "
              f"samples={sampler.samples} vmhwm_mb={mb(proc_status_kb(proc.pid, 'VmHWM'))}",
              flush=True)
        print(f"submission.rss phase=idle_end rss_mb={mb(proc_status_kb(proc.pid, 'VmRSS'))}",
              flush=True)
        files = count_maildir(maildir)
        ok = files == bench.replies_250
        print(f"submission.verify replies_250={bench.replies_250} maildir_files={files} "
              f"match={'yes' if ok else 'NO'}", flush=True)
        return 0 if ok else 1
    finally:
        if sampler is not None:
            sampler.stop()
        code = stop_daemon(proc)
        print(f"# daemon stopped (exit {code}); log: {root / 'daemon.log'}", flush=True)
        if not keep:
            import shutil  # noqa: PLC0415

            shutil.rmtree(root, ignore_errors=True)


def run_external(args: argparse.Namespace) -> int:
    """Measure another server with the same client (no daemon is started or stopped)."""
    if not (args.port and args.cafile and args.user and args.password and args.address):
        raise SystemExit("--external needs --port, --cafile, --user, --password, --address")
    target = Target(host="127.0.0.1", starttls_port=args.port, implicit_port=args.implicit_port,
                    server_hostname=args.server_hostname, context=client_context(Path(args.cafile)),
                    user=args.user, password=args.password, sender=args.address,
                    rcpt=args.address)
    maildir = Path(args.maildir) if args.maildir else None
    print(machine_line(args), flush=True)
    names = frozenset(n for n in (args.proc_names or "").split(",") if n)
    bench = Bench(target, args.pid, maildir, args.external, args.seconds, args.per_conn,
                  args.levels, args.size, names)
    start_files = count_maildir(maildir)
    with new_client_loop(args.client_loop) as runner:
        runner.run(bench.run_loads(args.implicit_port is not None and not args.no_implicit))
    if maildir is None or start_files is None:
        return 0
    # A queueing MTA answers 250 when the message is queued; delivery follows.
    deadline = time.monotonic() + 120
    files = count_maildir(maildir) or 0
    while files - start_files < bench.replies_250 and time.monotonic() < deadline:
        time.sleep(0.5)
        files = count_maildir(maildir) or 0
    ok = files - start_files == bench.replies_250
    print(f"submission.verify server={args.external} replies_250={bench.replies_250} "
          f"maildir_files={files - start_files} match={'yes' if ok else 'NO'}", flush=True)
    return 0 if ok else 1


def main() -> int:
    have_uvloop = True
    try:
        import uvloop  # noqa: F401, PLC0415
    except ImportError:
        have_uvloop = False
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="the daemon's event loop (default uvloop)")
    p.add_argument("--client-loop", choices=("uvloop", "asyncio"),
                   default="uvloop" if have_uvloop else "asyncio",
                   help="this client's event loop (default uvloop when installed)")
    p.add_argument("--quick", action="store_true", help="smoke run: ~30 s in all")
    p.add_argument("--seconds", type=float, help="duration of each load level "
                   "(default 9; 1.5 with --quick)")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 5, 10, 50], help="concurrent clients per level (default 1,5,10,50)")
    p.add_argument("--per-conn", type=int, default=100,
                   help="messages per connection in msgs_per_conn (default 100)")
    p.add_argument("--size", type=int, default=10 * 1024, help="message size in octets")
    p.add_argument("--idle-conns", type=int, default=50,
                   help="idle authenticated connections for the RSS figure (0: skip)")
    p.add_argument("--no-implicit", action="store_true", help="skip the port-465 level set")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="the daemon's log level (default: the config's, info)")
    p.add_argument("--workdir", help="use (and keep) this folder instead of a temporary one")
    ext = p.add_argument_group("another server (--external NAME): same client, no daemon")
    ext.add_argument("--external", metavar="NAME", help="label, e.g. postfix")
    ext.add_argument("--port", type=int, help="its STARTTLS submission port on 127.0.0.1")
    ext.add_argument("--implicit-port", type=int, help="its implicit-TLS port, if any")
    ext.add_argument("--server-hostname", default=HOSTNAME)
    ext.add_argument("--cafile", help="certificate to trust")
    ext.add_argument("--user")
    ext.add_argument("--password")
    ext.add_argument("--address", help="MAIL FROM, RCPT TO and header From")
    ext.add_argument("--maildir", help="Maildir to count deliveries in")
    ext.add_argument("--pid", type=int, help="a process to charge srv_cpu%% to (optional)")
    ext.add_argument("--proc-names", help="comma-separated process names (comm) whose CPU, "
                     "with their reaped children's, is srv_cpu%%, e.g. "
                     "master,smtpd,tlsmgr,anvil,cleanup,qmgr,virtual,trivial-rewrite,"
                     "proxymap,postlogd,dovecot,auth")
    args = p.parse_args()
    if args.seconds is None:
        args.seconds = 1.5 if args.quick else 9.0
    if args.quick and args.per_conn == 100:
        args.per_conn = 50
    if args.external:
        return run_external(args)
    return run_mailkeep(args)


if __name__ == "__main__":
    sys.exit(main())
