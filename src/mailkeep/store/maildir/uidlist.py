"""The UID index of one Maildir, in Dovecot's `dovecot-uidlist` format (version 3).

One index per Maildir folder, shared by every door: POP3 derives UIDL from it, IMAP will use
it for UIDs, and Dovecot pointed at the same tree reads and writes the same file.

Format (Dovecot wiki "MailboxFormat/Maildir", section "dovecot-uidlist"):

    3 V1700000000 N42 G4a7c...        header: version, UIDVALIDITY, next UID, mailbox GUID
    1 :1700000000.M1P2Q0.host,S=120,W=120
    2 W1234 :1700000001.M5P2Q1.host  record: UID, extension fields, ":" + filename base

The filename base is the file's name up to the maildir info separator (":2,FLAGS"), so a
message keeps its UID when it moves from new/ to cur/ or its flags change.

Writers hold the dotlock `dovecot-uidlist.lock` (created O_CREAT|O_EXCL); like Dovecot's
file_dotlock_replace() we write the new index into the lock file itself, fsync it and rename
it over `dovecot-uidlist`: readers see the old index or the new one, never half of one, and
readers need no lock at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.store.maildir.layout import delivery_order

UIDLIST_NAME = "dovecot-uidlist"
LOCK_NAME = "dovecot-uidlist.lock"
# Dovecot maildir-uidlist.c MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT: 60*2 seconds. A lock older
# than this was left by a crash (a live writer holds it for milliseconds).
LOCK_STALE_SECONDS = 120.0
# How long a writer waits for another writer before giving up (a temporary error for the
# client). Dovecot waits up to mail_max_lock_timeout / 2 minutes; sessions must not hang so long.
LOCK_WAIT_SECONDS = 10.0
LOCK_POLL_SECONDS = 0.01
# maildir(5) info separator; Dovecot compares names up to the first ':'.
INFO_SEPARATOR = ":"
_HEADER_KEY = re.compile(r"^([A-Za-z])(.*)$")


class UidlistError(Exception):
    """The index cannot be read or written (corrupt file, lock timeout, I/O error): ours."""


def filename_base(name: str) -> str:
    """The part of a maildir file name that never changes: everything before ':2,FLAGS'."""
    return name.split(INFO_SEPARATOR, 1)[0]


def filename_flags(name: str) -> str:
    """The maildir flags of a file name ("" when it has no ':2,' info): e.g. "FS"."""
    _, sep, info = name.partition(INFO_SEPARATOR)
    if not sep or not info.startswith("2,"):
        return ""
    return info[2:]


@dataclass(frozen=True, slots=True)
class UidRecord:
    uid: int
    base: str
    extensions: tuple[str, ...] = ()


@dataclass(slots=True)
class Uidlist:
    uidvalidity: int
    next_uid: int
    guid: str
    records: dict[str, UidRecord] = field(default_factory=dict)  # base -> record, UID order
    header_extra: tuple[str, ...] = ()

    @classmethod
    def fresh(cls, now: float) -> Uidlist:
        # Dovecot: UIDVALIDITY of a new mailbox is the current time (RFC 3501 §2.3.1.1 only
        # asks that it never repeats for the same mailbox name with different UIDs).
        return cls(uidvalidity=max(1, int(now)), next_uid=1, guid=uuid.uuid4().hex)

    def by_uid(self) -> list[UidRecord]:
        return sorted(self.records.values(), key=lambda r: r.uid)


def parse(data: bytes) -> Uidlist:
    """Read versions 3 and 1 of the format; raise UidlistError on anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UidlistError("dovecot-uidlist is not UTF-8") from None
    lines = text.split("\n")
    header = lines[0].split()
    if not header:
        raise UidlistError("dovecot-uidlist has no header")
    records: dict[str, UidRecord] = {}
    try:
        if header[0] == "1":  # version 1: "1 <uidvalidity> <nextuid>", records "<uid> <name>"
            result = Uidlist(int(header[1]), int(header[2]), uuid.uuid4().hex)
            for line in lines[1:]:
                if line.strip():
                    uid_text, name = line.split(" ", 1)
                    base = filename_base(name.strip())
                    records[base] = UidRecord(int(uid_text), base)
        elif header[0] == "3":
            uidvalidity = next_uid = 0
            guid = ""
            extra: list[str] = []
            for item in header[1:]:
                m = _HEADER_KEY.match(item)
                if m is None:
                    raise UidlistError(f"bad header field {item!r}")
                key, value = m.groups()
                if key == "V":
                    uidvalidity = int(value)
                elif key == "N":
                    next_uid = int(value)
                elif key == "G":
                    guid = value
                else:
                    extra.append(item)
            if uidvalidity <= 0 or next_uid <= 0:
                raise UidlistError("header lacks V or N")
            result = Uidlist(uidvalidity, next_uid, guid or uuid.uuid4().hex,
                             header_extra=tuple(extra))
            for line in lines[1:]:
                if not line.strip():
                    continue
                head, sep, name = line.partition(" :")
                if not sep:
                    raise UidlistError(f"record without ':filename': {line[:80]!r}")
                uid_text, *ext = head.split(" ")
                base = filename_base(name)
                records[base] = UidRecord(int(uid_text), base, tuple(x for x in ext if x))
        else:
            raise UidlistError(f"unsupported dovecot-uidlist version {header[0]!r}")
    except (ValueError, IndexError) as exc:
        raise UidlistError(f"corrupt dovecot-uidlist: {exc}") from None
    for rec in records.values():
        if rec.uid <= 0:
            raise UidlistError(f"UID {rec.uid} out of range")
        result.next_uid = max(result.next_uid, rec.uid + 1)
    result.records = dict(sorted(records.items(), key=lambda kv: kv[1].uid))
    return result


