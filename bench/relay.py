#!/usr/bin/env python3
"""Benchmark of mailkeep's outbound relay: accepted -> spooled -> delivered to a smarthost.

Run it with the project's venv (it starts `python -m mailkeep` with the same interpreter):

    .venv/bin/python bench/relay.py                # full run, about a minute
    .venv/bin/python bench/relay.py --quick        # smoke run, about 20 seconds

It creates a throw-away config with `mailkeep init` (every listener on 127.0.0.1, ephemeral
ports read back from `serve --ready-file`), adds the account `bench`, and routes every
remote domain to a smarthost (`[delivery] default_route = "sink"`, plain SMTP) that is an
aiosmtpd sink on loopback in this process. Clients log in on 587 (STARTTLS + AUTH PLAIN)
and send 10 KB messages to a remote address, so each one goes
client -> 587 -> spool (fsynced) -> delivery runner -> aiosmtplib -> sink.

Figures, one line per load level (nothing is asserted; this is a measurement script):

  relay.smarthost clients=N  accepted   the 250s to DATA, and their rate over the level
                             delivered  messages the sink received, and the end-to-end rate
                                        (first message accepted -> last one delivered)
                             latency    accepted -> delivered per message (the client's 250
                                        to the sink's end of DATA, one clock: both ends live
                                        in this process): p50, p95, max in milliseconds
                             sink_conns SMTP sessions the daemon opened to the smarthost
  relay.verify               every accepted message reached the sink exactly once, and
                             the spool is empty at the end

Each client keeps one connection and sends up to --per-conn messages on it, then reconnects;
a level stops starting messages after --seconds and waits (bounded) for the sink. srv_cpu% is
the daemon's CPU time over the level's wall time, in percent of one core; other_cpu% is what
every other process used meanwhile (a high value: a busy machine, low figures).
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submission import (
    DOMAIN,
    HOSTNAME,
    PASSWORD,
    USER,
    SmtpConn,
    Target,
    client_context,
    machine_busy_seconds,
    mailkeep,
    make_message,
    pct,
    port_of,
    proc_cpu_seconds,
    start_daemon,
    stop_daemon,
)

REMOTE = "sink.example"
RCPT = f"sink@{REMOTE}"
# Bounds, not measurements: how long a level may wait for the sink to catch up.
DRAIN_WAIT = 120.0
SPOOL_DRAIN_WAIT = 30.0


# -- the sink -------------------------------------------------------------------------------

class Sink:
    """An aiosmtpd handler noting when each Message-ID arrived (time.monotonic())."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived: dict[str, float] = {}
        self.duplicates = 0
        self.messages = 0
        self.connections = 0   # SMTP sessions the daemon opened to the sink
        self._parser = email.parser.BytesHeaderParser()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        now = time.monotonic()
        content = envelope.original_content or b""
        mid = str(self._parser.parsebytes(content).get("Message-ID", "")).strip().strip("<>")
        with self.lock:
            self.messages += 1
            if mid in self.arrived:
                self.duplicates += 1
            else:
                self.arrived[mid] = now
        return "250 2.0.0 OK sunk"

    def count(self) -> int:
        with self.lock:
            return len(self.arrived)


class SinkSMTP(SMTP):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler = self.event_handler
        assert isinstance(handler, Sink)
        with handler.lock:
            handler.connections += 1
        super().connection_made(transport)


