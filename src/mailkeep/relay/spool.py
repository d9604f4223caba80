"""The durable spool: an accepted message is one file on disk before the client hears 250.

Layout under DATA_DIR/spool/:

    incoming/ID        being written (a crash leaves it here: removed at start-up)
    queue/ID           committed: a header line, the envelope as JSON, then the message
    queue/ID.log       per-recipient outcomes and the reports they call for, appended (one
                       JSON object per line, fsynced)
    control/OP-ID      requests from `mailkeep queue ...` (retry, delete, hold, release)
    .lock              flock(LOCK_EX) by the daemon for its lifetime: one spool, one daemon;
                       `mailkeep queue` tests it to know whether a daemon will take requests

Writing an entry is tmp -> fsync -> rename into queue/ -> fsync of queue/, like a Maildir
delivery: the rename is the commit, so a crash leaves either no entry or a whole one. The
outcome log is appended with fsync before an outcome counts, so a restart never repeats a
recipient the log says is done; local deliveries are also made idempotent by their Maildir
file name (relay/local.py), so even an unlogged delivery is not repeated.

A report owed to the sender (a bounce, a delay notice, a success report) is logged in the
same fsynced append as the outcomes that call for it, as a numbered notice; its DSN is
spooled under an id derived from the entry's id and that number (notice_id), and only then
is the notice logged as done. A crash anywhere in between leaves the notice owed, and the
next start either finds the DSN already spooled (by its id) or builds it again from the
log: a bounce is never lost and never spooled twice.

Blocking file work: every function here runs off the event loop (the runner calls them in
a thread).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from mailkeep.fsmodes import create_file, make_private_dirs
from mailkeep.store.base import DeliveryError, DiskFull
from mailkeep.store.maildir.durable import fsync_dir

MAGIC = b"MAILKEEP-SPOOL 1\n"
# A spool file whose envelope line is longer than this is corrupt (100 recipients with
# DSN parameters need about 60 KiB).
MAX_ENVELOPE_OCTETS = 1024 * 1024
LOCK_NAME = ".lock"
# How often a process waiting for the spool lock tries again.
LOCK_POLL_INTERVAL = 0.05

RecipientKind = Literal["local", "remote"]
Status = Literal["pending", "delivered", "relayed", "failed"]
# What a notice reports (relay/dsn.py Action values the runner sends on its own).
NoticeAction = Literal["failed", "delayed", "delivered"]


class SpoolError(Exception):
    """A spool file cannot be read (corrupt or truncated): ours, logged and set aside."""


class SpoolBusy(Exception):
    """Another process holds the spool's lock: a second daemon on the same data_dir."""


@dataclass(slots=True)
class SpoolRecipient:
    address: str                       # as the client gave it (RCPT TO)
    kind: RecipientKind
    account: str | None = None         # local: the account whose INBOX receives it
    route: str | None = None           # remote: a route forced at accept (fallback_route)
    notify: list[str] | None = None    # RFC 3461 NOTIFY (None: not given; []: NEVER)
    orcpt: list[str] | None = None     # RFC 3461 ORCPT decoded: [addr-type, address]
    status: Status = "pending"
    reply: str = ""                    # the last reply or reason (for DSNs and `queue show`)
    remote_mta: str = ""
    dsn_status: str = ""               # enhanced status code of the outcome


@dataclass(slots=True)
class Notice:
    """A report owed to the sender: logged with the outcomes that call for it, then its DSN
    is spooled (as notice_id(entry, n)), then it is logged done."""

    n: int                             # 0, 1, ... in the entry's log
    action: NoticeAction
    recipients: list[int]              # indexes into SpoolEntry.recipients
    at: float                          # when it was decided: the DSN's date and arrival
    done: bool = False


def notice_id(entry_id: str, n: int) -> str:
    """The spool id of notice `n` of an entry: fixed, so a replayed notice finds its DSN.
    Four hex digits after the entry's 19: never an id new_id() makes."""
    return f"{entry_id}{n:04x}"


