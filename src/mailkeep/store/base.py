"""The MailStore protocol: what the protocol drivers may ask of storage."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mailkeep.store.changes import Watch


class DeliveryError(Exception):
    """Delivery failed on our side (disk full, permissions): a temporary 4xx for the client."""


class DiskFull(DeliveryError):
    """Delivery failed for lack of space (ENOSPC, or EDQUOT on the filesystem): SMTP
    `452 4.3.1 Insufficient system storage` (RFC 5321 §4.2.3 452; RFC 3463 §3.4 X.3.1
    "Mail system full"), so the client keeps the message and tries again later."""


class StoreError(Exception):
    """Reading or changing a mailbox failed on our side: a temporary error for the client."""


class StoreFull(StoreError):
    """A change could not be stored for lack of space (ENOSPC / EDQUOT); nothing of it shows.
    Reading, and removing messages to make room, still work.

    IMAP answers NO [UNAVAILABLE] (RFC 5530 §3: "temporary failure because a subsystem is
    down"): the disk is full for the whole server, not this user over a quota, which is what
    [OVERQUOTA] ("the user would be over quota after the operation") tells a client; the same
    line SMTP draws between 4.3.1 "mail system full" and 4.2.2 "mailbox full". (Dovecot
    answers [OVERQUOTA] on ENOSPC.)"""


class MessageGone(StoreError):
    """The message was removed by someone else (another client, an administrator)."""


class StoreRefusal(Exception):
    """The request is refused, not failed: the client gets a NO with this text."""


class InvalidName(StoreRefusal):
    """A folder name, flag or keyword the store will not accept."""


class NoSuchFolder(StoreRefusal):
    """The folder does not exist (RFC 3501: [TRYCREATE] for APPEND and COPY)."""


class FolderExists(StoreRefusal):
    """CREATE or RENAME onto a name that exists."""


class FolderNotAllowed(StoreRefusal):
    """DELETE INBOX, RENAME into itself, and the like."""


class KeywordLimit(StoreRefusal):
    """More keywords than the folder can hold (Dovecot Maildir: 26, letters a..z)."""


class OverQuota(StoreRefusal):
    """The account would be over its quota after the change (RFC 9208 §5: NO [OVERQUOTA]).
    Nothing was stored."""


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of a maildrop, known without reading its body."""

    uid: int
    key: str      # opaque and stable: the handle for read / mark_seen / delete
    size: int     # octets with CRLF line ends (RFC 1939 §5 LIST: the "exact size")
    seen: bool


@dataclass(frozen=True, slots=True)
class Maildrop:
    """The INBOX of one account at one moment, in UID order."""

    uidvalidity: int
    messages: tuple[MessageInfo, ...]


class MaildropLock(Protocol):
    """An exclusive hold on one maildrop (RFC 1939 §4: the POP3 session's exclusive lock)."""

    async def refresh(self) -> None: ...

    async def release(self) -> None: ...


def to_crlf(chunk: bytes, after_cr: bool = False) -> bytes:
    """Bare LF -> CRLF (Dovecot stores LF by default; IMAP sizes and literals are CRLF).
    `after_cr`: the previous chunk ended with CR, so a leading LF completes a CRLF."""
    if b"\n" not in chunk:
        return chunk
    out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if after_cr and chunk.startswith(b"\n"):
        out = out[1:]
    return out


# -- IMAP: folders, per-message state, mutations ----------------------------------------


class FlagMode(enum.Enum):
    """RFC 3501 §6.4.6 STORE: FLAGS (replace), +FLAGS (add), -FLAGS (remove)."""

    SET = "set"
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """One LIST entry. `selectable` is False for a name that only exists because it has
    inferiors (Maildir++ has no directory for it: LIST says \\Noselect)."""

    name: str             # decoded, "." as hierarchy delimiter, "INBOX" for the root
    selectable: bool
    has_children: bool


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message as SELECT / FETCH FLAGS UID RFC822.SIZE INTERNALDATE need it; the body
    is never read to build one."""

    uid: int
    key: str                    # stable handle for read_message (Maildir: filename base)
    flags: frozenset[str]       # system flags ("\\Seen") and keywords; never \\Recent
    internaldate: datetime      # timezone-aware (UTC), whole seconds
    size: int                   # RFC822.SIZE: octets with CRLF line ends


@dataclass(frozen=True, slots=True)
class FolderSnapshot:
    """A folder at one moment, in UID order."""

    uidvalidity: int
    uidnext: int
    messages: tuple[MessageRecord, ...]
    # UIDs that no session has claimed as \\Recent yet (STATUS RECENT of an unselected folder)
    unclaimed: frozenset[int] = field(default_factory=frozenset)
    # RFC 7162: the folder's HIGHESTMODSEQ and each message's MODSEQ (0: not tracked).
    highestmodseq: int = 0
    modseqs: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message of an APPEND (RFC 3502 MULTIAPPEND: several in one command)."""

    data: bytes
    flags: tuple[str, ...] = ()
    internaldate: datetime | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    """What an APPEND stored: the folder's UIDVALIDITY at that moment and the new UIDs in
    order (RFC 4315 APPENDUID carries both; read in the same step as the append, so a folder
    recreated just after cannot pair new UIDs with another UIDVALIDITY)."""

    uidvalidity: int
    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """What an account's messages take up, every folder together (RFC 9208 resources STORAGE
    and MESSAGE). Messages flagged \\Deleted count until they are expunged."""

    octets: int
    messages: int


@runtime_checkable
class MailStore(Protocol):
    """What every door asks of storage, keyed by account and folder. Folder names are
    decoded str ("INBOX", "Entwürfe", "Archive.2026"); refusals raise StoreRefusal
    subclasses, failures StoreError (DeliveryError for deliveries).

    Delivery and POP3 work on the INBOX; IMAP on any folder. Every change is published on
    the change feed (store/changes.py): watch() follows one folder."""

    # delivery (the spool's runner)
    async def deliver(self, account: str, message: bytes) -> str:
        """Store one message in the account's INBOX, durably, before returning; its unique
        name. DeliveryError (DiskFull when there is no space)."""
        ...

    async def deliver_once(self, account: str, message: bytes, base: str,
                           check: bool = False) -> bool:
        """Deliver under a name fixed by the caller; with `check`, a message of that name
        already there means it was delivered (False, nothing written)."""
        ...

    async def messages(self, account: str) -> list[bytes]:
        """Every message in the INBOX, oldest first (for tests and tools)."""
        ...

    # POP3 (RFC 1939): the INBOX as a maildrop
    async def lock_maildrop(self, account: str) -> MaildropLock | None:
        """Take the exclusive maildrop lock, or None if another session holds it."""
        ...

    async def maildrop(self, account: str) -> Maildrop:
        """The INBOX listing with UIDs and sizes; never reads message bodies. StoreError."""
        ...

    def read(self, account: str, key: str) -> AsyncIterator[bytes]:
        """An INBOX message in chunks (never all at once). MessageGone / StoreError."""
        ...

    async def mark_seen(self, account: str, keys: list[str]) -> None:
        """Set \\Seen (Maildir: new/NAME -> cur/NAME:2,S). Gone messages are skipped."""
        ...

    async def delete(self, account: str, keys: list[str]) -> int:
        """Remove INBOX messages durably; how many were removed (gone ones are not
        errors)."""
        ...

    # IMAP (RFC 3501): folders and messages
    """What an IMAP session asks of storage. Folder names are decoded str ("Entwürfe",
    "Archive.2026"); refusals raise StoreRefusal subclasses, failures StoreError."""

    # folders (RFC 3501 §6.3)
    async def list_folders(self, account: str) -> list[FolderInfo]: ...

    async def folder_exists(self, account: str, folder: str) -> bool: ...

    async def create_folder(self, account: str, folder: str) -> str: ...

    async def delete_folder(self, account: str, folder: str) -> None: ...

    async def rename_folder(self, account: str, old: str, new: str) -> None: ...

    async def subscriptions(self, account: str) -> list[str]: ...

    async def subscribe(self, account: str, folder: str) -> None: ...

    async def unsubscribe(self, account: str, folder: str) -> bool: ...

    # messages (RFC 3501 §6.3.1 SELECT, §6.4)
    async def snapshot(self, account: str, folder: str) -> FolderSnapshot: ...

    async def claim_recent(self, account: str, folder: str) -> set[int]: ...

    async def uidvalidity(self, account: str, folder: str) -> int:
        """The folder's UIDVALIDITY alone (RFC 4315 APPENDUID/COPYUID), cheaper than a
        snapshot: the index header is read, the message files are not listed."""
        ...

    async def append(self, account: str, folder: str, data: bytes,
                     flags: Iterable[str] = (), internaldate: datetime | None = None) -> int:
        ...

    async def store_flags(self, account: str, folder: str, uids: Iterable[int],
                          mode: FlagMode, flags: Iterable[str]) -> dict[int, frozenset[str]]:
        ...

    async def copy(self, account: str, src: str, uids: Iterable[int],
                   dst: str) -> dict[int, int]: ...

    async def expunge(self, account: str, folder: str,
                      uids: Iterable[int] | None = None) -> list[int]: ...

    async def move(self, account: str, src: str, uids: Iterable[int],
                   dst: str) -> dict[int, int]:
        """RFC 6851 MOVE: src UID -> new dst UID for the messages moved (COPYUID), each
        message in exactly one of the two folders at every moment, flags and internal date
        kept. Messages already gone are left out. NoSuchFolder."""
        ...

    async def append_many(self, account: str, folder: str,
                          messages: Sequence[NewMessage]) -> Appended:
        """RFC 3502 MULTIAPPEND: store every message or none; their UIDs, in order."""
        ...

    async def usage(self, account: str) -> Usage:
        """The account's storage use over all folders (RFC 9208 quota)."""
        ...

    # RFC 6154 special-use folders the client marked (CREATE-SPECIAL-USE)
    async def special_uses(self, account: str) -> dict[str, tuple[str, ...]]:
        """Folder -> the special uses recorded for it ("\\Sent", ...); kept across RENAME
        and dropped by DELETE. Folders named like a special use are not listed here."""
        ...

    async def set_special_use(self, account: str, folder: str, uses: Iterable[str]) -> None:
        """Record the special uses of a folder (none: forget them). NoSuchFolder."""
        ...

    async def claim_provisioning(self, account: str) -> bool:
        """True exactly once per account: the caller creates its default folders."""
        ...

    async def read_message(self, account: str, folder: str, key: str) -> bytes: ...

    async def read_messages(self, account: str, folder: str,
                            keys: Sequence[str]) -> list[bytes | None]:
        """read_message() of several messages in one go (None for a gone one): a SEARCH or
        FETCH over a folder pays one trip to the store's threads per batch, not per
        message. Callers keep batches small (a few MiB)."""
        ...

    def stream_message(self, account: str, folder: str, key: str) -> AsyncIterator[bytes]: ...

    async def vanished_since(self, account: str, folder: str,
                             modseq: int) -> tuple[list[int], bool]:
        """RFC 7162 QRESYNC: UIDs expunged after `modseq`, and whether the record reaches
        back that far (False: treat every known UID that no longer exists as vanished)."""
        ...

    # the change feed
    def watch(self, account: str, folder: str, session: int = 0) -> Watch:
        """Follow one folder's changes (and the account's folder tree)."""
        ...

    def quiet(self, account: str, folder: str) -> bool:
        """Is every change made to the folder up to now already told to its watches? True
        only when the store can vouch for it (Maildir: the folder is followed by inotify
        and no event is waiting); False means "look to be sure"."""
        ...
