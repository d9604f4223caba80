"""store/maildir: crash-safe delivery, naming, tmp cleanup; checked against the memory store."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mailkeep.store import DeliveryError
from mailkeep.store.maildir import MaildirStore, layout
from mailkeep.store.maildir.layout import HOSTNAME, account_root, unique_name
from mailkeep.store.maildir.store import STALE_TMP_SECONDS
from mailkeep.store.memory import MemoryStore

MESSAGE = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.(.+),S=(\d+),W=(\d+)$")


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    s = MaildirStore(tmp_path)
    yield s  # type: ignore[misc]
    s.close()


async def test_deliver_creates_maildir_and_lands_in_new(
    store: MaildirStore, tmp_path: Path
) -> None:
    name = await store.deliver("alice", MESSAGE)
    root = tmp_path / "mail" / "alice"
    for sub in ("tmp", "new", "cur"):
        assert (root / sub).is_dir()
        assert (root / sub).stat().st_mode & 0o777 == 0o700
    assert (root / "new" / name).read_bytes() == MESSAGE
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "cur").iterdir()) == []
    assert (root / "new" / name).stat().st_mode & 0o777 == 0o600
    assert await store.messages("alice") == [MESSAGE]


async def test_name_carries_size(store: MaildirStore) -> None:
    for message in (MESSAGE, b"", b"x" * 12345):
        name = await store.deliver("alice", message)
        m = NAME.match(name)
        assert m is not None, name
        assert m.group(3) == str(os.getpid())
        assert m.group(5) == HOSTNAME
        assert int(m.group(6)) == int(m.group(7)) == len(message)
        assert name.endswith(f",S={len(message)},W={len(message)}")
        assert ":" not in name and "/" not in name


def test_exact_bytes_kept(store: MaildirStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40 + b"\r\n.\r\n\x00"
    name = store.deliver_sync("bob", data)
    assert (tmp_path / "mail" / "bob" / "new" / name).read_bytes() == data


def test_names_unique_across_1000_rapid_deliveries(store: MaildirStore, tmp_path: Path) -> None:
    names = [store.deliver_sync("alice", b"m%d\r\n" % i) for i in range(1000)]
    assert len(set(names)) == 1000
    new = tmp_path / "mail" / "alice" / "new"
    assert sorted(p.name for p in new.iterdir()) == sorted(names)
    assert list((tmp_path / "mail" / "alice" / "tmp").iterdir()) == []
    contents = Counter(p.read_bytes() for p in new.iterdir())
    assert contents == Counter(b"m%d\r\n" % i for i in range(1000))


async def test_concurrent_deliveries_unique(store: MaildirStore) -> None:
    names = await asyncio.gather(*(store.deliver("alice", b"%d" % i) for i in range(200)))
    assert len(set(names)) == 200
    assert Counter(await store.messages("alice")) == Counter(b"%d" % i for i in range(200))


class FakeTime:
    """Stands in for the `time` module inside layout.py only."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def time(self) -> float:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_unique_name_without_clock_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "time", FakeTime(1_700_000_000.25))
    names = {unique_name(10) for _ in range(100)}
    assert len(names) == 100


@pytest.mark.parametrize("account", [".x", "..", "a/b", "", "../etc", "/abs", "a\0b", ".Sent"])
async def test_unsafe_account_names_rejected(
    store: MaildirStore, tmp_path: Path, account: str
) -> None:
    with pytest.raises((ValueError, DeliveryError)):
        await store.deliver(account, MESSAGE)
    with pytest.raises(ValueError, match="unsafe account name"):
        account_root(tmp_path, account)
    # nothing was written anywhere
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


async def test_delivery_error_when_the_maildir_is_a_file(
    store: MaildirStore, tmp_path: Path
) -> None:
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "alice").write_bytes(b"not a directory")
    with pytest.raises(DeliveryError, match="delivery to alice failed"):
        await store.deliver("alice", MESSAGE)
    # other accounts are unaffected
    assert await store.deliver("bob", MESSAGE)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
async def test_delivery_error_on_unwritable_directory(store: MaildirStore, tmp_path: Path) -> None:
    await store.deliver("alice", MESSAGE)
    tmp = tmp_path / "mail" / "alice" / "tmp"
    tmp.chmod(0o500)
    try:
        with pytest.raises(DeliveryError):
            await store.deliver("alice", MESSAGE)
    finally:
        tmp.chmod(0o700)


def test_failed_rename_leaves_nothing_in_tmp(
    store: MaildirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mailkeep.store.maildir.durable.os.rename", broken_rename)
    with pytest.raises(DeliveryError, match="disk full"):
        store.deliver_sync("alice", MESSAGE)
    root = tmp_path / "mail" / "alice"
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "new").iterdir()) == []