class SinkServer:
    """The sink on 127.0.0.1, an ephemeral port, served from a thread with its own loop."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sink", daemon=True)

    def _run(self) -> None:
        loop = self._loop
        server = loop.run_until_complete(loop.create_server(
            lambda: SinkSMTP(self.sink, hostname="sink.example", data_size_limit=None),
            "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.close()

    def start(self) -> int:
        self._thread.start()
        if not self._ready.wait(10):
            raise SystemExit("the sink did not start")
        return self.port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- one level ------------------------------------------------------------------------------

@dataclass
class Level:
    accepted: dict[str, float] = field(default_factory=dict)   # Message-ID -> time of 250
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(f"{type(exc).__name__}: {exc}")


def message_for(template: bytes, mid: str) -> bytes:
    return template.replace(b"Message-ID: <bench-id>", f"Message-ID: <{mid}>".encode(), 1)


async def client(t: Target, template: bytes, name: str, *, per_conn: int, deadline: float,
                 level: Level) -> None:
    n = 0
    while time.monotonic() < deadline:
        c = SmtpConn(t)
        try:
            await c.open(False)
            await c.auth()
            for _ in range(per_conn):
                if time.monotonic() >= deadline:
                    break
                mid = f"{name}.{n}@bench.example.test"
                n += 1
                await c.send(message_for(template, mid))
                level.accepted[mid] = time.monotonic()
            await c.quit()
        except Exception as exc:
            level.error(exc)
            await c.close()
            await asyncio.sleep(0.05)


def run_level(t: Target, sink: Sink, pid: int, clients: int, *, args: argparse.Namespace,
              template: bytes) -> tuple[int, int]:
    level = Level()
    conns0 = sink.connections
    cpu0, busy0, wall0 = proc_cpu_seconds(pid), machine_busy_seconds(), time.monotonic()
    deadline = wall0 + args.seconds

    async def run() -> None:
        await asyncio.gather(*(client(t, template, f"c{clients}-{i}", per_conn=args.per_conn,
                                      deadline=deadline, level=level)
                               for i in range(clients)))

    asyncio.run(run())
    sent_end = time.monotonic()
    wanted = set(level.accepted)
    drain_deadline = sent_end + DRAIN_WAIT
    while time.monotonic() < drain_deadline:
        with sink.lock:
            if wanted <= sink.arrived.keys():
                break
        time.sleep(0.01)
    cpu1, busy1, wall1 = proc_cpu_seconds(pid), machine_busy_seconds(), time.monotonic()
    with sink.lock:
        arrived = {m: sink.arrived[m] for m in wanted if m in sink.arrived}
    latencies = [(arrived[m] - level.accepted[m]) * 1000 for m in arrived]
    accepted = len(level.accepted)
    first = min(level.accepted.values(), default=wall0)
    last = max(arrived.values(), default=first)
    e2e = len(arrived) / (last - first) if last > first else 0.0
    acc_rate = accepted / (sent_end - wall0)
    wall = wall1 - wall0
    srv = (cpu1 - cpu0) / wall * 100
    other = max(0.0, (busy1 - busy0) / wall * 100 - srv)
    lat = ("p50_ms=n/a p95_ms=n/a max_ms=n/a" if not latencies else
           f"p50_ms={pct(latencies, 50):.1f} p95_ms={pct(latencies, 95):.1f} "
           f"max_ms={max(latencies):.1f}")
    print(f"relay.smarthost clients={clients} accepted={accepted} accept_rate={acc_rate:.1f}/s "
          f"delivered={len(arrived)} delivered_rate={e2e:.1f}/s {lat} "
          f"sink_conns={sink.connections - conns0} errors={level.errors} "
          f"srv_cpu%={srv:.0f} other_cpu%={other:.0f}", flush=True)
    for sample in level.error_samples:
        print(f"#   error: {sample}", flush=True)
    return accepted, len(arrived)


# -- mailkeep setup -------------------------------------------------------------------------

def prepare(root: Path, sink_port: int, per_ip: int) -> Path:
    mailkeep("init", str(root), "--hostname", HOSTNAME, "--ports", "unprivileged",
             "--bind-host", "127.0.0.1", "--no-demo-user")
    cfg = root / "mailkeep.toml"
    text = cfg.read_text(encoding="utf-8")
    text, n = re.subn(r'^bind = \["127\.0\.0\.1:\d+"\]$', 'bind = ["127.0.0.1:0"]', text,
                      flags=re.MULTILINE)
    if n < 2:
        raise SystemExit(f"{cfg}: expected at least 2 bind lines to rewrite, found {n}")
    text, n = re.subn(r"^\[security\]$", f"[security]\nmax_connections_per_ip = {per_ip}", text,
                      flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"{cfg}: no [security] table to extend")
    if os.geteuid() == 0:
        # A throw-away daemon in a container that runs as root (as the test suite's do).
        text, n = re.subn(r"^hostname = ", "allow_root = true\nhostname = ", text, count=1,
                          flags=re.MULTILINE)
        if n != 1:
            raise SystemExit(f"{cfg}: no top-level hostname line to extend")
    # Every remote domain through the sink: a plain-SMTP smarthost on loopback.
    text, n = re.subn(r"^\[delivery\]$",
                      '[delivery]\ndefault_route = "sink"\nmta_sts = false\n'
                      "retry_schedule = [1]", text, flags=re.MULTILINE)
    if n != 1:
        raise SystemExit(f"{cfg}: no [delivery] table to extend")
    text += ('\n[delivery.routes.sink]\ntype = "smarthost"\nhost = "127.0.0.1"\n'
             f'port = {sink_port}\ntls = "none"\n')
    cfg.write_text(text, encoding="utf-8")
    mailkeep("check-config", "--config", str(cfg))
    mailkeep("user", "add", USER, "--config", str(cfg), stdin=PASSWORD + "\n")
    return cfg


def spool_count(root: Path) -> int:
    queue = root / "data" / "spool" / "queue"
    return sum(1 for p in queue.iterdir() if not p.name.endswith(".log")) \
        if queue.is_dir() else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="the daemon's event loop (default uvloop)")
    p.add_argument("--quick", action="store_true", help="smoke run: ~20 s in all")
    p.add_argument("--seconds", type=float, help="sending time per level (default 8; 2 quick)")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 10, 50], help="concurrent clients per level (default 1,10,50)")
    p.add_argument("--per-conn", type=int, default=20,
                   help="messages per client connection (default 20, as Postfix's target)")
    p.add_argument("--size", type=int, default=10 * 1024, help="message size in octets")
    p.add_argument("--workdir", help="use (and keep) this folder instead of a temporary one")
    args = p.parse_args()
    if args.seconds is None:
        args.seconds = 2.0 if args.quick else 8.0
    if args.quick and args.levels == [1, 10, 50]:
        args.levels = [1, 10]

    keep = args.workdir is not None
    root = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="mailkeep-relaybench-"))
    root.mkdir(parents=True, exist_ok=True)
    sink = Sink()
    server = SinkServer(sink)
    sink_port = server.start()
    proc = None
    try:
        cfg = prepare(root, sink_port, per_ip=max(200, 2 * max(args.levels)))
        proc, listeners = start_daemon(cfg, args.loop, root / "daemon.log", "warning")
        sender = f"{USER}@{DOMAIN}"
        t = Target(host="127.0.0.1", starttls_port=port_of(listeners["submission"]),
                   implicit_port=None, server_hostname=HOSTNAME,
                   context=client_context(root / "certs" / "mailkeep.crt"),
                   user=USER, password=PASSWORD, sender=sender, rcpt=RCPT)
        template = make_message(args.size, sender, RCPT).replace(
            f"Message-ID: <bench-{os.getpid()}@bench-client.example.test>".encode(),
            b"Message-ID: <bench-id>", 1)
        if b"<bench-id>" not in template:
            raise SystemExit("the message template has no Message-ID to replace")
        print(f"# bench: python {sys.version.split()[0]} nproc={os.cpu_count()} "
              f"server_loop={args.loop} size={args.size} seconds/level={args.seconds} "
              f"per_conn={args.per_conn} levels={','.join(map(str, args.levels))}", flush=True)
        print(f"# daemon pid={proc.pid} workdir={root} submission={t.starttls_port} "
              f"sink=127.0.0.1:{sink_port} route=smarthost tls=none", flush=True)
        accepted = delivered = 0
        for clients in args.levels:
            a, d = run_level(t, sink, proc.pid, clients, args=args, template=template)
            accepted += a
            delivered += d
        deadline = time.monotonic() + SPOOL_DRAIN_WAIT
        while spool_count(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = spool_count(root)
        ok = accepted == delivered == sink.count() and not sink.duplicates and not left
        print(f"relay.verify accepted={accepted} delivered={delivered} "
              f"sink_messages={sink.messages} sink_connections={sink.connections} "
              f"duplicates={sink.duplicates} spool_left={left} "
              f"match={'yes' if ok else 'NO'}", flush=True)
        return 0 if ok else 1
    finally:
        if proc is not None:
            code = stop_daemon(proc)
            print(f"# daemon stopped (exit {code}); log: {root / 'daemon.log'}", flush=True)
        server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
