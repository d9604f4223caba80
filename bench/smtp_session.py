#!/usr/bin/env python3
"""Session rate and server CPU per session of every TLS door, fresh and resumed TLS handshakes.

    .venv/bin/python bench/smtp_session.py                        # every door, fresh + resumed
    .venv/bin/python bench/smtp_session.py --doors submission --seconds 20 --clients 4
    .venv/bin/python bench/smtp_session.py --doors submission --py-spy /tmp/smtp.svg

Issue 10 item 4: "connect + STARTTLS + EHLO + AUTH + QUIT costs mailkeep about twice Postfix's
server CPU". One session per connection, sequential sessions in --clients client processes:

  submission    587: 220, EHLO, STARTTLS, (TLS), EHLO, AUTH PLAIN, QUIT
  submissions   465 (implicit TLS): 220, EHLO, AUTH PLAIN, QUIT
  imaps         993: greeting, LOGIN, LOGOUT
  pop3s         995: greeting, USER, PASS, QUIT (one account per client process: a maildrop
                is locked by its session)

tls=fresh: a full handshake every session. tls=resumed: each client offers the session (TLS 1.3
ticket) it got from the previous one; `resumed` counts handshakes the server accepted as
resumptions (the client's SSLSocket.session_reused).

Figures per door and mode, one line each (nothing asserted):
  sessions_per_s        completed sessions per second of wall time
  srv_cpu_ms_per_session the daemon's CPU (user + system, all threads, /proc/PID/stat) / sessions
  srv_cpu%              the daemon's CPU over the wall time, in percent of one core
  p50_ms / p99_ms       session latency (connect to the server's last reply)

Passwords are SHA512-CRYPT with 5,000 rounds, as `openssl passwd -6` makes them for the
Dovecot/Postfix anchor (../shared/anchors): like-for-like login cost. The daemon logs at
--log-level (default info, as deployed). --py-spy FILE records the daemon with py-spy during
the first door and mode measured: a flame graph if FILE ends in .svg, else collapsed stacks
(py-spy on PATH or beside this Python; it needs ptrace rights). --syscalls FILE counts the
daemon's system calls per session with strace -c: a figure the machine's other load does not
change (the CPU figures above vary by tens of percent on a shared machine).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import submission as sub_bench  # bench/submission.py: daemon start/stop, CPU from /proc

HOSTNAME = "mail.example.test"
PASSWORD = "bench-password-not-secret"
DOORS = ("submission", "submissions", "imaps", "pop3s")
REPLY_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the daemon ---------------------------------------------------------------------------------

def prepare(root: Path, accounts: int) -> Path:
    sub_bench.mailkeep("init", str(root), "--hostname", HOSTNAME, "--ports", "unprivileged",
                       "--bind-host", "127.0.0.1", "--no-demo-user")
    cfg = root / "mailkeep.toml"
    text = re.sub(r'^bind = \["127\.0\.0\.1:\d+"\]$', 'bind = ["127.0.0.1:0"]',
                  cfg.read_text(), flags=re.MULTILINE)
    # Thousands of sessions a minute from one address: the auth throttle and the per-address
    # budgets are for attackers, not for this client.
    text = re.sub(r"^\[security\]$", "[security]\nmax_connections_per_ip = 1000", text,
                  flags=re.MULTILINE)
    if "[listeners.imaps]" not in text:
        text += ('\n[listeners.imaps]\nprotocol = "imap"\ntls = "implicit"\n'
                 'bind = ["127.0.0.1:0"]\n')
    if os.geteuid() == 0:  # a throw-away bench daemon on loopback
        text = text.replace("\n[tls]\n", "\nallow_root = true\n\n[tls]\n", 1)
    cfg.write_text(text)
    from passlib.hash import sha512_crypt  # noqa: PLC0415

    # `openssl passwd -6`: SHA512-CRYPT, 5,000 rounds (the anchor's hashes).
    pw = sha512_crypt.using(rounds=5000).hash(PASSWORD)
    users = [f"sess{i:03d}" for i in range(accounts)]
    (root / "users.toml").write_text("".join(
        f'[users.{u}]\npassword = "{pw}"\naddresses = ["{u}@example.test"]\n' for u in users))
    for u in users:
        for sub in ("cur", "new", "tmp"):
            (root / "data" / "mail" / u / sub).mkdir(parents=True)
    return cfg


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- the client -----------------------------------------------------------------------------------

class Lines:
    """Reply lines from a blocking socket (plain or TLS)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def send(self, text: bytes) -> None:
        self.sock.sendall(text + b"\r\n")

    def smtp(self, text: bytes | None, expect: int) -> None:
        if text is not None:
            self.send(text)
        while True:
            line = self.line()
            if line[3:4] != b"-":
                if line[:3] != str(expect).encode():
                    raise RuntimeError(line[:200].decode("ascii", "replace"))
                return

    def expect(self, text: bytes | None, prefix: bytes) -> None:
        if text is not None:
            self.send(text)
        while True:
            line = self.line()
            if line.startswith(b"* ") and prefix != b"* OK":
                continue
            if not line.startswith(prefix):
                raise RuntimeError(line[:200].decode("ascii", "replace"))
            return