def test_messages_of_unknown_account_is_empty(store: MaildirStore) -> None:
    assert asyncio.run(store.messages("nobody")) == []


# -- clean_stale_tmp ------------------------------------------------------------------------------


def test_clean_stale_tmp_removes_only_old_files(store: MaildirStore, tmp_path: Path) -> None:
    keep_new = store.deliver_sync("alice", MESSAGE)
    store.deliver_sync("bob", MESSAGE)
    now = time.time()
    files = {
        "alice/tmp/old": now - STALE_TMP_SECONDS - 60,
        "alice/tmp/young": now - STALE_TMP_SECONDS + 3600,
        "alice/tmp/fresh": now,
        "bob/tmp/ancient": now - 10 * STALE_TMP_SECONDS,
        f"alice/new/{keep_new}": now - 10 * STALE_TMP_SECONDS,  # new/ is never touched
    }
    for rel, mtime in files.items():
        path = tmp_path / "mail" / rel
        if not path.exists():
            path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))
    assert STALE_TMP_SECONDS == 36 * 3600
    assert store.clean_stale_tmp() == 2
    left = {str(p.relative_to(tmp_path / "mail")) for p in (tmp_path / "mail").rglob("*")
            if p.is_file()}
    assert "alice/tmp/old" not in left and "bob/tmp/ancient" not in left
    assert {"alice/tmp/young", "alice/tmp/fresh", f"alice/new/{keep_new}"} <= left
    assert store.clean_stale_tmp() == 0


def test_clean_stale_tmp_without_mail_dir(store: MaildirStore) -> None:
    assert store.clean_stale_tmp() == 0


# -- ordering -------------------------------------------------------------------------------------


async def test_messages_oldest_first_across_usec_digit_lengths(
    store: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "time", FakeTime(1_700_000_000.000005, 1_700_000_000.000040,
                                                 1_700_000_000.500000))
    for message in (b"first", b"second", b"third"):
        await store.deliver("alice", message)
    assert await store.messages("alice") == [b"first", b"second", b"third"]


# -- stateful comparison with the memory store ----------------------------------------------------


class StoreComparison(RuleBasedStateMachine):
    """MaildirStore and MemoryStore receive the same deliveries and must hold the same mail."""

    ACCOUNTS = ("alice", "bob", "carol.d", "x+y@example.test")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mailkeep-maildir-")
        self.maildir = MaildirStore(Path(self.dir))
        self.memory = MemoryStore()
        self.loop = asyncio.new_event_loop()
        self.delivered = 0

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @rule(account=st.sampled_from(ACCOUNTS), message=st.binary(max_size=200))
    def deliver(self, account: str, message: bytes) -> None:
        name = self.run(self.maildir.deliver(account, message))
        self.run(self.memory.deliver(account, message))
        assert name.endswith(f",S={len(message)},W={len(message)}")
        self.delivered += 1

    @precondition(lambda self: self.delivered > 0)
    @rule(account=st.sampled_from(ACCOUNTS))
    def compare_one(self, account: str) -> None:
        maildir = self.run(self.maildir.messages(account))
        memory = self.run(self.memory.messages(account))
        assert Counter(maildir) == Counter(memory)

    @rule()
    def crash_leftover(self) -> None:
        """A crash left a half-written file in tmp/: readers must not see it."""
        root = Path(self.dir) / "mail" / "alice" / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        (root / f"leftover{self.delivered}").write_bytes(b"partial")

    @invariant()
    def same_mail_everywhere(self) -> None:
        for account in self.ACCOUNTS:
            maildir = self.run(self.maildir.messages(account))
            memory = self.run(self.memory.messages(account))
            assert sorted(maildir) == sorted(memory)
            assert len(maildir) == len(memory)

    def teardown(self) -> None:
        self.maildir.close()
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoreComparison.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
TestStoreComparison = StoreComparison.TestCase


def test_delivery_order_uses_the_counter_within_one_microsecond() -> None:
    assert layout.delivery_order("10.M5P1Q9.h") < layout.delivery_order("10.M5P1Q10.h")
    assert layout.delivery_order("10.M5P1Q1.h") < layout.delivery_order("foreign-name")


def test_clean_stale_tmp_covers_subfolders(store: MaildirStore, tmp_path: Path) -> None:
    folder_tmp = tmp_path / "mail" / "alice" / ".Sent" / "tmp"
    folder_tmp.mkdir(parents=True)
    old = folder_tmp / "leftover"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 40 * 3600,) * 2)
    fresh = folder_tmp / "in-flight"
    fresh.write_bytes(b"partial")
    assert store.clean_stale_tmp() == 1
    assert not old.exists() and fresh.exists()
