"""Several IMAP sessions on one mailbox (RFC 3501 §5.2, §7.4.1), and a big mailbox."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.daemon import RunningDaemon
from tests.support.imap import (
    RawImap,
    Result,
    append,
    message,
    running_imap_daemon,
    session,
    submit,
)


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_imap_daemon(tmp_path, ca, loop_kind)


def expunges(r: Result) -> list[int]:
    return [int(x.split()[0]) for x in r.untagged if x.upper().endswith(b" EXPUNGE")]


def uids(c: RawImap) -> dict[int, int]:
    return {seq: item["UID"] for seq, item in c.ok("FETCH 1:* UID").fetches().items()}


def test_other_sessions_changes_arrive_on_noop(imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"shared {i}"))
    a = session(imapd)
    b = session(imapd)
    before = uids(a)
    assert before == {1: 1, 2: 2, 3: 3}

    b.ok("STORE 1 +FLAGS (\\Flagged)")
    r = a.ok("NOOP")
    f = r.fetches()
    assert 1 in f and "\\FLAGGED" in [x.upper() for x in f[1]["FLAGS"]]

    b.ok("STORE 1 +FLAGS.SILENT (\\Seen $Shared)")
    f = a.ok("NOOP").fetches()
    assert {"\\FLAGGED", "\\SEEN", "$SHARED"} <= {x.upper() for x in f[1]["FLAGS"]}

    append(b, "INBOX", message("from b"))
    r = a.ok("NOOP")
    assert r.number("EXISTS") == 4

    b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    r = a.ok("NOOP")
    assert expunges(r) == [2]
    assert uids(a) == {1: 1, 2: 3, 3: 4}
    # b's view agrees
    assert uids(b) == {1: 1, 2: 3, 3: 4}
    a.close()
    b.close()


def test_new_delivery_appears_as_exists_and_recent(imapd: RunningDaemon) -> None:
    submit(imapd, message("first"))
    a = session(imapd)
    submit(imapd, message("second"))
    r = a.ok("NOOP")
    assert r.number("EXISTS") == 2
    assert r.number("RECENT") == 2  # both are \Recent in this session (it claimed both)
    f = a.ok("FETCH 2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])").fetches()[2]
    assert f["BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: second\r\n\r\n"
    assert "\\RECENT" in [x.upper() for x in f["FLAGS"]]
    # also on CHECK (and any command: §7: EXISTS may come with any response)
    submit(imapd, message("third"))
    r = a.ok("CHECK")
    r2 = a.ok("NOOP") if r.number("EXISTS") is None else r
    assert r2.number("EXISTS") == 3
    a.close()


@pytest.mark.parametrize("command", ["FETCH 1:* (FLAGS UID)", "STORE 1:* +FLAGS (\\Answered)",
                                     "SEARCH ALL", "FETCH 2 BODY.PEEK[HEADER]"])
def test_no_expunge_during_sequence_number_commands(imapd: RunningDaemon, command: str) -> None:
    """RFC 3501 §7.4.1: an EXPUNGE response MUST NOT be sent during FETCH, STORE or SEARCH,
    which would shift the sequence numbers the client is using."""
    for i in range(3):
        submit(imapd, message(f"x{i}"))
    a = session(imapd)
    b = session(imapd)
    b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    r = a.command(command)
    assert expunges(r) == [], r.untagged
    assert r.status in ("OK", "NO")  # NO is allowed for data that is gone (§7.4.1)
    if command.startswith("SEARCH"):
        assert r.search() in ([1, 2, 3], [1, 3])  # still numbered in a's old view
    if command.startswith("FETCH 1:*"):
        got = r.fetches()
        assert got[1]["UID"] == 1 and got[3]["UID"] == 3  # old numbering
    # afterwards, a command that may announce it does
    r = a.ok("NOOP")
    assert expunges(r) == [2]
    assert uids(a) == {1: 1, 2: 3}
    a.close()
    b.close()


def test_uid_commands_may_carry_expunge(imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"y{i}"))
    a = session(imapd)
    b = session(imapd)
    b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.ok("EXPUNGE")
    r = a.ok("UID FETCH 1:* FLAGS")
    pending = expunges(r)
    if not pending:
        pending = expunges(a.ok("NOOP"))
    assert pending == [1]
    assert uids(a) == {1: 2, 2: 3}
    a.close()
    b.close()


def test_recent_is_seen_by_exactly_one_session(imapd: RunningDaemon) -> None:
    for i in range(2):
        submit(imapd, message(f"r{i}"))
    a = session(imapd, select=None)
    b = session(imapd, select=None)
    ra = a.ok("SELECT INBOX")
    rb = b.ok("SELECT INBOX")
    assert (ra.number("RECENT"), rb.number("RECENT")) == (2, 0)
    fa = a.ok("FETCH 1:* FLAGS").fetches()
    fb = b.ok("FETCH 1:* FLAGS").fetches()
    assert all("\\RECENT" in [x.upper() for x in v["FLAGS"]] for v in fa.values())
    assert not any("\\RECENT" in [x.upper() for x in v["FLAGS"]] for v in fb.values())
    # a new delivery while both are selected: \Recent for one of them only
    submit(imapd, message("r2"))
    na, nb = a.ok("NOOP"), b.ok("NOOP")
    assert na.number("EXISTS") == 3 and nb.number("EXISTS") == 3
    assert sorted([na.number("RECENT") or 0, nb.number("RECENT") or 0]) in ([0, 3], [2, 3],
                                                                             [0, 1])
    flags3 = [a.ok("FETCH 3 FLAGS").fetches()[3]["FLAGS"],
              b.ok("FETCH 3 FLAGS").fetches()[3]["FLAGS"]]
    assert sum("\\RECENT" in [x.upper() for x in f] for f in flags3) == 1
    assert b.ok("SEARCH RECENT").search() in ([], [3])
    a.close()
    b.close()


def test_recent_under_concurrent_selects(imapd: RunningDaemon) -> None:
    for i in range(5):
        submit(imapd, message(f"c{i}"))
    sessions = [session(imapd, select=None) for _ in range(6)]
    barrier = threading.Barrier(len(sessions))

    def select(c: RawImap) -> int:
        barrier.wait(10)
        return c.ok("SELECT INBOX").number("RECENT") or 0

    with ThreadPoolExecutor(len(sessions)) as pool:
        counts = list(pool.map(select, sessions))
    assert sum(counts) == 5, counts
    for c in sessions:
        c.close()


def test_concurrent_appends_get_distinct_uids(imapd: RunningDaemon) -> None:
    clients = [session(imapd) for _ in range(8)]
    per_client = 5
    barrier = threading.Barrier(len(clients))

    def work(arg: tuple[int, RawImap]) -> None:
        n, c = arg
        barrier.wait(10)
        for i in range(per_client):
            append(c, "INBOX", message(f"append {n}.{i}"))

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(work, enumerate(clients)))
    total = len(clients) * per_client
    clients[0].ok("NOOP")  # whatever it has not been told yet, it is told now
    seen = uids(clients[0])
    assert len(seen) == total
    assert len(set(seen.values())) == total
    assert sorted(seen.values()) == [seen[i] for i in range(1, total + 1)]  # ascending
    fresh = session(imapd, select=None)
    assert fresh.ok("SELECT INBOX").number("EXISTS") == total
    assert uids(fresh) == seen
    assert len(imapd.maildir_files("bob")) == total
    for c in [*clients, fresh]:
        c.close()


def test_concurrent_flag_changes_are_all_kept(imapd: RunningDaemon) -> None:
    submit(imapd, message("contended"))
    keywords = [f"$K{i}" for i in range(6)]
    clients = [session(imapd) for _ in keywords]
    barrier = threading.Barrier(len(clients))

    def work(arg: tuple[str, RawImap]) -> None:
        kw, c = arg
        barrier.wait(10)
        c.ok(f"STORE 1 +FLAGS.SILENT ({kw})")

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(work, zip(keywords, clients, strict=True)))
    fresh = session(imapd)
    flags = {x.upper() for x in fresh.ok("FETCH 1 FLAGS").fetches()[1]["FLAGS"]}
    assert {k.upper() for k in keywords} <= flags
    for c in [*clients, fresh]:
        c.close()


# -- a big mailbox ----------------------------------------------------------------------------

BIG = 10_000


class BodyOpenWatch:
    """Records every open() of a message file under one Maildir, from any thread.

    An audit hook (PEP 578) sees builtins.open, io.open and os.open; the daemon runs in
    this process (start_thread_daemon), so any read of a message body is an "open" event
    on a path in new/ or cur/. Hooks cannot be removed, so this one is switched off after."""

    active: BodyOpenWatch | None = None
    installed = False

    def __init__(self, root: Path) -> None:
        self.prefixes = (str(root / "new") + os.sep, str(root / "cur") + os.sep)
        self.opened: list[str] = []

    @staticmethod
    def hook(event: str, args: tuple[Any, ...]) -> None:
        watch = BodyOpenWatch.active
        if watch is None or event != "open" or not args:
            return
        path = args[0]
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str) and path.startswith(watch.prefixes):
            watch.opened.append(path)

    def __enter__(self) -> BodyOpenWatch:
        if not BodyOpenWatch.installed:
            sys.addaudithook(BodyOpenWatch.hook)
            BodyOpenWatch.installed = True
        BodyOpenWatch.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        BodyOpenWatch.active = None


def fill_big_maildir(root: Path, count: int) -> list[int]:
    """count messages straight into new/, named like our deliveries (,S= and ,W= sizes)."""
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(count):
        data = message(f"big {i}", b"body of a message in a big mailbox\r\n" * (1 + i % 7))
        name = f"1700000000.M{i}P4242Q{i}.bigtest,S={len(data)},W={len(data)}"
        (root / "new" / name).write_bytes(data)
        sizes.append(len(data))
    return sizes


@pytest.mark.parametrize("loop_kind", ["uvloop"])
def test_big_mailbox_select_and_fetch_without_reading_bodies(imapd: RunningDaemon) -> None:
    root = imapd.data_dir / "mail" / "bob"
    sizes = fill_big_maildir(root, BIG)
    c = session(imapd, select=None, timeout=120)
    with BodyOpenWatch(root) as watch:
        r = c.ok("SELECT INBOX")
        assert r.number("EXISTS") == BIG
        assert r.number("RECENT") == BIG
        assert int(r.ok_code("UIDNEXT") or 0) == BIG + 1
        r = c.ok("FETCH 1:* (FLAGS UID RFC822.SIZE)")
        f = r.fetches()
        assert len(f) == BIG
        assert [f[i]["UID"] for i in range(1, BIG + 1)] == list(range(1, BIG + 1))
        # delivery order follows the names' time, microseconds and counter (M9 < M10)
        assert [f[i]["RFC822.SIZE"] for i in range(1, BIG + 1)] == sizes
        assert all([x.upper() for x in f[i]["FLAGS"]] == ["\\RECENT"] for i in f)
        r = c.ok("UID SEARCH UID 9990:*")
        assert r.search() == list(range(9990, BIG + 1))
        r = c.ok("SEARCH LARGER 250")  # sizes, from the names
        assert r.search() == [i + 1 for i, s in enumerate(sizes) if s > 250]
    assert watch.opened == [], f"{len(watch.opened)} message files opened, e.g. " \
                               f"{watch.opened[:3]}"
    # the bodies are there when asked for
    got = c.ok(f"FETCH {BIG} BODY.PEEK[HEADER.FIELDS (SUBJECT)]").fetches()[BIG]
    assert got["BODY[HEADER.FIELDS (SUBJECT)]"] == f"Subject: big {BIG - 1}\r\n\r\n".encode()
    c.close()
    # a second session sees the same UIDs, none \Recent
    c = session(imapd, select=None, timeout=120)
    r = c.ok("SELECT INBOX")
    assert r.number("EXISTS") == BIG and r.number("RECENT") == 0
    c.close()
