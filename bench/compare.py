"""mailkeep and the Dovecot 2.3 + Postfix 3.7 anchor, side by side, alternating.

Both servers must already run on loopback with the same 100 users (user0001.. with one
password): the anchor from ../shared/anchors/start-anchor.sh, mailkeep from a site set up
as that README says. Each round runs every workload once against each server, the order
flipping every round (so a noisy neighbour hurts both sides alike), then the ratios
mailkeep / anchor are printed per round and as the median over the rounds.

Workloads (the figures of issue 10):
    imap-mix      bench/imapmix.py: the steady IMAP command mix on open mailboxes, ops/s
    smtp-session  loadgen smtp --msgs-per-conn 0: connect + STARTTLS + EHLO + AUTH + QUIT,
                  sessions/s, with the server's CPU per session when pids are given
    smtp-1msg     loadgen smtp --msgs-per-conn 1: one 10 KB message per connection, msgs/s

    python bench/compare.py --rounds 2 --duration 15 \\
        --mk-imap 20993 --mk-smtp 20587 --mk-pids "$(pgrep -f 'mailkeep serve')"

Loopback only; every run stops by itself. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_ANCHORS = HERE.parent.parent / "shared" / "anchors"


@dataclass(frozen=True)
class Server:
    name: str
    imap: int
    smtp: int
    pids: str


def tree_cpu(pids: str) -> float:
    """CPU seconds of the process trees under `pids` (children that ended included, as far
    as their parent waited for them: cutime/cstime)."""
    ticks = 0
    seen: set[int] = set()
    todo = [int(p) for p in pids.split()]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        todo += [int(c) for c in children]
    return ticks / os.sysconf("SC_CLK_TCK")


def _imap_mix(server: Server, args: argparse.Namespace) -> dict[str, float]:
    cpu0 = tree_cpu(server.pids) if server.pids else 0.0
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(HERE / "imapmix.py"), "--port", str(server.imap),
                        "--password", args.password, "-c", str(args.clients),
                        "-d", str(args.duration), "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL, timeout=args.duration + 120)
        result = json.loads(Path(out.name).read_text() or "{}")
    figures = {"ops_s": float(result.get("ops_per_s", 0.0))}
    if server.pids and result.get("ops"):
        figures["server_cpu_ms"] = 1000 * (tree_cpu(server.pids) - cpu0) / result["ops"]
    return figures


def _smtp(server: Server, args: argparse.Namespace, per_conn: int) -> dict[str, float]:
    loadgen = args.anchors / "loadgen.py"
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, str(loadgen), "smtp", "--port", str(server.smtp),
               "--password", args.password, "-c", str(args.clients), "-d", str(args.duration),
               "--msgs-per-conn", str(per_conn), "--size", "10240", "--json", out.name]
        if server.pids:
            cmd += ["--server-pids", server.pids]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                       timeout=args.duration + 120)
        lines = [ln for ln in Path(out.name).read_text().splitlines() if ln.strip()]
    result = json.loads(lines[-1]) if lines else {}
    rate = result.get("sessions_per_s") if per_conn == 0 else result.get("msgs_per_s")
    figures = {"rate": float(rate or 0.0)}
    cpu = result.get("server_cpu_ms_per_op") or result.get("server_cpu_ms_per_session")
    if cpu is not None:
        figures["server_cpu_ms"] = float(cpu)
    return figures


WORKLOADS: dict[str, Callable[[Server, argparse.Namespace], dict[str, float]]] = {
    "imap-mix": _imap_mix,
    "smtp-session": functools.partial(_smtp, per_conn=0),
    "smtp-1msg": functools.partial(_smtp, per_conn=1),
}
HEADLINE = {"imap-mix": "ops_s", "smtp-session": "rate", "smtp-1msg": "rate"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=15, help="seconds per run")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--password", default="secret")
    ap.add_argument("--anchors", type=Path, default=DEFAULT_ANCHORS)
    ap.add_argument("--anchor-imap", type=int, default=10993)
    ap.add_argument("--anchor-smtp", type=int, default=10587)
    ap.add_argument("--anchor-pids", default="", help="Dovecot and Postfix master pids")
    ap.add_argument("--mk-imap", type=int, default=20993)
    ap.add_argument("--mk-smtp", type=int, default=20587)
    ap.add_argument("--mk-pids", default="", help="the mailkeep daemon's pid(s)")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="comma list of workloads: " + ", ".join(WORKLOADS))
    args = ap.parse_args()
    anchor = Server("anchor", args.anchor_imap, args.anchor_smtp, args.anchor_pids)
    mk = Server("mailkeep", args.mk_imap, args.mk_smtp, args.mk_pids)
    chosen = [w for w in args.only.split(",") if w]
    ratios: dict[str, list[float]] = {w: [] for w in chosen}
    for rnd in range(1, args.rounds + 1):
        order = (anchor, mk) if rnd % 2 else (mk, anchor)
        for work in chosen:
            got: dict[str, dict[str, float]] = {}
            for server in order:
                got[server.name] = WORKLOADS[work](server, args)
            key = HEADLINE[work]
            a, m = got["anchor"][key], got["mailkeep"][key]
            ratio = m / a if a else float("nan")
            ratios[work].append(ratio)
            extra = ""
            if "server_cpu_ms" in got["anchor"] and "server_cpu_ms" in got["mailkeep"]:
                extra = (f"  server CPU ms/op anchor {got['anchor']['server_cpu_ms']:.2f}"
                         f" mailkeep {got['mailkeep']['server_cpu_ms']:.2f}")
            print(f"round {rnd} {work:13s} anchor {a:9.1f}  mailkeep {m:9.1f}  "
                  f"ratio {ratio:5.2f}x{extra}", flush=True)
    print("RATIOS (mailkeep / anchor, median of rounds): " + "  ".join(
        f"{w}={statistics.median(r):.2f}x" for w, r in ratios.items() if r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
