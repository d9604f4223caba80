"""Random IMAP storage histories against the Maildir store and the memory oracle: after every
step both agree on folders, UIDs, flags, sizes, internal dates, \\Recent and subscriptions."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mailkeep.store import FlagMode, NewMessage, StoreRefusal
from mailkeep.store.maildir import MaildirStore
from mailkeep.store.memory import MemoryStore

ACCOUNT = "alice"
FOLDERS = st.sampled_from(["INBOX", "inbox", "Sent", "Archive", "Archive.2026", "Entwürfe",
                           "Entwürfe.子", "a&b", "Archive.", ".bad", "x..y", "INBOX.Sub"])
FLAGS = st.lists(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft",
                                  "\\Recent", "\\seen", "$Label1", "Junk", "NonJunk", "k1"]),
                 max_size=4)
# Enough distinct keywords to run a folder out of its 26 letters.
MANY_KEYWORDS = st.lists(st.sampled_from([f"kw{i}" for i in range(30)]), min_size=5,
                         max_size=12)
# Folders the initial state creates: message operations mostly land somewhere real.
LIVE = st.one_of(st.sampled_from(["INBOX", "Sent", "Archive.2026"]), FOLDERS)
BODIES = st.sampled_from([b"Subject: a\r\n\r\nbody\r\n", b"Subject: lf\n\nbare LF\n", b"",
                          b"x" * 300, "Subject: ü\r\n\r\nü\r\n".encode()])
UIDS = st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=4)
DATES = st.one_of(st.none(), st.datetimes(min_value=datetime(1990, 1, 1),
                                          max_value=datetime(2030, 1, 1),
                                          timezones=st.just(UTC)))


class ImapStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="imapstore-"))
        self.maildir = MaildirStore(self.dir)
        self.memory = MemoryStore()
        self.loop = asyncio.new_event_loop()
        self.recent_md: dict[str, set[int]] = {}
        self.recent_mem: dict[str, set[int]] = {}

    def teardown(self) -> None:
        self.maildir.close()
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def both(self, method: str, *args: Any) -> Any:
        """Call both stores; they must both succeed alike or refuse with the same error."""
        results = []
        for store in (self.maildir, self.memory):
            try:
                results.append(("ok", self.loop.run_until_complete(
                    getattr(store, method)(ACCOUNT, *args))))
            except StoreRefusal as exc:
                results.append(("refused", type(exc).__name__))
        (kind_a, a), (kind_b, b) = results
        assert kind_a == kind_b, (method, args, results)
        if kind_a == "refused":
            assert a == b, (method, args, results)
            return None
        return a, b

    @initialize(bodies=st.lists(BODIES, min_size=1, max_size=4))
    def populate(self, bodies: list[bytes]) -> None:
        for folder in ("Sent", "Archive.2026"):
            self.both("create_folder", folder)
        for i, body in enumerate(bodies):
            for folder in ("INBOX", "Sent"):
                self.both("append", folder, body, ["\\Seen"] if i % 2 else [],
                          datetime(2023, 1, 1 + i, tzinfo=UTC))

    @rule(folder=LIVE, uids=UIDS, keywords=MANY_KEYWORDS)
    def many_keywords(self, folder: str, uids: list[int], keywords: list[str]) -> None:
        self.both("store_flags", folder, uids, FlagMode.ADD, keywords)

    @rule(folder=FOLDERS)
    def create(self, folder: str) -> None:
        out = self.both("create_folder", folder)
        if out:
            assert out[0] == out[1]

    @rule(folder=FOLDERS)
    def delete(self, folder: str) -> None:
        self.both("delete_folder", folder)

    @rule(old=FOLDERS, new=FOLDERS)
    def rename(self, old: str, new: str) -> None:
        self.both("rename_folder", old, new)

    @rule(folder=FOLDERS, subscribe=st.booleans())
    def subscription(self, folder: str, subscribe: bool) -> None:
        out = self.both("subscribe" if subscribe else "unsubscribe", folder)
        if out:
            assert out[0] == out[1]

    @rule(folder=LIVE, body=BODIES, flags=FLAGS, date=DATES)
    def append(self, folder: str, body: bytes, flags: list[str], date: datetime | None) -> None:
        out = self.both("append", folder, body, flags, date or datetime(2024, 5, 6, tzinfo=UTC))
        if out:
            assert out[0] == out[1]

    @rule(folder=LIVE, uids=UIDS, mode=st.sampled_from(FlagMode), flags=FLAGS)
    def store(self, folder: str, uids: list[int], mode: FlagMode, flags: list[str]) -> None:
        out = self.both("store_flags", folder, uids, mode, flags)
        if out:
            assert out[0] == out[1]

    @rule(src=LIVE, uids=UIDS, dst=LIVE)
    def copy(self, src: str, uids: list[int], dst: str) -> None:
        out = self.both("copy", src, uids, dst)
        if out:
            assert out[0] == out[1]

    @rule(src=LIVE, uids=UIDS, dst=LIVE)
    def move(self, src: str, uids: list[int], dst: str) -> None:
        out = self.both("move", src, uids, dst)
        if out:
            assert out[0] == out[1]

    @rule(folder=LIVE, messages=st.lists(st.tuples(BODIES, FLAGS, DATES), min_size=1,
                                         max_size=3))
    def append_many(self, folder: str,
                    messages: list[tuple[bytes, list[str], datetime | None]]) -> None:
        out = self.both("append_many", folder, [
            NewMessage(b, tuple(f), d or datetime(2024, 5, 6, tzinfo=UTC))
            for b, f, d in messages])
        if out:  # the two stores' UIDVALIDITY differ (each picks its own)
            assert out[0].uids == out[1].uids

    @rule(folder=LIVE, uids=st.one_of(st.none(), UIDS))
    def expunge(self, folder: str, uids: list[int] | None) -> None:
        out = self.both("expunge", folder, uids)
        if out:
            assert out[0] == out[1]

    @rule(folder=LIVE, uids=UIDS)
    def delete_messages(self, folder: str, uids: list[int]) -> None:
        self.both("store_flags", folder, uids, FlagMode.ADD, ["\\Deleted"])
        self.both("expunge", folder, uids[:1] or None)

    @rule(folder=LIVE)
    def claim(self, folder: str) -> None:
        out = self.both("claim_recent", folder)
        if out:
            assert out[0] == out[1]

    @invariant()
    def agree(self) -> None:
        out = self.both("list_folders")
        assert out is not None
        folders_md, folders_mem = out
        assert folders_md == folders_mem
        subs = self.both("subscriptions")
        assert subs is not None and subs[0] == subs[1]
        usage = self.both("usage")
        assert usage is not None and usage[0] == usage[1]
        for info in folders_md:
            if not info.selectable:
                continue
            snaps = self.both("snapshot", info.name)
            assert snaps is not None
            md, mem = snaps
            assert md.uidnext == mem.uidnext, info.name
            assert md.unclaimed == mem.unclaimed, info.name
            assert [(m.uid, m.flags, m.size, m.internaldate) for m in md.messages] == \
                [(m.uid, m.flags, m.size, m.internaldate) for m in mem.messages], info.name
            for m_md, m_mem in zip(md.messages[:2], mem.messages[:2], strict=False):
                data_md = self.loop.run_until_complete(
                    self.maildir.read_message(ACCOUNT, info.name, m_md.key))
                data_mem = self.loop.run_until_complete(
                    self.memory.read_message(ACCOUNT, info.name, m_mem.key))
                assert data_md == data_mem


ImapStoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                              deadline=None)
TestImapStore = ImapStoreMachine.TestCase
