"""`mailkeep queue ...`: look at the spool, and change it -- through the daemon when it runs.

Reading (list, show) reads the spool's files directly, whether the daemon runs or not: they
are written tmp -> rename and appended with whole lines, so a reader sees whole entries.

Changing (retry, delete, hold, release, flush) must not race the delivery runner, which keeps
every entry in memory. The runner holds an exclusive flock on spool/.lock for its lifetime
(relay/runner.py), so:

* the lock is held: a daemon runs. The request becomes a file spool/control/OP-ID (written
  in spool/incoming/ and renamed, so the runner never sees half a request); the runner looks
  every CONTROL_INTERVAL, removes the file and acts. We wait (bounded) for the file to go
  and for the change to show on disk; a request the daemon did not take in time is
  withdrawn, so the outcome is always definite;
* the lock is free: no daemon. We take the lock ourselves (a daemon starting meanwhile
  waits a moment for it) and change the spool directly, the way the runner would: delete
  removes the entry's files, hold/release and retry append to its log (Spool.record), and
  the next start picks that up.

Blocking file work throughout: this is for the command line, never for the event loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mailkeep.config.hints import admin_command
from mailkeep.proto.message import split_message
from mailkeep.relay.spool import Spool, SpoolEntry, SpoolError, SpoolRecipient

Op = Literal["retry", "delete", "hold", "release"]
ALL = "all"  # the target of `retry --all` / `flush` (runner.control's "retry-all")
# How long a request waits for a running daemon: the runner looks at control/ every second
# (queue_control.CONTROL_INTERVAL), so five looks; a daemon that misses them all is stuck.
CONTROL_WAIT = 5.0
# How often we look whether the daemon took the request.
POLL_INTERVAL = 0.05
# `queue list` cuts the last reply to this many characters (`queue show` has it whole).
SHORT_REPLY = 60

# C0 controls but tab, DEL and C1 controls: a sender's header (or a remote server's reply)
# must not reach the administrator's terminal as escape sequences.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class QueueError(Exception):
    """The request cannot be done (unreadable spool, an unreadable entry, a wrong state)."""


class UnknownEntry(QueueError):
    """No message with that ID in the queue."""


class NoAnswer(QueueError):
    """A daemon holds the spool but did not take the request in time (it was withdrawn)."""


# -- small formatting helpers (also used by the runner's log lines) ----------------------------

def age_text(seconds: float) -> str:
    """A short age: 45s, 12m, 3h05m, 2d04h."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def size_text(octets: int) -> str:
    if octets < 10_000:
        return str(octets)
    if octets < 10_000_000:
        return f"{octets / 1000:.0f}k"
    return f"{octets / 1_000_000:.0f}M"


def shown(text: str) -> str:
    """`text` safe for a terminal: control characters (but tab) written as \\xNN."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _next_text(entry: SpoolEntry, now: float) -> str:
    if entry.hold:
        return "on hold"
    if entry.next_attempt <= now:
        return "now"
    return f"in {age_text(entry.next_attempt - now)}"


def _last_reply(entry: SpoolEntry) -> str:
    """The reply that says why the entry is still here: a pending recipient's first."""
    pending = [entry.recipients[i] for i in entry.pending()]
    for rcpt in [*pending, *entry.recipients]:
        if rcpt.reply:
            return rcpt.reply
    return ""


# -- the daemon's presence ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DaemonState:
    running: bool
    pid: int | None = None

    def __str__(self) -> str:
        if not self.running:
            return "the daemon is not running"
        return "the daemon is running" + (f" (pid {self.pid})" if self.pid else "")


