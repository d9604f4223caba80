"""A NOOP soon after the session's last look is answered without a new look only when nothing
can have changed (server/imap_commands.py _recently_looked): a message dropped into the
Maildir or a flag changed on disk by another program just before the NOOP is still told by
that NOOP, every time; a polled folder is always looked at."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.server import imap_commands
from tests.support.daemon import RunningDaemon
from tests.support.imap import message, running_imap_daemon, session, submit


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_imap_daemon(tmp_path, ca, loop_kind)


def drop(inbox: Path, n: int) -> None:
    """A delivery by another program: tmp/ then a rename into new/."""
    name = f"{int(time.time())}.M{n}P99999.elsewhere"
    tmp = inbox / "tmp" / name
    tmp.write_bytes(message(f"dropped {n}"))
    os.rename(tmp, inbox / "new" / name)


def test_changes_made_on_disk_just_before_a_noop_are_told_by_it(
        imapd: RunningDaemon) -> None:
    submit(imapd, message("first"))
    inbox = imapd.data_dir / "mail" / "bob"
    c = session(imapd)
    c.ok("NOOP")  # a look: the next NOOPs come within NOOP_LOOK_SECONDS of one
    for n in range(1, 21):
        drop(inbox, n)
        assert c.ok("NOOP").number("EXISTS") == 1 + n
    # A flag set by another program (a rename in cur/) right before the NOOP.
    c.ok("NOOP")
    cur = inbox / "cur"
    name = next(f for f in os.listdir(cur) if f.endswith(":2,"))
    os.rename(cur / name, cur / (name + "F"))
    flagged = [f for f in c.ok("NOOP").fetches().values()
               if "\\FLAGGED" in [x.upper() for x in f["FLAGS"]]]
    assert len(flagged) == 1
    c.close()


def test_a_recent_look_answers_the_noop(imapd: RunningDaemon,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    submit(imapd, message("first"))
    assert imapd.daemon is not None
    store = imapd.daemon.services.store
    looks = 0
    real = type(store).snapshot

    async def counted(self: object, account: str, folder: str) -> object:
        nonlocal looks
        looks += 1
        return await real(self, account, folder)  # type: ignore[arg-type]

    monkeypatch.setattr(type(store), "snapshot", counted)
    c = session(imapd)
    c.ok("NOOP")
    looks = 0
    for _ in range(5):
        c.ok("NOOP")
    assert looks == 0  # nothing changed since the look a moment ago
    monkeypatch.setattr(imap_commands, "NOOP_LOOK_SECONDS", 0.0)
    c.ok("NOOP")
    assert looks == 1  # too long ago (here: at once): looked again
    c.close()
