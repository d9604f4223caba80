"""CONDSTORE / QRESYNC (RFC 7162) resynchronisation over real TLS: a client goes offline
while messages are flagged and expunged -- by another session, and by another process
working on the Maildir directly -- then comes back with SELECT ... (QRESYNC ...) and must be
told exactly that: VANISHED (EARLIER) and FETCH (UID FLAGS MODSEQ) of the changed ones."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon
from tests.support.imap import (
    RawImap,
    Result,
    append,
    message,
    running_imap_daemon,
    session,
    submit,
)
from tests.support.wait import eventually


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_imap_daemon(tmp_path, ca, loop_kind)


def highestmodseq(r: Result) -> int:
    value = r.ok_code("HIGHESTMODSEQ")
    assert value is not None, r
    return int(value)


def vanished_earlier(r: Result) -> set[int]:
    out: set[int] = set()
    for line in r.untagged:
        m = re.match(rb"VANISHED \(EARLIER\) ([0-9:,]+)", line)
        if m:
            for part in m.group(1).split(b","):
                lo, _, hi = part.partition(b":")
                out.update(range(int(lo), int(hi or lo) + 1))
    return out


def by_uid(r: Result) -> dict[int, dict[str, object]]:
    return {f["UID"]: f for f in r.fetches().values() if "UID" in f}


def qresync_client(d: RunningDaemon) -> RawImap:
    c = session(d, select=None)
    r = c.ok("ENABLE QRESYNC")
    assert r.untagged == [b"ENABLED QRESYNC"]
    return c


def file_of(folder: Path, n: int) -> Path:
    """The cur/ file of "message n" (UID n: submitted in order)."""
    wanted = f"Subject: message {n}\r\n".encode()
    found = [p for p in (folder / "cur").iterdir() if wanted in p.read_bytes()]
    assert len(found) == 1, found
    return found[0]


def remember(d: RunningDaemon, n: int) -> tuple[int, int]:
    """n messages, seen once by a QRESYNC client: (UIDVALIDITY, HIGHESTMODSEQ) it keeps."""
    for i in range(n):
        submit(d, message(f"message {i + 1}"))
    c = qresync_client(d)
    r = c.ok("SELECT INBOX")
    assert r.number("EXISTS") == n
    validity = r.ok_code("UIDVALIDITY")
    assert validity is not None
    c.ok("LOGOUT")
    c.close()
    return int(validity), highestmodseq(r)


def test_offline_client_resyncs_after_another_sessions_changes(imapd: RunningDaemon) -> None:
    validity, modseq = remember(imapd, 5)
    other = session(imapd)
    other.ok("STORE 1 +FLAGS (\\Flagged)")
    other.ok("UID STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    other.close()

    c = qresync_client(imapd)
    r = c.ok(f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:5))")
    assert r.number("EXISTS") == 3
    assert highestmodseq(r) > modseq
    assert vanished_earlier(r) == {2, 4}
    changed = by_uid(r)
    assert set(changed) == {1}
    assert "\\FLAGGED" in [str(f).upper() for f in changed[1]["FLAGS"]]  # type: ignore[attr-defined]
    assert changed[1]["MODSEQ"][0] > modseq  # type: ignore[index]

    # Nothing changed since: a second resync from the new HIGHESTMODSEQ is empty.
    again = c.ok(f"SELECT INBOX (QRESYNC ({validity} {highestmodseq(r)}))")
    assert b"OK [CLOSED] Previous mailbox closed." in again.untagged
    assert vanished_earlier(again) == set() and by_uid(again) == {}

    # The same through UID FETCH (CHANGEDSINCE ... VANISHED).
    f = c.ok(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq} VANISHED)")
    assert vanished_earlier(f) == {2, 4} and set(by_uid(f)) == {1}


def test_offline_client_resyncs_after_another_process_changes_the_maildir(
        imapd: RunningDaemon) -> None:
    validity, modseq = remember(imapd, 4)
    folder = imapd.data_dir / "mail" / "bob"
    cur = folder / "cur"
    assert len(list(cur.iterdir())) == 4  # SELECT moved them from new/ to cur/
    # Another program: mark the first message \Seen and \Flagged by renaming it, and
    # delete the third outright (as Dovecot or a script would).
    first, third = file_of(folder, 1), file_of(folder, 3)
    os.rename(first, cur / (first.name.split(":", 1)[0] + ":2,FS"))
    third.unlink()

    c = qresync_client(imapd)
    r = c.ok(f"SELECT INBOX (QRESYNC ({validity} {modseq}))")
    assert r.number("EXISTS") == 3
    assert vanished_earlier(r) == {3}
    changed = by_uid(r)
    assert set(changed) == {1}
    assert {"\\FLAGGED", "\\SEEN"} <= {str(f).upper() for f in changed[1]["FLAGS"]}  # type: ignore[attr-defined]


def test_without_the_expunge_history_every_missing_known_uid_is_vanished(
        imapd: RunningDaemon) -> None:
    validity, modseq = remember(imapd, 6)
    folder = imapd.data_dir / "mail" / "bob"
    file_of(folder, 2).unlink()
    file_of(folder, 5).unlink()
    (folder / "mailkeep-modseq").unlink()  # the history is lost (RFC 7162 §3.2.5.2 case)

    c = qresync_client(imapd)
    r = c.ok(f"SELECT INBOX (QRESYNC ({validity} {modseq}))")
    assert vanished_earlier(r) == {2, 5}
    # The sequence match data narrows it: the client vouches for 1:3 = UIDs 1,3,4 ...
    r = c.ok(f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:6 (1:3 1,3,4)))")
    assert vanished_earlier(r) == {5}


def test_conditional_store_between_two_sessions(imapd: RunningDaemon) -> None:
    submit(imapd, message("contended"))
    a = session(imapd, select=None)
    b = session(imapd, select=None)
    ra = a.ok("SELECT INBOX (CONDSTORE)")
    b.ok("SELECT INBOX (CONDSTORE)")
    base = int(a.ok("FETCH 1 (MODSEQ)").fetches()[1]["MODSEQ"][0])
    assert base <= highestmodseq(ra)
    won = b.ok(f"STORE 1 (UNCHANGEDSINCE {base}) +FLAGS (\\Answered)")
    assert won.code == "" and int(won.fetches()[1]["MODSEQ"][0]) > base
    lost = a.ok(f"STORE 1 (UNCHANGEDSINCE {base}) +FLAGS (\\Deleted)")
    assert lost.code == "MODIFIED" and b"[MODIFIED 1]" in lost.text
    # The session that lost learns the winner's change with its MODSEQ.
    f = a.ok("FETCH 1 (FLAGS MODSEQ)").fetches()[1]
    assert "\\ANSWERED" in [str(x).upper() for x in f["FLAGS"]]
    assert "\\DELETED" not in [str(x).upper() for x in f["FLAGS"]]


def test_condstore_and_qresync_idlers_get_modseq_and_vanished(imapd: RunningDaemon) -> None:
    submit(imapd, message("one"))
    submit(imapd, message("two"))
    q = qresync_client(imapd)
    start = highestmodseq(q.ok("SELECT INBOX"))
    other = session(imapd)
    q.send(b"idle IDLE\r\n")
    q.continuation()
    other.ok("STORE 1 +FLAGS (\\Flagged)")
    other.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
    other.ok("EXPUNGE")
    seen: list[bytes] = []

    def arrived() -> bool:
        line = q.read_response()
        assert line is not None
        seen.append(line)
        return any(x.startswith(b"* VANISHED 2") for x in seen) and \
            any(x.startswith(b"* OK [HIGHESTMODSEQ") for x in seen) and \
            any(b"FETCH" in x and b"MODSEQ" in x for x in seen)

    assert eventually(arrived, timeout=20), seen
    assert not any(x.rstrip().endswith(b"EXPUNGE") for x in seen)  # VANISHED replaces it
    q.send(b"DONE\r\n")
    assert q.until_tagged("idle").status == "OK"
    final = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(seen)).group(1))  # type: ignore[union-attr]
    assert final > start


def test_uid_expunge_with_qresync_answers_vanished_and_highestmodseq(
        imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"m{i}"))
    c = qresync_client(imapd)
    before = highestmodseq(c.ok("SELECT INBOX"))
    c.ok("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
    r = c.ok("UID EXPUNGE 2:3")
    assert r.untagged_named("VANISHED") == [b"VANISHED 2:3"]
    m = re.match(rb"\[HIGHESTMODSEQ (\d+)\]", r.text)
    assert m and int(m.group(1)) > before
    # CLOSE then UNSELECT keep QRESYNC on (RFC 5161: enabled for the session).
    c.ok("CLOSE")
    append(c, "INBOX", message("later"))
    r = c.ok("SELECT INBOX")
    assert r.ok_code("HIGHESTMODSEQ") is not None
    c.ok("UNSELECT")
    assert c.ok("STATUS INBOX (HIGHESTMODSEQ MESSAGES)").untagged[0].startswith(
        b'STATUS "INBOX" (HIGHESTMODSEQ ')
