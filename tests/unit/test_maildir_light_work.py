"""Light store work on the event loop (store.py `_run(light=True)`), and the directory
listings it reuses (listing.py): neither may hide a change or wait for a lock on the loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.store import FlagMode
from mailkeep.store.maildir import MaildirStore, flagchange, listing, mailbox, settle
from mailkeep.store.maildir import store as store_module
from mailkeep.store.maildir.dotlock import Dotlock

A = "alice"
MSG = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    yield s
    s.close()


def tick() -> None:
    time.sleep(0.03)  # past one kernel timestamp tick


def test_a_settled_listing_is_reused_and_a_change_is_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settle, "FINE_SETTLE_NS", 0)
    monkeypatch.setattr(settle, "SETTLE_NS", 0)
    cur = tmp_path / "cur"
    cur.mkdir()
    (cur / "1.a:2,").touch()
    (cur / ".hidden").touch()
    tick()
    first = listing.entries(tmp_path, "cur")
    assert first == {"1.a": "cur/1.a:2,"}
    assert listing.entries(tmp_path, "cur") is first  # unchanged: not listed again
    tick()
    os.rename(cur / "1.a:2,", cur / "1.a:2,S")
    assert listing.entries(tmp_path, "cur") == {"1.a": "cur/1.a:2,S"}
    assert listing.entries(tmp_path, "missing") is None


def test_a_recently_changed_directory_is_listed_every_time(tmp_path: Path) -> None:
    cur = tmp_path / "cur"
    cur.mkdir()
    (cur / "1.a:2,").touch()
    first = listing.entries(tmp_path, "cur")
    assert listing.entries(tmp_path, "cur") is not first  # within the settle window


def _stat(mtime_ns: int, ctime_ns: int) -> os.stat_result:
    # stat_result fields: 7 ints, 3 int times, 3 float times, then the _ns times
    return os.stat_result((0,) * 13 + (0, mtime_ns, ctime_ns))


def test_settle_rule_follows_the_timestamp_granularity() -> None:
    second = 1_000_000_000
    changed = 10 * second + 123_456_789  # sub-second times: the fine rule
    fine = _stat(changed, changed)
    assert not settle.settled(fine, changed + settle.FINE_SETTLE_NS - 1)
    assert settle.settled(fine, changed + settle.FINE_SETTLE_NS)
    assert not settle.settled(_stat(changed - second, changed), changed + 1)  # ctime too
    whole = _stat(10 * second, 10 * second)  # whole seconds: wait a second
    assert not settle.settled(whole, 10 * second + second // 2)
    assert settle.settled(whole, 11 * second)


async def test_light_work_never_waits_for_a_lock_on_the_loop(store: MaildirStore,
                                                             tmp_path: Path) -> None:
    # The folder is small and known (light work runs on the loop), a new message needs a
    # UID, and another process holds dovecot-uidlist.lock: the snapshot must wait in a
    # thread while the loop goes on, and see the message once the lock is let go.
    await store.append(A, "INBOX", MSG)
    await store.snapshot(A, "INBOX")
    root = tmp_path / "mail" / A
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.create_task(ticker())
    lock = await asyncio.to_thread(Dotlock(root, "dovecot-uidlist").__enter__)
    try:
        await store.deliver(A, MSG)
        look = asyncio.create_task(store.snapshot(A, "INBOX"))
        await asyncio.sleep(0.3)
        assert not look.done()  # waiting for the lock...
        assert ticks >= 10      # ...in a thread: the loop kept running
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)
    snap = await asyncio.wait_for(look, 15)
    assert [m.uid for m in snap.messages] == [1, 2]
    running.cancel()


async def test_light_work_stays_within_its_bounds(store: MaildirStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # At INLINE_UIDS / INLINE_MESSAGES the work runs on the loop's thread; one past either,
    # in a store thread.
    monkeypatch.setattr(store_module, "INLINE_UIDS", 2)
    monkeypatch.setattr(store_module, "INLINE_MESSAGES", 3)
    ran_in: list[bool] = []

    def spy(name: str, module: object = mailbox) -> None:
        real = getattr(module, name)

        def wrapped(*args: object, **kwargs: object) -> object:
            ran_in.append(threading.get_ident() == loop_thread)
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    loop_thread = threading.get_ident()
    spy("store_flags_at", flagchange)
    spy("snapshot")
    for _ in range(3):
        await store.append(A, "INBOX", MSG)
    await store.snapshot(A, "INBOX")  # first look: a thread (the size is not known yet)
    await store.store_flags(A, "INBOX", [1, 2], FlagMode.ADD, ["\\Seen"])   # at the bound
    await store.store_flags(A, "INBOX", [1, 2, 3], FlagMode.ADD, ["\\Seen"])  # one past
    await store.snapshot(A, "INBOX")  # 3 messages: at the bound
    await store.append(A, "INBOX", MSG)
    await store.snapshot(A, "INBOX")  # the kept snapshot had 3: still the loop
    await store.snapshot(A, "INBOX")  # 4 messages now: a thread
    assert ran_in == [False, True, False, True, True, False]
