"""What one change costs in a big folder: the Maildir store's APPEND, and APPEND followed by
the snapshot an IMAP session takes after it (the EXISTS it owes the client), at several
folder sizes. Prints CPU (user, system) and wall milliseconds per operation; asserts
nothing. Runs the store in-process on a temporary Maildir (under --dir), no server.

    python bench/bigfolder.py                      # 50, 2,000 and 10,000 messages
    python bench/bigfolder.py --sizes 100000 -n 20

`--seed DIR --messages N` instead writes N messages (bench/mixsite.py's) into DIR/cur/ as a
migration would (flag S, no index): a way to give the same big INBOX to mailkeep and to the
Dovecot anchor (../shared/anchors) before `bench/imap_cmdcost.py --user ...` compares them.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imapmix import MESSAGE  # the sibling scripts
from mixsite import message

from mailkeep.store.base import NewMessage
from mailkeep.store.maildir import mailbox
from mailkeep.store.maildir.layout import ensure_maildir


def _cpu() -> tuple[float, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, time.perf_counter()


def _per_op(start: tuple[float, float, float], n: int) -> str:
    end = _cpu()
    user, system, wall = (1000 * (b - a) / n for a, b in zip(start, end, strict=True))
    return f"user {user:7.3f}  sys {system:6.3f}  wall {wall:7.3f} ms/op"


def measure(size: int, n: int, under: Path) -> None:
    top = Path(tempfile.mkdtemp(dir=under))
    try:
        root = top / "maildir"
        ensure_maildir(root)
        mailbox.append_many(root, "INBOX", [NewMessage(message(i)) for i in range(size)])
        cache = mailbox.snapshot(root, "INBOX")
        mailbox.claim_recent(root, "INBOX")
        cache = mailbox.snapshot(root, "INBOX", cache, False)
        start = _cpu()
        for _ in range(n):
            mailbox.append_many(root, "INBOX", [NewMessage(MESSAGE)])
        print(f"{size:>7,} messages  APPEND             {_per_op(start, n)}")
        start = _cpu()
        for _ in range(n):
            mailbox.append_many(root, "INBOX", [NewMessage(MESSAGE)])
            cache = mailbox.snapshot(root, "INBOX", cache, False)
        print(f"{size:>7,} messages  APPEND + snapshot  {_per_op(start, n)}")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def seed(folder: Path, messages: int) -> None:
    for sub in ("cur", "new", "tmp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(messages):
        data = message(i)
        name = f"{1_700_000_000 + i}.M{i}P1.seed,S={len(data)}:2,S"
        (folder / "cur" / name).write_bytes(data)
    print(f"{folder}: {messages} messages in cur/ (give the tree to the server's user)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="50,2000,10000", help="folder sizes, comma-separated")
    p.add_argument("-n", type=int, default=100, help="operations per figure")
    p.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                   help="where the temporary Maildirs go (a real disk, not tmpfs)")
    p.add_argument("--seed", type=Path, help="write --messages messages into this Maildir")
    p.add_argument("--messages", type=int, default=10_000)
    a = p.parse_args()
    if a.seed is not None:
        seed(a.seed, a.messages)
        return 0
    for size in (int(s) for s in a.sizes.split(",")):
        measure(size, a.n, a.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
