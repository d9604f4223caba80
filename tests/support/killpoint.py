"""`python tests/support/killpoint.py POINT serve --config ...`: mailkeep's CLI in this very
process, killed with SIGKILL at POINT.

A crash at an exact place, without a hook in mailkeep: the spool's methods are wrapped here,
before the CLI starts, and the wrapper sends SIGKILL to its own process (from whichever
thread runs the spool call: the whole process dies, as with `kill -9`).

Points (a DSN entry is one whose source names `dsn_for`):
  before-dsn-spooled   a DSN is about to be written to the spool
  after-dsn-spooled    a DSN has just been written (committed) to the spool
  after-notice-done    the original entry's log has just recorded a report as sent
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from mailkeep.cli import main
from mailkeep.relay.spool import Spool, SpoolEntry

POINTS = ("before-dsn-spooled", "after-dsn-spooled", "after-notice-done")


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r} (known: {', '.join(POINTS)})")
    accept, record = Spool.accept, Spool.record

    def accepting(self: Spool, entry: SpoolEntry, message: bytes) -> None:
        is_dsn = "dsn_for" in entry.source
        if is_dsn and point == "before-dsn-spooled":
            die()
        accept(self, entry, message)
        if is_dsn and point == "after-dsn-spooled":
            die()

    def recording(self: Spool, entry_id: str, outcomes: list[dict[str, Any]]) -> None:
        record(self, entry_id, outcomes)
        if point == "after-notice-done" and any("notice_done" in o for o in outcomes):
            die()

    Spool.accept = accepting  # type: ignore[method-assign]
    Spool.record = recording  # type: ignore[method-assign]


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
