"""IMAP storage on Maildir: on-disk formats (Dovecot's), \\Recent, races, RFC 3501 folder rules.
Behaviour shared with the memory store is covered by test_imap_store_stateful.py."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.store import (
    FlagMode,
    FolderExists,
    FolderNotAllowed,
    InvalidName,
    KeywordLimit,
    MailStore,
    NoSuchFolder,
    mutf7,
)
from mailkeep.store.maildir import MaildirStore
from mailkeep.store.maildir import flags as mflags
from mailkeep.store.maildir.folders import next_uidvalidity
from mailkeep.store.memory import MemoryStore
from mailkeep.store.names import folder_name

A = "alice"
MSG = b"Subject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(tmp_path)
    yield s
    s.close()


def root(tmp_path: Path) -> Path:
    return tmp_path / "mail" / A


def test_both_stores_are_imap_stores(tmp_path: Path) -> None:
    s = MaildirStore(tmp_path)
    assert isinstance(s, MailStore)
    assert isinstance(MemoryStore(), MailStore)
    s.close()


@pytest.mark.parametrize(("name", "disk"), [("Entwürfe", ".Entw&APw-rfe"), ("a&b", ".a&-b"),
                                            ("Ünïcode.子", ".&ANw-n&AO8-code.&W1A-"),
                                            ("Archive.2026", ".Archive.2026")])
async def test_folder_directories_named_as_dovecot_does(
        store: MaildirStore, tmp_path: Path, name: str, disk: str) -> None:
    await store.create_folder(A, name)
    path = root(tmp_path) / disk
    assert {"cur", "new", "tmp", "maildirfolder", "dovecot-uidlist"} <= set(os.listdir(path))


@given(st.text())
def test_mutf7_round_trip(name: str) -> None:
    assert mutf7.decode(mutf7.encode(name)) == name
    assert all(0x20 <= ord(c) <= 0x7E for c in mutf7.encode(name))


def test_mutf7_agrees_with_the_imap_parser() -> None:
    proto = pytest.importorskip("mailkeep.proto.imap.mutf7")
    for name in ("Entwürfe", "a&b", "子", "~peter/mail/日本語/台北", "€uro & more"):
        assert proto.encode(name) == mutf7.encode(name)
        assert proto.decode(mutf7.encode(name)) == name


@pytest.mark.parametrize("bad", ["", "a/b", ".x", "x..y", "~x", "a\tb", "a\x7f"])
def test_invalid_folder_names(bad: str) -> None:
    with pytest.raises(InvalidName):
        folder_name(bad)


def test_canonical_names() -> None:
    assert folder_name("inbox") == "INBOX"
    assert folder_name("Inbox.Sub") == "INBOX.Sub"
    assert folder_name("x.", creating=True) == "x"


async def test_folder_rules(store: MaildirStore) -> None:
    await store.create_folder(A, "a.b.c")
    names = {f.name: f for f in await store.list_folders(A)}
    assert not names["a"].selectable and names["a"].has_children  # implied parent
    assert names["a.b.c"].selectable and not names["a.b.c"].has_children
    with pytest.raises(NoSuchFolder):
        await store.delete_folder(A, "a")  # \Noselect: nothing to delete (as Dovecot)
    with pytest.raises(FolderNotAllowed):
        await store.delete_folder(A, "inbox")
    with pytest.raises(FolderExists):
        await store.create_folder(A, "INBOX")
    with pytest.raises(FolderNotAllowed):
        await store.rename_folder(A, "a", "a.b.c.d")
    await store.create_folder(A, "a")
    await store.delete_folder(A, "a")  # its inferiors stay (RFC 3501 §6.3.4)
    assert await store.folder_exists(A, "a.b.c")
    await store.rename_folder(A, "a", "z")
    assert [f.name for f in await store.list_folders(A)] == ["INBOX", "z", "z.b", "z.b.c"]


async def test_uidvalidity_never_repeats(store: MaildirStore) -> None:
    seen = set()
    for _ in range(5):
        await store.create_folder(A, "Box")
        seen.add((await store.snapshot(A, "Box")).uidvalidity)
        await store.delete_folder(A, "Box")
    assert len(seen) == 5


async def test_rename_inbox(store: MaildirStore) -> None:
    await store.create_folder(A, "INBOX.kid")
    await store.append(A, "INBOX", MSG, ["\\Seen", "kw"])
    await store.deliver(A, MSG)
    await store.rename_folder(A, "INBOX", "Old")
    assert (await store.snapshot(A, "INBOX")).messages == ()
    old = await store.snapshot(A, "Old")
    assert [(m.uid, m.flags) for m in old.messages] == [(1, {"\\Seen", "kw"}), (2, frozenset())]
    assert await store.folder_exists(A, "INBOX.kid")


async def test_append_size_date_and_crlf(store: MaildirStore, tmp_path: Path) -> None:
    when = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    uid = await store.append(A, "INBOX", b"Subject: x\n\nlf\n", ["\\Flagged", "$Label1"], when)
    snap = await store.snapshot(A, "INBOX")
    (m,) = snap.messages
    assert (m.uid, m.size, m.internaldate) == (uid, 18, when)
    (name,) = os.listdir(root(tmp_path) / "new")
    assert name.endswith(",S=15,W=18:2,Fa")
    assert (root(tmp_path) / "dovecot-keywords").read_text() == "0 $Label1\n"
    assert await store.read_message(A, "INBOX", m.key) == b"Subject: x\r\n\r\nlf\r\n"
    chunks = [c async for c in store.stream_message(A, "INBOX", m.key)]
    assert b"".join(chunks) == b"Subject: x\r\n\r\nlf\r\n"


async def test_system_flag_changes_keep_keywords_read_only_when_a_file_has_one(
        store: MaildirStore, tmp_path: Path) -> None:
    # dovecot-keywords is read lazily by STORE (only when a file carries a keyword letter):
    # a \Seen change must still keep the keyword, and removing or replacing must drop it.
    await store.append(A, "INBOX", MSG, ["$Label1"])
    await store.append(A, "INBOX", MSG)
    await store.store_flags(A, "INBOX", [1, 2], FlagMode.ADD, ["\\Seen"])
    flags = {m.uid: m.flags for m in (await store.snapshot(A, "INBOX")).messages}
    assert flags == {1: {"\\Seen", "$Label1"}, 2: {"\\Seen"}}
    await store.store_flags(A, "INBOX", [1], FlagMode.REMOVE, ["$Label1"])
    await store.store_flags(A, "INBOX", [2], FlagMode.ADD, ["$Label1"])
    await store.store_flags(A, "INBOX", [2], FlagMode.SET, ["\\Flagged"])
    flags = {m.uid: m.flags for m in (await store.snapshot(A, "INBOX")).messages}
    assert flags == {1: {"\\Seen"}, 2: {"\\Flagged"}}
    assert (root(tmp_path) / "dovecot-keywords").read_text() == "0 $Label1\n"


async def test_keyword_limit(store: MaildirStore) -> None:
    await store.append(A, "INBOX", MSG)
    await store.store_flags(A, "INBOX", [1], FlagMode.ADD, [f"k{i}" for i in range(26)])
    with pytest.raises(KeywordLimit):
        await store.store_flags(A, "INBOX", [1], FlagMode.ADD, ["one-too-many"])


async def test_subscriptions_file_is_dovecot_v2(store: MaildirStore, tmp_path: Path) -> None:
    for name in ("Sent", "Archive.2026", "Entwürfe"):
        await store.subscribe(A, name)
    assert await store.unsubscribe(A, "Sent")
    assert not await store.unsubscribe(A, "Sent")
    data = (root(tmp_path) / "subscriptions").read_bytes()
    assert data == b"V\t2\n\nArchive\t2026\nEntw&APw-rfe\n"


async def test_recent_is_claimed_by_exactly_one_session(tmp_path: Path) -> None:
    stores = [MaildirStore(tmp_path) for _ in range(4)]
    for _ in range(30):
        await stores[0].deliver(A, MSG)
    claims = await asyncio.gather(*(s.claim_recent(A, "INBOX") for s in stores))
    union: set[int] = set()
    for c in claims:
        assert not (union & c)
        union |= c
    assert union == set(range(1, 31))
    assert (await stores[0].snapshot(A, "INBOX")).unclaimed == frozenset()
    for s in stores:
        s.close()


async def test_message_renamed_by_another_session_is_found(
        store: MaildirStore, tmp_path: Path) -> None:
    await store.append(A, "INBOX", MSG)
    snap = await store.snapshot(A, "INBOX")
    (name,) = os.listdir(root(tmp_path) / "new")
    os.rename(root(tmp_path) / "new" / name, root(tmp_path) / "cur" / (name + ":2,S"))
    assert await store.read_message(A, "INBOX", snap.messages[0].key) == MSG
    new = await store.store_flags(A, "INBOX", [1], FlagMode.ADD, ["\\Deleted"])
    assert new == {1: {"\\Seen", "\\Deleted"}}
    assert await store.expunge(A, "INBOX", [2]) == []
    assert await store.expunge(A, "INBOX", [1]) == [1]


async def test_concurrent_flag_changes_lose_nothing(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path)
    await store.append(A, "INBOX", MSG)
    flags = ["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "a1", "b2"]

    def add(flag: str) -> None:
        other = MaildirStore(tmp_path)
        asyncio.run(other.store_flags(A, "INBOX", [1], FlagMode.ADD, [flag]))
        other.close()

    threads = [threading.Thread(target=add, args=(f,)) for f in flags]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (m,) = (await store.snapshot(A, "INBOX")).messages
    assert m.flags == set(flags)
    store.close()


async def test_copy_links_and_sets_recent(store: MaildirStore, tmp_path: Path) -> None:
    await store.create_folder(A, "Dst")
    await store.append(A, "INBOX", MSG, ["\\Seen", "kw"])
    await store.claim_recent(A, "INBOX")
    assert await store.copy(A, "INBOX", [1, 7], "Dst") == {1: 1}
    snap = await store.snapshot(A, "Dst")
    assert snap.unclaimed == {1} and snap.messages[0].flags == {"\\Seen", "kw"}
    src = next((root(tmp_path) / "cur").iterdir())
    assert src.stat().st_nlink == 2
    with pytest.raises(NoSuchFolder):
        await store.copy(A, "INBOX", [1], "Nowhere")


def test_concurrent_uidvalidity_claims_are_unique(tmp_path: Path) -> None:
    """Regression: a writer's temp file once matched the marker glob and was stolen."""
    values: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claim() -> None:
        for _ in range(25):
            try:
                v = next_uidvalidity(tmp_path)
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                values.append(v)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(values) == 200 and len(set(values)) == 200


def test_keyword_allocated_concurrently_survives_a_stale_flag_change(
        store: MaildirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a session whose dovecot-keywords table predated another session's
    allocation dropped that keyword's letter from the file it renamed."""
    uid = asyncio.run(store.append(A, "INBOX", MSG, ["K0"]))
    asyncio.run(store.store_flags(A, "INBOX", [uid], FlagMode.ADD, ["K1"]))  # letter b
    real_allocate = mflags.allocate
    monkeypatch.setattr(mflags, "allocate",
                        lambda root, names: {i: n for i, n in real_allocate(root, names).items()
                                             if n != "K1"})  # as read before K1 existed
    flags = asyncio.run(store.store_flags(A, "INBOX", [uid], FlagMode.ADD, ["\\Seen"]))
    assert flags[uid] == {"K0", "K1", "\\Seen"}