@dataclass(slots=True)
class SpoolEntry:
    id: str
    mail_from: str                     # "" for the null sender <>
    recipients: list[SpoolRecipient]
    arrival: float                     # epoch seconds
    size: int
    ret: str | None = None             # RFC 3461 RET (FULL / HDRS)
    envid: str | None = None           # RFC 3461 ENVID (xtext as received)
    smtputf8: bool = False
    body_8bit: bool = False
    source: dict[str, str] = field(default_factory=dict)  # listener, client ip, user
    attempts: int = 0
    next_attempt: float = 0.0
    delay_notified: bool = False
    hold: bool = False                 # set aside by the administrator or a corrupt file
    notices: list[Notice] = field(default_factory=list)  # from the log only (see Notice)

    def pending(self) -> list[int]:
        return [i for i, r in enumerate(self.recipients) if r.status == "pending"]

    def done(self) -> bool:
        return not self.pending()

    def owed_notices(self) -> list[Notice]:
        return [n for n in self.notices if not n.done]

    def finished(self) -> bool:
        """Nothing left to deliver and nothing left to tell the sender: removable."""
        return self.done() and not self.owed_notices()

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SpoolEntry:
        """The entry to_json() wrote; ValueError or TypeError for anything else (a file
        that is valid JSON of another shape must not become an entry the runner trips on)."""
        raw = json.loads(data)
        _check_fields(raw, _ENTRY_FIELDS, "envelope")
        # Notices come from the log; the envelope is written before there are any.
        if raw.pop("notices", []):
            raise ValueError("notices in the envelope")
        recipients = raw.pop("recipients")
        for r in recipients:
            _check_fields(r, _RECIPIENT_FIELDS, "recipient")
            if r.get("kind") not in get_args(RecipientKind):
                raise ValueError(f"recipient kind {r.get('kind')!r}")
            if r.get("status", "pending") not in get_args(Status):
                raise ValueError(f"recipient status {r.get('status')!r}")
            for key in ("notify", "orcpt"):
                if r.get(key) is not None and not all(isinstance(v, str) for v in r[key]):
                    raise ValueError(f"recipient {key}: not a list of strings")
        if not all(isinstance(v, str) for v in raw.get("source", {}).values()):
            raise ValueError("source: not a table of strings")
        return cls(recipients=[SpoolRecipient(**r) for r in recipients], **raw)


_NUMBER = (int, float)
_TEXT_OR_NONE = (str, type(None))
# The JSON types of each field as to_json() writes them (missing and unknown keys are left
# to the dataclass constructor, which refuses them with TypeError).
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,), "mail_from": (str,), "recipients": (list,), "arrival": _NUMBER,
    "size": (int,), "ret": _TEXT_OR_NONE, "envid": _TEXT_OR_NONE, "smtputf8": (bool,),
    "body_8bit": (bool,), "source": (dict,), "attempts": (int,), "next_attempt": _NUMBER,
    "delay_notified": (bool,), "hold": (bool,), "notices": (list,),
}
_RECIPIENT_FIELDS: dict[str, tuple[type, ...]] = {
    "address": (str,), "kind": (str,), "account": _TEXT_OR_NONE, "route": _TEXT_OR_NONE,
    "notify": (list, type(None)), "orcpt": (list, type(None)), "status": (str,),
    "reply": (str,), "remote_mta": (str,), "dsn_status": (str,),
}


def _is(value: object, types: tuple[type, ...]) -> bool:
    """isinstance, where a bool is not a number and a number is finite."""
    if isinstance(value, bool) and bool not in types:
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, types)


def _check_fields(raw: object, fields: dict[str, tuple[type, ...]], what: str) -> None:
    if not isinstance(raw, dict):
        raise TypeError(f"{what} is not a JSON object")
    for key, types in fields.items():
        if key in raw and not _is(raw[key], types):
            raise TypeError(f"{what} {key}: {raw[key]!r} is not of the right type")


