"""RFC 2177 IDLE over real TLS: a change made through every door reaches an idling session
as untagged EXISTS / EXPUNGE / FETCH, under asyncio and uvloop.

The doors: submission (587), another IMAP session (APPEND, COPY, STORE, EXPUNGE, MOVE when
offered), POP3 (DELE + QUIT), a file an outside program drops into new/, and a second
mailkeep process on the same Maildir. Each wait is bounded by the client's socket timeout
and a response count: a change that never arrives fails the test, it never hangs it; no
test measures how fast anything is.
"""

from __future__ import annotations

import os
import poplib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon, start_process_daemon, write_config
from tests.support.imap import (
    RawImap,
    append,
    close_all,
    message,
    password,
    running_imap_daemon,
    session,
    submit,
)

# Generous: a change must arrive within this (the bound for other processes is one
# second; inotify or the poll fallback is far quicker). A bound, not a measurement.
ARRIVAL_TIMEOUT = 20.0
MAX_RESPONSES = 50


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_imap_daemon(tmp_path, ca, loop_kind, pop3_listeners=True)


def start_idle(c: RawImap, tag: str = "idle") -> None:
    c.send(tag.encode() + b" IDLE\r\n")
    assert c.continuation().startswith(b"+ ")


def wait_for(c: RawImap, wanted: Callable[[bytes], bool]) -> list[bytes]:
    """Untagged responses read while idling, up to and including the first `wanted` one."""
    c.sock.settimeout(ARRIVAL_TIMEOUT)
    seen: list[bytes] = []
    for _ in range(MAX_RESPONSES):
        try:
            line = c.read_response()
        except TimeoutError:
            break
        assert line is not None, f"server closed while idling; got {seen!r}"
        seen.append(line)
        if wanted(line):
            return seen
    raise AssertionError(f"the change never reached the idling session; got {seen!r}")


def done(c: RawImap, tag: str = "idle") -> None:
    c.send(b"DONE\r\n")
    r = c.until_tagged(tag)
    assert r.status == "OK", r


def exists(line: bytes) -> bool:
    return line.upper().rstrip().endswith(b" EXISTS")


def expunge(line: bytes) -> bool:
    return line.upper().rstrip().endswith(b" EXPUNGE")


def fetch_with(flag: bytes) -> Callable[[bytes], bool]:
    return lambda line: b" FETCH " in line.upper() and flag.upper() in line.upper()


def test_other_imap_sessions_changes_reach_the_idler(imapd: RunningDaemon) -> None:
    submit(imapd, message("first"))
    idler = session(imapd)
    other = session(imapd)
    other.ok("CREATE Other")

    start_idle(idler)
    append(other, "INBOX", message("appended"))
    assert any(ln.startswith(b"* 2 EXISTS") for ln in wait_for(idler, exists))

    other.ok("STORE 1 +FLAGS (\\Flagged)")
    wait_for(idler, fetch_with(b"\\Flagged"))

    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    wait_for(idler, fetch_with(b"\\Deleted"))
    other.ok("EXPUNGE")
    assert any(ln.startswith(b"* 2 EXPUNGE") for ln in wait_for(idler, expunge))

    append(other, "Other", message("to copy"))
    other.ok("SELECT Other")
    other.ok("COPY 1 INBOX")
    wait_for(idler, exists)

    caps = other.ok("CAPABILITY").untagged[0].upper().split()
    if b"MOVE" in caps:
        append(other, "Other", message("to move"))
        other.ok("MOVE 2 INBOX")
        wait_for(idler, exists)
    done(idler)
    # The session goes on normally after IDLE.
    assert idler.ok("NOOP").status == "OK"


def test_move_reaches_the_idler(imapd: RunningDaemon) -> None:
    other = session(imapd, select=None)
    caps = other.ok("CAPABILITY").untagged[0].upper().split()
    if b"MOVE" not in caps:
        pytest.skip("MOVE (RFC 6851) is not offered yet")
    other.ok("CREATE Other")
    append(other, "Other", message("to move"))
    idler = session(imapd)
    start_idle(idler)
    other.ok("SELECT Other")
    other.ok("MOVE 1 INBOX")
    wait_for(idler, exists)
    done(idler)


def test_submission_reaches_the_idler(imapd: RunningDaemon) -> None:
    idler = session(imapd)
    start_idle(idler)
    submit(imapd, message("submitted while idling"))
    assert any(ln.startswith(b"* 1 EXISTS") for ln in wait_for(idler, exists))
    done(idler)


