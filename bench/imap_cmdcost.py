"""Server CPU per IMAP command, one command kind at a time, against any IMAPS server.

One client logs in (user --user, password --password), selects INBOX and sends each kind of
command of bench/imapmix.py N times in a row; the server's CPU time (utime + stime of the
given pids and their children, from /proc) is read before and after each kind. Prints one
line per kind: CPU ms per command and wall ms per command. The APPEND line is a whole
cycle of the mix's four commands (APPEND, UID SEARCH HEADER, UID STORE +FLAGS.SILENT
(\\Deleted), UID EXPUNGE), so the folder keeps its size. Loopback only; it stops by itself;
nothing is asserted. Single-client figures on a shared machine move by 20-30 % from run to
run: compare runs made one after the other.

    python bench/imap_cmdcost.py --port 20993 --pids "$(pgrep -f 'mailkeep serve')" -n 300
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import tree_cpu  # the sibling scripts
from imapmix import MESSAGE, Client, _uids, context


async def main(a: argparse.Namespace) -> None:
    r, w = await asyncio.open_connection(a.host, a.port, ssl=context(),
                                         server_hostname="mail.test", limit=1 << 22)
    c = Client(r, w)
    await r.readline()
    await c.command(f'LOGIN "{a.user}" "{a.password}"'.encode())
    await c.command(b"SELECT INBOX")
    uids = _uids(await c.command(b"FETCH 1:* (UID)"))
    if len(uids) < 2:
        raise SystemExit(f"{a.user}: INBOX needs messages (seed it first)")
    one = uids[len(uids) // 2]
    kinds: list[tuple[str, list[bytes]]] = [
        ("noop", [b"NOOP"]),
        ("fetch-list", [b"FETCH 1:10 (FLAGS UID RFC822.SIZE ENVELOPE)"]),
        ("fetch-headers", [b"UID FETCH %d (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
                           % one]),
        ("fetch-body", [b"UID FETCH %d (BODY.PEEK[])" % one]),
        ("store", [b"UID STORE %d +FLAGS (\\Seen)" % one, b"UID STORE %d -FLAGS (\\Seen)" % one]),
        ("search-unseen", [b"SEARCH UNSEEN"]),
        ("search-subject", [b'SEARCH SUBJECT "m"']),
        ("search-header", [b'UID SEARCH HEADER Message-ID "mix@mail.test"']),
    ]
    for name, texts in kinds:
        for i in range(20):  # warm: caches filled, nothing first-time measured
            await c.command(texts[i % len(texts)])
        cpu0, t0 = tree_cpu(a.pids), time.perf_counter()
        for i in range(a.n):
            await c.command(texts[i % len(texts)])
        wall, cpu = time.perf_counter() - t0, tree_cpu(a.pids) - cpu0
        print(f"{name:15s} cpu {cpu * 1000 / a.n:6.3f} ms/command  wall "
              f"{wall * 1000 / a.n:6.3f} ms/command")
    cycles = max(1, a.n // 4)
    # The cycle's share per step: the CPU read around each command (consecutive readings,
    # so the shares add up to the cycle's total; each share is exact only on average).
    steps = {"append": 0.0, "search": 0.0, "store": 0.0, "expunge": 0.0}
    cpu0, t0 = tree_cpu(a.pids), time.perf_counter()
    last = cpu0

    def mark(step: str) -> None:
        nonlocal last
        now = tree_cpu(a.pids)
        steps[step] += now - last
        last = now

    for _ in range(cycles):
        await c.command(b"APPEND INBOX ()", MESSAGE)
        mark("append")
        found = _uids(await c.command(b'UID SEARCH HEADER Message-ID "mix@mail.test"'))
        mark("search")
        if found:
            chosen = ",".join(map(str, found)).encode()
            await c.command(b"UID STORE %s +FLAGS.SILENT (\\Deleted)" % chosen)
            mark("store")
            await c.command(b"UID EXPUNGE %s" % chosen)
            mark("expunge")
    wall, cpu = time.perf_counter() - t0, tree_cpu(a.pids) - cpu0
    print(f"{'append-cycle':15s} cpu {cpu * 1000 / cycles:6.3f} ms/cycle    wall "
          f"{wall * 1000 / cycles:6.3f} ms/cycle (APPEND, SEARCH, STORE, EXPUNGE)")
    print("  of which " + ", ".join(f"{k} {v * 1000 / cycles:.3f}" for k, v in steps.items())
          + " ms")
    await c.command(b"LOGOUT")
    w.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=993)
    p.add_argument("--pids", required=True, help="the server's pid(s): its CPU is read")
    p.add_argument("--user", default="user0042")
    p.add_argument("--password", default="secret")
    p.add_argument("-n", type=int, default=300, help="commands per kind")
    args = p.parse_args()
    if not args.host.startswith("127.") and args.host != "::1":
        p.error("loopback only")
    if not 1 <= args.n <= 100_000:
        p.error("-n between 1 and 100000")
    asyncio.run(main(args))