def render(uidlist: Uidlist) -> bytes:
    head = ["3", f"V{uidlist.uidvalidity}", f"N{uidlist.next_uid}", f"G{uidlist.guid}",
            *uidlist.header_extra]
    out = [" ".join(head)]
    for rec in uidlist.by_uid():
        out.append(" ".join((str(rec.uid), *rec.extensions, ":" + rec.base)))
    return ("\n".join(out) + "\n").encode("utf-8")


def scan(root: Path) -> dict[str, str]:
    """base -> "new/NAME" or "cur/NAME" for every message file; new/ first (see below)."""
    found: dict[str, str] = {}
    # new/ before cur/: a message moving new/ -> cur/ during the scan is then seen at least
    # once (a cur/-first scan could miss it in both places).
    for sub in ("new", "cur"):
        try:
            with os.scandir(root / sub) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    found[filename_base(entry.name)] = f"{sub}/{entry.name}"
        except FileNotFoundError:
            continue
    return found


def read(root: Path) -> Uidlist | None:
    try:
        data = (root / UIDLIST_NAME).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UidlistError(f"cannot read {UIDLIST_NAME}: {exc.strerror}") from None
    return parse(data)


# Parsed indexes kept between lock-free reads: path -> (identity of the file parsed, index).
# The index is only ever replaced by rename (a new inode) or appended to (Dovecot: a new
# size and mtime), so an unchanged (inode, size, mtime, ctime) is an unchanged file. Times
# are coarse, so a parse is kept only when the file was last changed at least SETTLE_NS
# before it was looked at: a later change cannot then carry the same times.
SETTLE_NS = 1_000_000_000
PARSE_CACHE_ENTRIES = 256
_parsed: OrderedDict[str, tuple[tuple[int, int, int, int], Uidlist]] = OrderedDict()
_parsed_guard = threading.Lock()


def _copy(index: Uidlist) -> Uidlist:
    return Uidlist(index.uidvalidity, index.next_uid, index.guid, dict(index.records),
                   index.header_extra)


def read_cached(root: Path) -> Uidlist | None:
    """read(), without parsing the file again when it is the one parsed last time (the
    result is the caller's to change)."""
    path = f"{root}/{UIDLIST_NAME}"
    now = time.time_ns()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            with _parsed_guard:
                hit = _parsed.get(path)
                if hit is not None and hit[0] == identity:
                    _parsed.move_to_end(path)
                    return _copy(hit[1])
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UidlistError(f"cannot read {UIDLIST_NAME}: {exc.strerror}") from None
    index = parse(data)
    if max(st.st_mtime_ns, st.st_ctime_ns) <= now - SETTLE_NS and len(data) == st.st_size:
        with _parsed_guard:
            _parsed[path] = (identity, _copy(index))
            _parsed.move_to_end(path)
            while len(_parsed) > PARSE_CACHE_ENTRIES:
                _parsed.popitem(last=False)
    return index


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(path: Path, now: float) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if now - st.st_mtime > LOCK_STALE_SECONDS:
        return True
    # Our own "pid:host" mark: a dead process on this host cannot be writing any more.
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        pid_text, _, host = path.read_bytes()[:300].decode().strip().partition(":")
        if host == socket.gethostname() and pid_text.isdigit():
            return not _pid_alive(int(pid_text))
    return False