def test_pop3_dele_reaches_the_idler(imapd: RunningDaemon) -> None:
    submit(imapd, message("one"))
    submit(imapd, message("two"))
    idler = session(imapd)
    start_idle(idler)
    pop = poplib.POP3_SSL("127.0.0.1", imapd.pop3s_port, context=imapd.client_context(),
                          timeout=10)
    pop.user("bob")
    pop.pass_(password("bob"))
    pop.dele(1)
    pop.quit()
    assert any(ln.startswith(b"* 1 EXPUNGE") for ln in wait_for(idler, expunge))
    done(idler)


def _maildir_name() -> str:
    return f"{int(time.time())}.M{time.time_ns() % 1_000_000}P{os.getpid()}.outside"


def test_a_file_dropped_into_new_by_an_outside_program_reaches_the_idler(
        imapd: RunningDaemon) -> None:
    submit(imapd, message("already there"))
    idler = session(imapd)
    start_idle(idler)
    root = imapd.data_dir / "mail" / "bob"
    name = _maildir_name()
    tmp = root / "tmp" / name
    tmp.write_bytes(message("dropped by a script"))
    os.rename(tmp, root / "new" / name)  # maildir(5) delivery: tmp/ then rename into new/
    assert any(ln.startswith(b"* 2 EXISTS") for ln in wait_for(idler, exists))
    done(idler)
    # ... and a rename in cur/ (a flag change by another program) and an unlink
    r = idler.ok("UID FETCH 1:* (FLAGS)")
    assert len(r.fetches()) == 2
    start_idle(idler)
    first = next(p for p in (root / "cur").iterdir())
    base = first.name.split(":", 1)[0]
    os.rename(first, root / "cur" / f"{base}:2,F")
    wait_for(idler, fetch_with(b"\\Flagged"))
    (root / "cur" / f"{base}:2,F").unlink()
    wait_for(idler, expunge)
    done(idler)


def second_process(first: RunningDaemon, root: Path, ca: trustme.CA) -> RunningDaemon:
    """Another `mailkeep serve` on the same Maildirs (mail_dir), on ports and with a spool
    of its own (one spool belongs to one daemon)."""
    config = write_config(root, ca, imap_listeners=True)
    text = config.read_text().replace('data_dir = "data"',
                                      f'data_dir = "data"\nmail_dir = "{first.data_dir / "mail"}"')
    config.write_text(text)
    return start_process_daemon(config, ca)


def test_a_second_process_on_the_same_maildir_reaches_the_idler(
        imapd: RunningDaemon, tmp_path: Path, ca: trustme.CA) -> None:
    submit(imapd, message("first"))
    other_daemon = second_process(imapd, tmp_path / "second", ca)
    try:
        idler = session(imapd)
        start_idle(idler)
        submit(other_daemon, message("through the other process"))
        assert any(ln.startswith(b"* 2 EXISTS") for ln in wait_for(idler, exists))
        other = session(other_daemon)
        other.ok("STORE 1 +FLAGS (\\Answered)")
        wait_for(idler, fetch_with(b"\\Answered"))
        other.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.ok("EXPUNGE")
        wait_for(idler, expunge)
        done(idler)
    finally:
        close_all()
        other_daemon.stop()


def test_idle_in_the_authenticated_state_waits_for_done(imapd: RunningDaemon) -> None:
    c = session(imapd, select=None)
    start_idle(c)
    submit(imapd, message("nobody is told: no mailbox selected"))
    c.sock.settimeout(1.0)
    with pytest.raises((TimeoutError, socket.timeout)):
        c.read_response()  # nothing comes until DONE
    c.sock.settimeout(10.0)
    done(c)
    assert c.ok("SELECT INBOX").number("EXISTS") == 1


def test_anything_but_done_ends_idle_with_bad(imapd: RunningDaemon) -> None:
    c = session(imapd)
    start_idle(c)
    c.send(b"x1 NOOP\r\n")
    r = c.until_tagged("idle")
    assert r.status == "BAD", r
    assert c.ok("NOOP").status == "OK"


def test_idle_timeout_ends_with_bye(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> None:
    for d in running_imap_daemon(tmp_path, ca, loop_kind, imap={"idle_timeout": 1.0}):
        c = session(d)
        start_idle(c)
        c.sock.settimeout(ARRIVAL_TIMEOUT)
        line = c.read_response()
        assert line is not None and line.upper().startswith(b"* BYE"), line
        assert c.closed()


def test_deleting_the_mailbox_ends_an_idling_session_with_bye(imapd: RunningDaemon) -> None:
    setup = session(imapd, select=None)
    setup.ok("CREATE Doomed")
    append(setup, "Doomed", message("x"))
    idler = session(imapd, select="Doomed")
    start_idle(idler)
    setup.ok("DELETE Doomed")
    lines = wait_for(idler, lambda ln: ln.upper().startswith(b"* BYE"))
    assert b"deleted" in lines[-1].lower()
    assert idler.closed()
