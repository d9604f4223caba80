"""MemoryStore: dictionaries, no durability; behaviour every real store must match.

It is the oracle of the stateful tests: POP3's maildrop view and IMAP's folders share one
INBOX, as they do on disk. Folder and flag rules come from store/names.py, like the Maildir
store's; Maildir-specific limits are mirrored (26 keywords per folder, allocated for good).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailkeep.store.base import (
    Appended,
    FlagMode,
    FolderExists,
    FolderInfo,
    FolderNotAllowed,
    FolderSnapshot,
    KeywordLimit,
    Maildrop,
    MessageGone,
    MessageInfo,
    MessageRecord,
    NewMessage,
    NoSuchFolder,
    Usage,
    to_crlf,
)
from mailkeep.store.changes import Change, ChangeFeed, ChangeKind, Watch, acting_session
from mailkeep.store.names import (
    INBOX,
    MAX_KEYWORDS,
    flag_set,
    folder_name,
    is_inferior,
    keywords_of,
    parent_names,
)

# Chunk size of read(): small, so streaming consumers are exercised across boundaries.
READ_CHUNK = 4096
SEEN = "\\Seen"
DELETED = "\\Deleted"


@dataclass
class _Message:
    uid: int
    data: bytes
    flags: frozenset[str]
    internaldate: datetime
    recent: bool = True  # not yet claimed by any session


@dataclass
class _Box:
    uidvalidity: int
    next_uid: int = 1
    messages: dict[str, _Message] = field(default_factory=dict)  # key -> message, UID order
    keywords: set[str] = field(default_factory=set)  # like dovecot-keywords: never shrinks
    # RFC 7162, as the Maildir sidecar does it: a snapshot that sees changes bumps MODSEQ.
    highestmodseq: int = 1
    modseq_of: dict[int, tuple[int, frozenset[str]]] = field(default_factory=dict)
    expunged: list[tuple[int, int]] = field(default_factory=list)

    def track_modseqs(self) -> dict[int, int]:
        current = {m.uid: m.flags for m in self.messages.values()}
        changed = [u for u, f in current.items()
                   if u not in self.modseq_of or self.modseq_of[u][1] != f]
        gone = [u for u in self.modseq_of if u not in current]
        if changed or gone:
            self.highestmodseq += 1
            for u in changed:
                self.modseq_of[u] = (self.highestmodseq, current[u])
            for u in gone:
                del self.modseq_of[u]
                self.expunged.append((self.highestmodseq, u))
        return {u: m for u, (m, _) in self.modseq_of.items()}

    def add(self, key: str, msg: _Message) -> int:
        msg.uid = self.next_uid
        self.next_uid += 1
        self.messages[key] = msg
        return msg.uid

    def allocate(self, names: Iterable[str]) -> None:
        wanted = set(names) | self.keywords
        if len(wanted) > MAX_KEYWORDS:
            raise KeywordLimit(f"too many keywords (a folder holds {MAX_KEYWORDS})")
        self.keywords = wanted

    def by_uid(self) -> dict[int, str]:
        return {m.uid: k for k, m in self.messages.items()}


class _MemoryLock:
    def __init__(self, store: MemoryStore, mailbox: str) -> None:
        self.store = store
        self.mailbox = mailbox

    async def refresh(self) -> None:
        return None

    async def release(self) -> None:
        self.store._locked.discard(self.mailbox)


def crlf_size(data: bytes) -> int:
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def _now() -> datetime:
    return datetime.fromtimestamp(int(datetime.now(UTC).timestamp()), UTC)


class MemoryStore:
    def __init__(self, uidvalidity: int = 1) -> None:
        self._accounts: dict[str, dict[str, _Box]] = {}
        self._subscriptions: dict[str, list[str]] = {}
        self._ids = itertools.count(1)
        self._uidvalidity = uidvalidity
        self._validities = itertools.count(uidvalidity + 1)
        self._locked: set[str] = set()
        self._feed: ChangeFeed | None = None
        # RFC 6154: account -> folder -> special uses given by clients; provisioned accounts
        self._uses: dict[str, dict[str, tuple[str, ...]]] = {}
        self._provisioned: set[str] = set()

    def _folders(self, account: str) -> dict[str, _Box]:
        return self._accounts.setdefault(account, {INBOX: _Box(self._uidvalidity)})

    def _box(self, mailbox: str) -> _Box:
        return self._folders(mailbox)[INBOX]

    def _open(self, account: str, folder: str) -> _Box:
        box = self._folders(account).get(folder_name(folder))
        if box is None:
            raise NoSuchFolder(f"mailbox {folder} does not exist")
        return box

    def _key(self) -> str:
        return f"mem-{next(self._ids)}"

    # -- MailStore (POP3 and delivery) -----------------------------------------------

    async def deliver(self, mailbox: str, message: bytes) -> str:
        name = self._key()
        self._box(mailbox).add(name, _Message(0, bytes(message), frozenset(), _now()))
        self._publish(mailbox, INBOX, ChangeKind.NEW)
        return name

    async def deliver_once(self, account: str, message: bytes, base: str,
                           check: bool = False) -> bool:
        box = self._box(account)
        if check and base in box.messages:
            return False
        box.add(base, _Message(0, bytes(message), frozenset(), _now()))
        self._publish(account, INBOX, ChangeKind.NEW)
        return True

    # -- the change feed (in-process only: nothing else can change this store) ----------

    def quiet(self, account: str, folder: str) -> bool:
        return False  # (a look at memory costs next to nothing)

    def watch(self, account: str, folder: str, session: int = 0) -> Watch:
        if self._feed is None:
            self._feed = ChangeFeed()
        return self._feed.watch(account, folder_name(folder), session)

    def _publish(self, account: str, folder: str | None, kind: ChangeKind) -> None:
        if self._feed is not None:
            self._feed.publish(Change(account, folder, kind, acting_session.get()))

    async def messages(self, mailbox: str) -> list[bytes]:
        return [m.data for m in self._box(mailbox).messages.values()]

    async def lock_maildrop(self, mailbox: str) -> _MemoryLock | None:
        if mailbox in self._locked:
            return None
        self._locked.add(mailbox)
        return _MemoryLock(self, mailbox)

    async def maildrop(self, mailbox: str) -> Maildrop:
        box = self._box(mailbox)
        return Maildrop(box.uidvalidity, tuple(
            MessageInfo(uid=m.uid, key=key, size=crlf_size(m.data), seen=SEEN in m.flags)
            for key, m in box.messages.items()))

    async def read(self, mailbox: str, key: str) -> AsyncIterator[bytes]:
        found = self._box(mailbox).messages.get(key)
        if found is None:
            raise MessageGone(key)
        data = found.data
        for start in range(0, len(data), READ_CHUNK):
            yield data[start:start + READ_CHUNK]

    async def mark_seen(self, mailbox: str, keys: list[str]) -> None:
        box = self._box(mailbox)
        for key in keys:
            if key in box.messages:
                msg = box.messages[key]
                msg.flags |= {SEEN}
                msg.recent = False  # Maildir: new/NAME -> cur/NAME:2,S
        self._publish(mailbox, INBOX, ChangeKind.FLAGS)

    async def delete(self, mailbox: str, keys: list[str]) -> int:
        box = self._box(mailbox)
        removed = sum(box.messages.pop(key, None) is not None for key in keys)
        self._publish(mailbox, INBOX, ChangeKind.EXPUNGE)
        return removed

    # -- IMAP: folders ------------------------------------------------------------

    async def list_folders(self, account: str) -> list[FolderInfo]:
        real = set(self._folders(account)) - {INBOX}
        implied = {p for name in real for p in parent_names(name)} - real - {INBOX}
        names = real | implied
        out = [FolderInfo(INBOX, True, any(is_inferior(n, INBOX) for n in names))]
        for name in sorted(names):
            out.append(FolderInfo(name, name in real, any(is_inferior(n, name) for n in names)))
        return out

    async def folder_exists(self, account: str, folder: str) -> bool:
        return folder_name(folder) in self._folders(account)

    async def create_folder(self, account: str, folder: str) -> str:
        name = folder_name(folder, creating=True)
        folders = self._folders(account)
        if name in folders:
            raise FolderExists(f"mailbox {name} exists")
        folders[name] = _Box(next(self._validities))
        self._publish(account, None, ChangeKind.FOLDERS)
        return name

    async def delete_folder(self, account: str, folder: str) -> None:
        name = folder_name(folder)
        if name == INBOX:
            raise FolderNotAllowed("INBOX cannot be deleted")
        if self._folders(account).pop(name, None) is None:
            raise NoSuchFolder(f"mailbox {name} does not exist")
        self._uses.get(account, {}).pop(name, None)
        self._publish(account, None, ChangeKind.FOLDERS)

    async def rename_folder(self, account: str, old: str, new: str) -> None:
        old = folder_name(old)
        folders = self._folders(account)
        if old == INBOX:
            created = await self.create_folder(account, new)
            inbox, dst = folders[INBOX], folders[created]
            dst.allocate(k for m in inbox.messages.values() for k in keywords_of(m.flags))
            for key, msg in list(inbox.messages.items()):
                dst.add(key, msg)
            inbox.messages.clear()
            return
        new = folder_name(new, creating=True)
        if new == INBOX:
            raise FolderExists("INBOX exists")
        if new == old or is_inferior(new, old):
            raise FolderNotAllowed("cannot rename a mailbox into itself")
        moving = sorted(n for n in folders if n != INBOX and (n == old or is_inferior(n, old)))
        if not moving:
            raise NoSuchFolder(f"mailbox {old} does not exist")
        targets = [new + n[len(old):] for n in moving]
        if any(t in folders for t in targets) or new in folders:
            raise FolderExists(f"mailbox {new} exists")
        for target in targets:
            folder_name(target)
        for src, dst_name in zip(moving, targets, strict=True):
            folders[dst_name] = folders.pop(src)
        uses = self._uses.get(account, {})
        for name in [n for n in uses if n == old or is_inferior(n, old)]:
            uses[new + name[len(old):]] = uses.pop(name)
        self._publish(account, None, ChangeKind.FOLDERS)

    async def subscriptions(self, account: str) -> list[str]:
        return list(self._subscriptions.get(account, []))

    async def subscribe(self, account: str, folder: str) -> None:
        name = folder_name(folder)
        subs = self._subscriptions.setdefault(account, [])
        if name not in subs:
            subs.append(name)

    async def unsubscribe(self, account: str, folder: str) -> bool:
        name = folder_name(folder)
        subs = self._subscriptions.setdefault(account, [])
        if name not in subs:
            return False
        subs.remove(name)
        return True

    # -- IMAP: messages -----------------------------------------------------------

    async def snapshot(self, account: str, folder: str) -> FolderSnapshot:
        box = self._open(account, folder)
        records = tuple(MessageRecord(m.uid, key, m.flags, m.internaldate, crlf_size(m.data))
                        for key, m in box.messages.items())
        unclaimed = frozenset(m.uid for m in box.messages.values() if m.recent)
        modseqs = box.track_modseqs()
        return FolderSnapshot(box.uidvalidity, box.next_uid, records, unclaimed,
                              box.highestmodseq, modseqs)

    async def vanished_since(self, account: str, folder: str,
                             modseq: int) -> tuple[list[int], bool]:
        box = self._open(account, folder)
        box.track_modseqs()
        return sorted({u for m, u in box.expunged if m > modseq}), True

    async def claim_recent(self, account: str, folder: str) -> set[int]:
        box = self._open(account, folder)
        claimed = {m.uid for m in box.messages.values() if m.recent}
        for m in box.messages.values():
            m.recent = False
        return claimed

    async def uidvalidity(self, account: str, folder: str) -> int:
        return self._open(account, folder).uidvalidity

    async def append(self, account: str, folder: str, data: bytes,
                     flags: Iterable[str] = (), internaldate: datetime | None = None) -> int:
        return (await self.append_many(account, folder,
                                       [NewMessage(data, tuple(flags), internaldate)])).uids[0]

    async def append_many(self, account: str, folder: str,
                          messages: Sequence[NewMessage]) -> Appended:
        wanted = [flag_set(m.flags) for m in messages]
        box = self._open(account, folder)
        box.allocate(k for flags in wanted for k in keywords_of(flags))
        uids: list[int] = []
        for message, flags in zip(messages, wanted, strict=True):
            when = _now() if message.internaldate is None else \
                datetime.fromtimestamp(int(message.internaldate.timestamp()), UTC)
            uids.append(box.add(self._key(), _Message(0, bytes(message.data), flags, when)))
        self._publish(account, folder_name(folder), ChangeKind.NEW)
        return Appended(box.uidvalidity, tuple(uids))

    async def store_flags(self, account: str, folder: str, uids: Iterable[int],
                          mode: FlagMode, flags: Iterable[str]) -> dict[int, frozenset[str]]:
        given = flag_set(flags)
        box = self._open(account, folder)
        if mode is not FlagMode.REMOVE:
            box.allocate(keywords_of(given))
        by_uid = box.by_uid()
        result: dict[int, frozenset[str]] = {}
        for uid in sorted(set(uids)):
            key = by_uid.get(uid)
            if key is None:
                continue
            msg = box.messages[key]
            if mode is FlagMode.SET:
                msg.flags = given
            elif mode is FlagMode.ADD:
                msg.flags = msg.flags | given
            else:
                msg.flags = msg.flags - given
            result[uid] = msg.flags
        self._publish(account, folder_name(folder), ChangeKind.FLAGS)
        return result

    async def copy(self, account: str, src: str, uids: Iterable[int],
                   dst: str) -> dict[int, int]:
        source = self._open(account, src)
        target = self._open(account, dst)
        by_uid = source.by_uid()
        wanted = [u for u in sorted(set(uids)) if u in by_uid]
        target.allocate(k for u in wanted for k in keywords_of(source.messages[by_uid[u]].flags))
        mapping: dict[int, int] = {}
        for uid in wanted:
            msg = source.messages[by_uid[uid]]
            mapping[uid] = target.add(self._key(), _Message(0, msg.data, msg.flags,
                                                            msg.internaldate))
        self._publish(account, folder_name(dst), ChangeKind.NEW)
        return mapping

    async def expunge(self, account: str, folder: str,
                      uids: Iterable[int] | None = None) -> list[int]:
        box = self._open(account, folder)
        limit = None if uids is None else set(uids)
        removed: list[int] = []
        for key, msg in list(box.messages.items()):
            if DELETED in msg.flags and (limit is None or msg.uid in limit):
                del box.messages[key]
                removed.append(msg.uid)
        self._publish(account, folder_name(folder), ChangeKind.EXPUNGE)
        return removed

    async def move(self, account: str, src: str, uids: Iterable[int],
                   dst: str) -> dict[int, int]:
        """Like the Maildir store: the message itself moves (flags, date and \\Recent kept)
        and gets the next UID of the target, in source UID order."""
        source = self._open(account, src)
        target = self._open(account, dst)
        by_uid = source.by_uid()
        wanted = [u for u in sorted(set(uids)) if u in by_uid]
        target.allocate(k for u in wanted for k in keywords_of(source.messages[by_uid[u]].flags))
        mapping: dict[int, int] = {}
        for uid in wanted:
            msg = source.messages.pop(by_uid[uid])
            key = self._key() if source is target else by_uid[uid]
            mapping[uid] = target.add(key, msg)
        self._publish(account, folder_name(src), ChangeKind.EXPUNGE)
        self._publish(account, folder_name(dst), ChangeKind.NEW)
        return mapping

    async def usage(self, account: str) -> Usage:
        boxes = self._folders(account).values()
        return Usage(sum(len(m.data) for b in boxes for m in b.messages.values()),
                     sum(len(b.messages) for b in boxes))

    async def special_uses(self, account: str) -> dict[str, tuple[str, ...]]:
        return dict(self._uses.get(account, {}))

    async def set_special_use(self, account: str, folder: str, uses: Iterable[str]) -> None:
        name = folder_name(folder)
        if name not in self._folders(account):
            raise NoSuchFolder(f"mailbox {folder} does not exist")
        wanted = tuple(dict.fromkeys(uses))
        table = self._uses.setdefault(account, {})
        if wanted:
            table[name] = wanted
        else:
            table.pop(name, None)
        self._publish(account, None, ChangeKind.FOLDERS)

    async def claim_provisioning(self, account: str) -> bool:
        if account in self._provisioned:
            return False
        self._provisioned.add(account)
        return True

    def _find(self, account: str, folder: str, key: str) -> bytes:
        box = self._folders(account).get(folder_name(folder))
        msg = None if box is None else box.messages.get(key)
        if msg is None:
            raise MessageGone(key)
        return msg.data

    async def read_message(self, account: str, folder: str, key: str) -> bytes:
        return to_crlf(self._find(account, folder, key))

    async def read_messages(self, account: str, folder: str,
                            keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            try:
                out.append(await self.read_message(account, folder, key))
            except MessageGone:
                out.append(None)
        return out

    async def stream_message(self, account: str, folder: str, key: str) -> AsyncIterator[bytes]:
        data = to_crlf(self._find(account, folder, key))
        for start in range(0, len(data), READ_CHUNK):
            yield data[start:start + READ_CHUNK]