def one_session(door: str, port: int, ctx: ssl.SSLContext, user: str,
                session: ssl.SSLSession | None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
    try:
        if door == "submission":
            c = Lines(raw)
            c.smtp(None, 220)
            c.smtp(b"EHLO bench.example.test", 250)
            c.smtp(b"STARTTLS", 220)
            tls = ctx.wrap_socket(raw, server_hostname=HOSTNAME, session=session)
            c = Lines(tls)
            c.smtp(b"EHLO bench.example.test", 250)
            c.smtp(b"AUTH PLAIN " + plain, 235)
            c.smtp(b"QUIT", 221)
        else:
            tls = ctx.wrap_socket(raw, server_hostname=HOSTNAME, session=session)
            c = Lines(tls)
            if door == "submissions":
                c.smtp(None, 220)
                c.smtp(b"EHLO bench.example.test", 250)
                c.smtp(b"AUTH PLAIN " + plain, 235)
                c.smtp(b"QUIT", 221)
            elif door == "imaps":
                c.expect(None, b"* OK")
                c.expect(f'a LOGIN {user} "{PASSWORD}"'.encode(), b"a OK")
                c.expect(b"b LOGOUT", b"b OK")
            else:
                c.expect(None, b"+OK")
                c.expect(b"USER " + user.encode(), b"+OK")
                c.expect(b"PASS " + PASSWORD.encode(), b"+OK")
                c.expect(b"QUIT", b"+OK")
        return tls
    except BaseException:
        raw.close()
        raise


def worker(args: argparse.Namespace) -> None:
    """A client process: sequential sessions until the deadline; one JSON line of results."""
    ctx = ssl.create_default_context(cafile=args.cafile)
    deadline = time.monotonic() + args.seconds
    session: ssl.SSLSession | None = None
    done = resumed = errors = 0
    lat: list[float] = []
    samples: list[str] = []
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            tls = one_session(args.door, args.port, ctx, args.user,
                              session if args.tls == "resumed" else None)
        except Exception as exc:
            errors += 1
            if len(samples) < 3:
                samples.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)
            continue
        lat.append(time.monotonic() - t0)
        done += 1
        resumed += tls.session_reused
        if args.tls == "resumed":
            session = tls.session  # the newest ticket
        with contextlib.suppress(OSError):
            tls.close()
    print(json.dumps({"sessions": done, "resumed": resumed, "errors": errors,
                      "lat": lat, "samples": samples}), flush=True)


def syscalls_line(door: str, mode: str, summary: Path, n: int) -> str:
    """strace -c's table as calls per session: all, and the ones that send or receive."""
    calls: dict[str, int] = {}
    for line in summary.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[-1].isidentifier() and f[3].isdigit():
            calls[f[-1]] = int(f[3])
    io = {k: v for k, v in calls.items() if k in SEND_RECV}
    return (f"session.{door}.syscalls tls={mode} sessions={n} per_session="
            f"{sum(calls.values()) / n:.1f} "
            + " ".join(f"{k}={v / n:.1f}" for k, v in sorted(io.items())))


SEND_RECV = frozenset({"sendto", "sendmsg", "write", "writev", "recvfrom", "recvmsg", "read"})


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


# -- the run --------------------------------------------------------------------------------------