class _Dotlock:
    """`dovecot-uidlist.lock`: O_CREAT|O_EXCL, "pid:host" inside until it becomes the index.

    `target` picks another file guarded the same way (Dovecot's file_dotlock: "NAME.lock"),
    e.g. dovecot-keywords and subscriptions."""

    def __init__(self, root: Path, clock: Callable[[], float],
                 target: str = UIDLIST_NAME) -> None:
        self.path = root / f"{target}.lock"
        self.target = target
        self.root = root
        self.clock = clock
        self.fd = -1

    def __enter__(self) -> _Dotlock:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                if _lock_is_stale(self.path, self.clock()):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                if time.monotonic() > deadline:
                    raise UidlistError(f"{self.path.name} held by another process") from None
                time.sleep(LOCK_POLL_SECONDS)
            except OSError as exc:
                raise UidlistError(f"cannot create {self.path.name}: {exc.strerror}") from None
        os.write(self.fd, f"{os.getpid()}:{socket.gethostname()}\n".encode())
        return self

    def replace(self, data: bytes) -> None:
        """Make `data` the new index: into the lock file, fsync, rename over the index."""
        os.ftruncate(self.fd, 0)
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(self.fd, view[offset:], offset)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.path, self.root / self.target)
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _assign(uidlist: Uidlist, files: dict[str, str], drop_missing: bool) -> bool:
    """Give unlisted files the next UIDs in delivery order; forget vanished ones. Changed?"""
    changed = False
    if drop_missing:
        for base in [b for b in uidlist.records if b not in files]:
            del uidlist.records[base]
            changed = True
    for base in sorted((b for b in files if b not in uidlist.records), key=delivery_order):
        uidlist.records[base] = UidRecord(uidlist.next_uid, base)
        uidlist.next_uid += 1
        changed = True
    return changed


def sync(root: Path, clock: Callable[[], float] = time.time) -> tuple[Uidlist, dict[str, str]]:
    """The index brought up to date with the files, and base -> current relative path.

    Blocking (run it off the event loop). Without new or vanished files nothing is written
    and no lock is taken."""
    try:
        current = read_cached(root)
        files = scan(root)
        if current is not None and all(b in current.records for b in files) \
                and len(files) == len(current.records):
            return current, files
        with _Dotlock(root, clock) as lock:
            current = read(root) or Uidlist.fresh(clock())
            files = scan(root)
            missing = [b for b in current.records if b not in files]
            if missing:
                # A rename seen half-way by readdir can hide a file for a moment: look twice
                # before forgetting a UID (a forgotten UID is never handed out again).
                files = scan(root)
            if _assign(current, files, drop_missing=True):
                lock.replace(render(current))
            return current, files
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise UidlistError(f"maildir {root} vanished") from None
        raise UidlistError(f"{UIDLIST_NAME}: {exc.strerror}") from None


def uid_order(uidlist: Uidlist, files: Iterable[str]) -> list[UidRecord]:
    """The records of the given bases, in UID order (bases without a UID are skipped)."""
    wanted = set(files)
    return [r for r in uidlist.by_uid() if r.base in wanted]


Dotlock = _Dotlock


def assign(root: Path, ordered: list[str], clock: Callable[[], float] = time.time,
           fresh_uidvalidity: Callable[[], int] | None = None) -> tuple[Uidlist, dict[str, str]]:
    """Like sync(), but the bases in `ordered` (files just added by us: APPEND, COPY) get
    their UIDs in exactly that order, after any other unlisted file (deliveries)."""
    try:
        with _Dotlock(root, clock) as lock:
            current = read(root)
            if current is None:
                current = Uidlist.fresh(clock())
                if fresh_uidvalidity is not None:
                    current.uidvalidity = fresh_uidvalidity()
            files = scan(root)
            mine = [b for b in ordered if b in files and b not in current.records]
            skip = set(mine)
            others = {b: loc for b, loc in files.items() if b not in skip}
            _assign(current, others, drop_missing=False)
            for base in mine:
                current.records[base] = UidRecord(current.next_uid, base)
                current.next_uid += 1
            for base in [b for b in current.records if b not in files]:
                del current.records[base]
            lock.replace(render(current))
            return current, files
    except OSError as exc:
        raise UidlistError(f"{UIDLIST_NAME}: {exc.strerror}") from None


def create(root: Path, uidvalidity: int, clock: Callable[[], float] = time.time) -> Uidlist:
    """Write an empty index with this UIDVALIDITY unless one exists (new folder)."""
    try:
        with _Dotlock(root, clock) as lock:
            current = read(root)
            if current is not None:
                return current
            current = Uidlist.fresh(clock())
            current.uidvalidity = uidvalidity
            lock.replace(render(current))
            return current
    except OSError as exc:
        raise UidlistError(f"{UIDLIST_NAME}: {exc.strerror}") from None
