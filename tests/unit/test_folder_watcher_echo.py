"""The folder watcher tells sessions about changes other processes make (EXTERNAL), but not
about the echo of this process's own renames and unlinks (store/maildir/echo.py): those
the store published itself, with their kind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailkeep.store import FlagMode
from mailkeep.store.changes import ChangeKind, acting_session
from mailkeep.store.maildir import MaildirStore, echo

A = "alice"
MSG = b"Subject: hi\r\n\r\nbody\r\n"
SETTLE = 0.2  # past the watcher's coalescing of events (20 ms)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    s.start_feed()
    yield s
    assert s.watcher is not None
    await s.watcher.close()
    s.close()
    echo.forget()


async def test_own_changes_are_published_once_with_their_kind(store: MaildirStore) -> None:
    await store.append(A, "INBOX", MSG)
    await store.append(A, "INBOX", MSG)
    watch = store.watch(A, "INBOX", session=1)
    await asyncio.sleep(SETTLE)
    watch.take()
    await store.claim_recent(A, "INBOX")
    await store.store_flags(A, "INBOX", [1], FlagMode.ADD, ["\\Seen", "\\Deleted"])
    await store.expunge(A, "INBOX")
    await store.append(A, "INBOX", MSG)
    await store.deliver(A, MSG)
    await asyncio.sleep(SETTLE)
    kinds = [c.kind for c in watch.take()]
    assert ChangeKind.EXTERNAL not in kinds
    assert {ChangeKind.FLAGS, ChangeKind.EXPUNGE, ChangeKind.NEW} <= set(kinds)
    watch.close()


async def test_another_processs_change_is_external(store: MaildirStore,
                                                   tmp_path: Path) -> None:
    await store.append(A, "INBOX", MSG)
    await store.claim_recent(A, "INBOX")
    watch = store.watch(A, "INBOX", session=1)
    await asyncio.sleep(SETTLE)
    watch.take()
    cur = tmp_path / "mail" / A / "cur"
    (name,) = os.listdir(cur)
    # The same rename our own STORE +FLAGS (\Seen) would make, made by someone else.
    os.rename(cur / name, cur / (name.split(":")[0] + ":2,S"))
    changes = await asyncio.wait_for(watch.next(), 5)
    assert [c.kind for c in changes] == [ChangeKind.EXTERNAL]
    watch.close()


def test_a_failed_change_leaves_no_registration(tmp_path: Path) -> None:
    echo.forget()
    cur = tmp_path / "cur"
    cur.mkdir()
    with pytest.raises(FileNotFoundError):
        echo.rename(cur / "missing", cur / "missing:2,S")
    with pytest.raises(FileNotFoundError):
        echo.unlink(cur / "missing")
    assert not echo.ours(str(cur), "missing")
    assert not echo.ours(str(cur), "missing:2,S")
    assert echo.held() == 0


async def test_the_acting_session_is_not_told_of_its_own_change(store: MaildirStore) -> None:
    await store.append(A, "INBOX", MSG)
    mine, other = store.watch(A, "INBOX", session=7), store.watch(A, "INBOX", session=8)
    await asyncio.sleep(SETTLE)
    mine.take()
    other.take()
    token = acting_session.set(7)  # as the IMAP executor does around a command
    try:
        await store.store_flags(A, "INBOX", [1], FlagMode.ADD, ["\\Seen"])
    finally:
        acting_session.reset(token)
    await asyncio.sleep(SETTLE)
    assert not mine.pending()
    assert [c.kind for c in other.take()] == [ChangeKind.FLAGS]
    mine.close()
    other.close()


def test_registrations_whose_echo_never_comes_stay_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Changes in folders nobody watches (a burst of deliveries to idle accounts) register
    # echoes that never come back: the registry stays bounded, and works on after a purge.
    monkeypatch.setattr(echo, "SWEEP_AT", 8)
    monkeypatch.setattr(echo, "MAX_EXPECTED", 32)
    echo.forget()
    cur = tmp_path / "cur"
    cur.mkdir()
    most = 0
    for n in range(500):
        (cur / f"m{n}").touch()
        echo.unlink(cur / f"m{n}")
        most = max(most, echo.held())
    assert most <= 2 * 32
    (cur / "last").touch()
    echo.unlink(cur / "last")
    assert echo.ours(str(cur), "last")