def run_level(door: str, mode: str, args: argparse.Namespace, *, pid: int, port: int,
              cafile: Path, spy: str | None) -> tuple[float, float]:
    """One door and mode for --seconds: prints its line, returns (sessions/s, CPU ms per
    session)."""
    spy_proc = None
    if spy:
        fmt = "flamegraph" if spy.endswith(".svg") else "raw"  # raw: collapsed stacks
        spy_proc = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--output", spy,
                                     "--format", fmt, "--duration", str(int(args.seconds)),
                                     "--rate", "200", "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(1)
    tracer = None
    if args.syscalls:
        # strace slows the daemon down a lot; the counts per session do not depend on it.
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(args.syscalls), "-p",
                                   str(pid)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(1)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--door", door, "--tls", mode, "--port",
         str(port), "--cafile", str(cafile), "--user", f"sess{k:03d}", "--seconds",
         str(args.seconds)], stdout=subprocess.PIPE, text=True) for k in range(args.clients)]
    results = [json.loads(p.communicate(timeout=args.seconds + 120)[0]) for p in procs]
    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    if spy_proc is not None:
        spy_proc.wait(60)
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(60)
    n = sum(r["sessions"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])
    samples = [s for r in results for s in r["samples"]][:3]
    p50 = statistics.median(lat) * 1000 if lat else 0.0
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
    print(f"session.{door} tls={mode} clients={args.clients} sessions={n} "
          f"resumed={sum(r['resumed'] for r in results)} "
          f"errors={sum(r['errors'] for r in results)} sessions_per_s={n / wall:.1f} "
          f"srv_cpu_ms_per_session={cpu * 1000 / max(n, 1):.2f} srv_cpu%={cpu * 100 / wall:.0f} "
          f"p50_ms={p50:.1f} p99_ms={p99:.1f}"
          + (f" errors: {' | '.join(samples)}" if samples else ""), flush=True)
    if tracer is not None:
        print(syscalls_line(door, mode, Path(args.syscalls), max(n, 1)), flush=True)
    return n / wall, cpu * 1000 / max(n, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--doors", default=",".join(DOORS))
    p.add_argument("--modes", default="fresh,resumed")
    p.add_argument("--clients", type=int, default=4, help="client processes")
    p.add_argument("--seconds", type=float, default=15.0, help="per door and mode")
    p.add_argument("--rounds", type=int, default=1, help="repeat every door and mode")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--log-level", default="info")
    p.add_argument("--syscalls", default="", metavar="FILE",
                   help="count the daemon's system calls per session with strace -c (into "
                        "FILE; needs strace and ptrace rights; load-independent)")
    p.add_argument("--py-spy", default="", metavar="FILE",
                   help="py-spy record the first measurement into FILE (.svg or .txt)")
    # client process mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--door", default="", help=argparse.SUPPRESS)
    p.add_argument("--tls", default="fresh", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cafile", default="", help=argparse.SUPPRESS)
    p.add_argument("--user", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.py_spy and not Path(py_spy()).exists():
        raise SystemExit("--py-spy: py-spy is neither on PATH nor beside this Python "
                         "(pip install py-spy)")
    with tempfile.TemporaryDirectory(prefix="mailkeep-bench-session-") as tmp:
        root = Path(tmp)
        cfg = prepare(root, args.clients)
        proc, listeners = sub_bench.start_daemon(cfg, args.loop, root / "daemon.log",
                                                 args.log_level)
        ports = {name: sub_bench.port_of(addrs) for name, addrs in listeners.items()}
        print(f"# bench: python {sys.version.split()[0]} nproc={os.cpu_count()} "
              f"loop={args.loop} clients={args.clients} seconds={args.seconds} "
              f"log_level={args.log_level} openssl={ssl.OPENSSL_VERSION!r}", flush=True)
        spy = args.py_spy or None
        figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
        try:
            for _ in range(args.rounds):
                for door in args.doors.split(","):
                    for mode in args.modes.split(","):
                        figures.setdefault((door, mode), []).append(run_level(
                            door, mode, args, pid=proc.pid, port=ports[door],
                            cafile=root / "certs" / "mailkeep.crt", spy=spy))
                        spy = None
        finally:
            sub_bench.stop_daemon(proc)
        if args.rounds > 1:  # rounds alternate the doors and modes: medians of the rounds
            for (door, mode), runs in figures.items():
                print(f"session.{door}.median tls={mode} rounds={len(runs)} "
                      f"sessions_per_s={statistics.median(r[0] for r in runs):.1f} "
                      f"srv_cpu_ms_per_session={statistics.median(r[1] for r in runs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