def _open_lock(spool: Spool) -> int | None:
    """The lock file, read-only (never created here: a file made by root would be the
    daemon's no more); None when no daemon ever ran on this spool."""
    try:
        return os.open(spool.lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise QueueError(f"cannot open {spool.lock_path}: permission denied (run this as the "
                         "user mailkeep runs as, or as root)") from None


def _pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    return None


def daemon_state(spool: Spool) -> DaemonState:
    """Whether a daemon holds the spool's lock now (a shared probe, let go at once)."""
    fd = _open_lock(spool)
    if fd is None:
        return DaemonState(False)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return DaemonState(True, _pid(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return DaemonState(False)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _exclusive(spool: Spool) -> Iterator[bool]:
    """Hold the spool's lock for a direct change; yields False when a daemon holds it."""
    fd = _open_lock(spool)
    if fd is None:
        yield True  # no daemon of this version ever ran here: nobody to race
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # lets go of the lock too


# -- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Listing:
    entries: list[SpoolEntry]
    unreadable: list[tuple[str, str]]   # (id, why)
    daemon: DaemonState
    now: float

    @property
    def oldest_age(self) -> float:
        if not self.entries:
            return 0.0
        return self.now - min(e.arrival for e in self.entries)


def _readable(spool: Spool) -> bool:
    """False when there is no spool yet (no daemon ever started): an empty queue."""
    try:
        return spool.queue.is_dir()
    except PermissionError:
        return True  # and the next read says so


@contextlib.contextmanager
def _reading(spool: Spool) -> Iterator[None]:
    try:
        yield
    except PermissionError as exc:
        raise QueueError(f"cannot read the spool ({exc.filename or spool.root}): permission "
                         "denied (run this as the user mailkeep runs as, or as root)") from None


def listing(spool: Spool, now: float | None = None) -> Listing:
    now = time.time() if now is None else now
    entries: list[SpoolEntry] = []
    unreadable: list[tuple[str, str]] = []
    with _reading(spool):
        for entry_id in spool.ids() if _readable(spool) else []:
            try:
                entries.append(spool.load(entry_id))
            except SpoolError as exc:
                if (spool.queue / entry_id).exists():  # else delivered while we looked
                    unreadable.append((entry_id, str(exc)))
        state = daemon_state(spool)
    return Listing(entries, unreadable, state, now)


def load(spool: Spool, entry_id: str) -> SpoolEntry:
    """The entry; UnknownEntry when there is none, QueueError when it cannot be read."""
    with _reading(spool):
        if not _exists(spool, entry_id):
            raise UnknownEntry(f"no message {entry_id!r} in the queue "
                               f"(`{admin_command('queue', 'list')}` shows the IDs)")
        try:
            return spool.load(entry_id)
        except SpoolError as exc:
            if not _exists(spool, entry_id):  # delivered and removed just now
                raise UnknownEntry(f"no message {entry_id!r} in the queue (it just left: "
                                   "delivered, bounced or deleted)") from None
            raise QueueError(f"cannot read {exc} "
                             f"(`{admin_command('queue', 'delete', entry_id)}` removes it)") \
                from None


def _exists(spool: Spool, entry_id: str) -> bool:
    return _readable(spool) and entry_id in spool.ids()


def render_listing(lst: Listing) -> list[str]:
    """One line per message, then a summary line (`mailq` style, columns aligned)."""
    rows: list[list[str]] = []
    for e in lst.entries:
        pending = len(e.pending())
        reply = shown(_last_reply(e)) or "-"
        if len(reply) > SHORT_REPLY:
            reply = reply[:SHORT_REPLY - 3] + "..."
        rows.append([e.id, age_text(lst.now - e.arrival), size_text(e.size),
                     f"<{shown(e.mail_from)}>", f"{pending}/{len(e.recipients)}",
                     str(e.attempts), "-" if e.hold else _next_text(e, lst.now),
                     "held" if e.hold else "-",
                     reply])
    lines: list[str] = []
    if rows:
        header = ["ID", "AGE", "SIZE", "FROM", "RCPTS", "TRIES", "NEXT", "HOLD", "LAST REPLY"]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [c.ljust(w) if i != 2 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=False))]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
    for entry_id, why in lst.unreadable:
        lines.append(f"{entry_id}  UNREADABLE: {shown(why)}")
    count = len(lst.entries) + len(lst.unreadable)
    if count == 0:
        lines.append(f"the queue is empty; {lst.daemon}")
    else:
        noun = "message" if count == 1 else "messages"
        held = sum(1 for e in lst.entries if e.hold)
        extra = f", {held} on hold" if held else ""
        extra += f", {len(lst.unreadable)} unreadable" if lst.unreadable else ""
        oldest = f", oldest {age_text(lst.oldest_age)}" if lst.entries else ""
        lines.append(f"{count} {noun}{oldest}{extra}; {lst.daemon}")
    return lines


def _recipient_json(r: SpoolRecipient) -> dict[str, Any]:
    return {"address": r.address, "kind": r.kind, "account": r.account, "route": r.route,
            "status": r.status, "reply": r.reply, "dsn_status": r.dsn_status,
            "remote_mta": r.remote_mta, "notify": r.notify, "orcpt": r.orcpt}


def entry_json(e: SpoolEntry, now: float) -> dict[str, Any]:
    return {
        "id": e.id, "arrival": e.arrival, "age": round(now - e.arrival, 3), "size": e.size,
        "mail_from": e.mail_from, "recipients_pending": len(e.pending()),
        "recipients_total": len(e.recipients), "attempts": e.attempts,
        "next_attempt": e.next_attempt, "hold": e.hold, "last_reply": _last_reply(e),
        "delay_notified": e.delay_notified, "ret": e.ret, "envid": e.envid,
        "smtputf8": e.smtputf8, "body_8bit": e.body_8bit, "source": e.source,
        "recipients": [_recipient_json(r) for r in e.recipients],
    }


def listing_json(lst: Listing) -> str:
    return json.dumps({
        "count": len(lst.entries), "oldest_age": round(lst.oldest_age, 3),
        "daemon_running": lst.daemon.running, "daemon_pid": lst.daemon.pid,
        "messages": [entry_json(e, lst.now) for e in lst.entries],
        "unreadable": [{"id": i, "problem": why} for i, why in lst.unreadable],
    }, indent=2)


def message_parts(spool: Spool, entry_id: str) -> tuple[bytes, bytes]:
    """(header section, body) of the spooled message."""
    with _reading(spool):
        try:
            data = spool.message(entry_id)
        except FileNotFoundError:
            raise UnknownEntry(f"no message {entry_id!r} in the queue (it just left)") from None
    header, rest = split_message(data)
    return header, rest.removeprefix(b"\r\n")  # the blank line that ends the header


def _lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", "backslashreplace")
    return [shown(line) for line in text.replace("\r\n", "\n").split("\n")]


def render_entry(e: SpoolEntry, header: bytes, body: bytes | None, now: float) -> list[str]:
    """`queue show`: the envelope, each recipient's state, the header (and the body)."""
    lines = [
        f"id:        {e.id}",
        f"arrival:   {_utc(e.arrival)} ({age_text(now - e.arrival)} ago)",
        f"size:      {e.size} octets",
        f"from:      <{shown(e.mail_from)}>" + ("  (null sender: a notice)" if not e.mail_from
                                                  else ""),
    ]
    if e.source:
        lines.append("source:    " + ", ".join(f"{k} {shown(v)}" for k, v in
                                               sorted(e.source.items()) if v))
    options = [f"RET={e.ret}"] if e.ret else []
    options += [f"ENVID={shown(e.envid)}"] if e.envid else []
    options += ["SMTPUTF8"] if e.smtputf8 else []
    options += ["8BITMIME"] if e.body_8bit else []
    if options:
        lines.append("options:   " + " ".join(options))
    attempt = f"attempts:  {e.attempts}, next {_next_text(e, now)}"
    if not e.hold and e.next_attempt > now:
        attempt += f" ({_utc(e.next_attempt)})"
    lines.append(attempt)
    lines.append(f"on hold:   {'yes' if e.hold else 'no'}")
    if e.delay_notified:
        lines.append("notices:   the sender was told of the delay")
    lines.append(f"recipients ({len(e.pending())} of {len(e.recipients)} pending):")
    for r in e.recipients:
        where = f"local, account {r.account}" if r.kind == "local" else "remote"
        if r.route:
            where += f", route {r.route}"
        status = r.status + (f" {r.dsn_status}" if r.dsn_status else "")
        mta = f", via {shown(r.remote_mta)}" if r.remote_mta else ""
        lines.append(f"  <{shown(r.address)}>  {status}  ({where}{mta})")
        if r.reply:
            lines.append(f"      {shown(r.reply)}")
        dsn = [f"NOTIFY={','.join(r.notify) or 'NEVER'}"] if r.notify is not None else []
        dsn += [f"ORCPT={shown(';'.join(r.orcpt))}"] if r.orcpt else []
        if dsn:
            lines.append(f"      {' '.join(dsn)}")
    lines.append("header:")
    lines += [f"  {line}" for line in _lines(header) if line]
    if body is None:
        return lines
    lines.append("body:")
    lines += _lines(body)
    return lines


# -- changing --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    message: str
    via_daemon: bool


def act(spool: Spool, op: Op, target: str, *, wait: float = CONTROL_WAIT,
        clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Carry out `op` on entry `target` (`retry` also takes ALL): through the daemon when
    it runs, directly on the spool when it does not. UnknownEntry, NoAnswer, QueueError."""
    with _reading(spool):
        if target == ALL:
            if op != "retry":
                raise QueueError(f"{op} takes one message ID")
            return _retry_all(spool, wait, clock)
        entry: SpoolEntry | None
        try:
            entry = load(spool, target)
        except UnknownEntry:
            raise
        except QueueError:
            if op != "delete":
                raise
            entry = None  # an unreadable entry can still be deleted
        if entry is not None:
            refusal = _precondition(op, entry)
            if refusal is not None:
                return Outcome(refusal, via_daemon=False)
        with _exclusive(spool) as free:
            if free:
                return Outcome(_direct(spool, op, target, entry), via_daemon=False)
        if entry is not None:
            return _through_daemon(spool, op, target, wait, clock)
        # An unreadable entry: the daemon set it aside at start and does not know it, or
        # (broken since) retries it hourly. Tell it, then remove the files here.
        _through_daemon(spool, op, target, wait, clock, verify=False)
        spool.remove(target)
        return Outcome(f"{target} deleted", via_daemon=True)


def _precondition(op: Op, entry: SpoolEntry) -> str | None:
    """Why there is nothing to do (exit 0: the state asked for is the state it has)."""
    if op == "hold" and entry.hold:
        return f"{entry.id} is already on hold"
    if op == "release" and not entry.hold:
        return f"{entry.id} is not on hold"
    if op == "retry" and entry.hold:
        raise QueueError(f"{entry.id} is on hold: "
                         f"`{admin_command('queue', 'release', entry.id)}` first (release "
                         "also schedules it at once)")
    return None


def _retry_all(spool: Spool, wait: float, clock: Callable[[], float]) -> Outcome:
    entries = listing(spool).entries
    waiting = [e for e in entries if not e.hold]
    if not waiting:
        held = len(entries)
        return Outcome("nothing to retry: " + ("the queue is empty" if not held else
                                               f"all {held} messages are on hold"), False)
    with _exclusive(spool) as free:
        if free:
            for e in waiting:
                _record(spool, e.id, [{"attempts": e.attempts, "next": 0}])
            return Outcome(f"{len(waiting)} message(s) will be tried at once when the "
                           "daemon starts", via_daemon=False)
    _through_daemon(spool, "retry", ALL, wait, clock)
    return Outcome(f"the daemon is trying {len(waiting)} message(s) now", via_daemon=True)


def _direct(spool: Spool, op: Op, entry_id: str, entry: SpoolEntry | None) -> str:
    if op == "delete":
        spool.remove(entry_id)
        return f"{entry_id} deleted"
    assert entry is not None
    if op == "retry":
        # The runner schedules an entry with next = 0 at once when it starts.
        _record(spool, entry_id, [{"attempts": entry.attempts, "next": 0}])
        return f"{entry_id} will be tried at once when the daemon starts"
    if op == "hold":
        _record(spool, entry_id, [{"hold": True}])
        return f"{entry_id} put on hold"
    # Like the runner's release: due at once.
    _record(spool, entry_id, [{"hold": False}, {"attempts": entry.attempts, "next": 0}])
    return f"{entry_id} released; it will be tried at once when the daemon starts"


def _record(spool: Spool, entry_id: str, outcomes: list[dict[str, Any]]) -> None:
    """Spool.record, with the log owned like the queue folder: root running this command
    must not leave a log the daemon (another user) cannot append to."""
    spool.record(entry_id, outcomes)
    if os.geteuid() == 0:
        owner = spool.queue.stat()
        if owner.st_uid != 0:
            os.chown(spool.queue / f"{entry_id}.log", owner.st_uid, owner.st_gid)


def request(spool: Spool, op: Op, target: str) -> Path:
    """Drop the request file control/OP-TARGET; written in incoming/ (cleaned at start) and
    renamed, so the runner never reads a request that is not whole."""
    name = f"{op}-{target}"
    tmp = spool.incoming / f"control.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    final = spool.control / name
    try:
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return final


def _through_daemon(spool: Spool, op: Op, target: str, wait: float,
                    clock: Callable[[], float], *, verify: bool = True) -> Outcome:
    path = request(spool, op, target)
    deadline = clock() + wait
    while path.exists():
        if clock() >= deadline:
            try:
                path.unlink()
            except FileNotFoundError:
                break  # taken in the last moment after all
            raise NoAnswer(f"the daemon did not answer within {wait:g} s; the request was "
                           "withdrawn and nothing changed (is it stuck? see its log)")
        time.sleep(POLL_INTERVAL)
    # Taken. The runner acts right after removing the file; wait for the change to show.
    if verify and target != ALL:
        while not _visible(spool, op, target):
            if clock() >= deadline:
                return Outcome(f"the daemon took the request ({op} {target}); the change "
                               "does not show yet", via_daemon=True)
            time.sleep(POLL_INTERVAL)
    if op != "delete" and target != ALL and not (spool.queue / target).exists():
        return Outcome(f"{target} left the queue meanwhile (delivered, bounced or deleted)",
                       via_daemon=True)
    done = {"delete": "deleted", "hold": "put on hold", "release": "released",
            "retry": "being tried now"}[op]
    return Outcome(f"{target} {done} (by the daemon)", via_daemon=True)


def _visible(spool: Spool, op: Op, target: str) -> bool:
    if op == "delete":
        return not (spool.queue / target).exists()
    if op == "retry":
        return True  # the next attempt is the runner's in-memory schedule
    try:
        return spool.load(target).hold == (op == "hold")
    except SpoolError:
        return True  # gone meanwhile (delivered): nothing left to hold or release