def _valid_outcome(o: object) -> bool:
    """Is `o` an outcome record() writes? (see record() for the shapes)"""
    if not isinstance(o, dict):
        return False
    if "i" in o:
        return (_is(o["i"], (int,)) and o.get("status", "pending") in get_args(Status)
                and all(_is(o.get(k, ""), (str,)) for k in ("reply", "remote_mta",
                                                              "dsn_status")))
    if "notice" in o:
        return (_is(o["notice"], (int,)) and o.get("action") in get_args(NoticeAction)
                and isinstance(o.get("rcpts"), list)
                and all(_is(i, (int,)) for i in o["rcpts"]) and _is(o.get("at"), _NUMBER))
    if "notice_done" in o:
        return _is(o["notice_done"], (int,))
    if "attempts" in o and not (_is(o["attempts"], (int,))
                                and _is(o.get("next", 0.0), _NUMBER)):
        return False
    return all(_is(o[k], (bool,)) for k in ("hold", "delay_notified") if k in o)


def new_id(now: float | None = None) -> str:
    """Sortable by arrival, unique: microseconds since the epoch in hex, then randomness."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:013x}{secrets.token_hex(3)}"


def _valid_id(name: str) -> bool:
    return 8 <= len(name) <= 64 and all(c in "0123456789abcdef" for c in name)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.queue = root / "queue"
        self.control = root / "control"
        self.lock_path = root / LOCK_NAME

    # -- the daemon's lock ----------------------------------------------------------------

    def lock(self, wait: float = 0.0) -> int:
        """Take the spool's exclusive lock, trying for up to `wait` seconds (a `mailkeep
        queue` command acting on the spool holds it for a moment); the descriptor that holds
        it (close it to let go). SpoolBusy when another process keeps it.

        flock, not a pid file: the kernel lets go when the process dies, kill -9 included,
        so a crash never leaves a stale lock behind."""
        make_private_dirs(self.root)
        fd = create_file(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise SpoolBusy(f"{self.lock_path} is locked by another process"
                                    + (f" (pid {holder})" if holder else "")) from None
                time.sleep(LOCK_POLL_INTERVAL)
            except BaseException:
                os.close(fd)
                raise
        # Who holds it, for the administrator (the lock itself is the flock, not this).
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def prepare(self) -> int:
        """Create the folders (0700) and remove half-written entries; how many went."""
        for folder in (self.incoming, self.queue, self.control):
            make_private_dirs(folder)
        removed = 0
        for leftover in self.incoming.iterdir():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
        return removed

    # -- writing --------------------------------------------------------------------------

    def accept(self, entry: SpoolEntry, message: bytes) -> None:
        """Write the entry durably. DiskFull when there is no space (452 4.3.1), DeliveryError
        for any other failure (451 4.3.0); either way nothing is left in queue/."""
        tmp = self.incoming / entry.id
        envelope = entry.to_json()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as out:
                    out.write(MAGIC)
                    out.write(envelope)
                    out.write(b"\n")
                    out.write(message)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.queue / entry.id)
            fsync_dir(self.queue)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"spool: {exc.strerror}") from exc
            raise DeliveryError(f"spool: {exc.strerror or exc}") from exc

    def record(self, entry_id: str, outcomes: list[dict[str, Any]]) -> None:
        """Append outcomes to the entry's log and fsync: once this returns they survive a
        crash. Each outcome is {"i": recipient index, "status": ..., "reply": ..., ...} or
        {"attempts": n, "next": t} / {"delay_notified": true} / {"hold": bool}, or a notice
        {"notice": n, "action": ..., "rcpts": [i, ...], "at": t} / {"notice_done": n}."""
        if not outcomes:
            return
        data = b"".join(json.dumps(o, separators=(",", ":")).encode() + b"\n"
                        for o in outcomes)
        path = self.queue / f"{entry_id}.log"
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
            created = False
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A torn last line (a crash mid-append): glued to it, these outcomes would
                # be skipped with it at the next load and their recipients tried again.
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            # A new file's name is in the directory, which fsync(fd) does not make durable
            # (fsync(2); the same reason accept() syncs queue/ after its rename).
            fsync_dir(self.queue)

    def remove(self, entry_id: str) -> None:
        """Forget a finished entry (no fsync: an entry that comes back after a crash is
        found finished by its log, or its local copies by their names)."""
        for name in (entry_id, f"{entry_id}.log"):
            with contextlib.suppress(FileNotFoundError):
                (self.queue / name).unlink()

    def requests(self) -> list[tuple[str, str]]:
        """Take the `mailkeep queue` requests waiting in control/: (op, entry id or "all"),
        each file removed as it is read; unknown names are dropped."""
        out: list[tuple[str, str]] = []
        for path in sorted(self.control.iterdir()):
            op, _, target = path.name.partition("-")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if op in ("retry", "delete", "hold", "release") and target:
                out.append((op, target))
        return out

    # -- reading --------------------------------------------------------------------------

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.queue.iterdir() if _valid_id(p.name))

    def load(self, entry_id: str) -> SpoolEntry:
        """The entry's envelope with every logged outcome applied. SpoolError."""
        path = self.queue / entry_id
        try:
            with path.open("rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise SpoolError(f"{entry_id}: not a spool file")
                line = f.readline(MAX_ENVELOPE_OCTETS + 1)
        except FileNotFoundError:
            raise SpoolError(f"{entry_id}: gone") from None
        if not line.endswith(b"\n"):
            raise SpoolError(f"{entry_id}: envelope truncated or too long")
        try:
            entry = SpoolEntry.from_json(line)
        except (ValueError, TypeError, KeyError) as exc:
            raise SpoolError(f"{entry_id}: bad envelope: {exc}") from None
        for outcome in self._log(entry_id):
            apply(entry, outcome)
        return entry

    def _log(self, entry_id: str) -> Iterator[dict[str, Any]]:
        try:
            data = (self.queue / f"{entry_id}.log").read_bytes()
        except FileNotFoundError:
            return
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                outcome = json.loads(line)
            except ValueError:
                continue  # a torn last line (crash mid-append): not fsynced, not counted
            if _valid_outcome(outcome):
                yield outcome
            # else: not a line record() wrote (damage): skipped like a torn line

    def message(self, entry_id: str) -> bytes:
        """The spooled message itself (after the envelope line)."""
        with (self.queue / entry_id).open("rb") as f:
            f.read(len(MAGIC))
            f.readline(MAX_ENVELOPE_OCTETS + 1)
            return f.read()

    def entries(self) -> Iterator[SpoolEntry | SpoolError]:
        for entry_id in self.ids():
            try:
                yield self.load(entry_id)
            except SpoolError as exc:
                yield exc


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def apply(entry: SpoolEntry, outcome: dict[str, Any]) -> None:
    """Apply one logged outcome to the in-memory entry."""
    if "i" in outcome:
        i = int(outcome["i"])
        if 0 <= i < len(entry.recipients):
            rcpt = entry.recipients[i]
            rcpt.status = outcome.get("status", rcpt.status)
            rcpt.reply = outcome.get("reply", rcpt.reply)
            rcpt.remote_mta = outcome.get("remote_mta", rcpt.remote_mta)
            rcpt.dsn_status = outcome.get("dsn_status", rcpt.dsn_status)
        return
    if "notice" in outcome:
        n = int(outcome["notice"])
        if all(notice.n != n for notice in entry.notices):
            rcpts = [int(i) for i in outcome["rcpts"] if 0 <= int(i) < len(entry.recipients)]
            entry.notices.append(Notice(n, outcome["action"], rcpts, float(outcome["at"])))
        return
    if "notice_done" in outcome:
        for notice in entry.notices:
            if notice.n == int(outcome["notice_done"]):
                notice.done = True
        return
    if "attempts" in outcome:
        entry.attempts = int(outcome["attempts"])
        entry.next_attempt = float(outcome.get("next", entry.next_attempt))
    if outcome.get("delay_notified"):
        entry.delay_notified = True
    if "hold" in outcome:
        entry.hold = bool(outcome["hold"])
