"""relay/queue_admin.py on a real spool without a daemon (direct changes), with a daemon that
holds the lock but never answers, and its rendering. The CLI with a real daemon is in
tests/integration/test_queue_cli.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.relay import queue_admin as qa
from mailkeep.relay.spool import Spool, SpoolEntry, SpoolRecipient, new_id

NOW = 1_800_000_000.0
MESSAGE = (b"Received: from x\r\n\tby y\r\nFrom: alice@example.test\r\n"
           b"Subject: hello \x1b[31mred\x1b[0m \xc2\x9b2J\r\n\r\nthe body\r\nline 2\r\n")


def put(spool: Spool, *, age: float = 60.0, hold: bool = False,
        mail_from: str = "alice@example.test",
        reply: str = "451 4.4.3 DNS lookup of remote.example MX failed: timed out",
        attempts: int = 1) -> SpoolEntry:
    arrival = NOW - age
    e = SpoolEntry(id=new_id(arrival), mail_from=mail_from, arrival=arrival,
                   size=len(MESSAGE), recipients=[
                       SpoolRecipient("bob@example.test", "local", account="bob"),
                       SpoolRecipient("carol@remote.example", "remote",
                                      notify=["FAILURE"], orcpt=["rfc822", "carol@remote.example"]),
                   ], source={"listener": "submission", "client": "192.0.2.1", "user": "alice"})
    spool.accept(e, MESSAGE)
    spool.record(e.id, [{"i": 0, "status": "delivered", "reply": "250 2.0.0 delivered to bob",
                         "dsn_status": "2.0.0", "remote_mta": ""},
                        {"i": 1, "status": "pending", "reply": reply, "dsn_status": "4.4.3",
                         "remote_mta": ""},
                        {"attempts": attempts, "next": NOW + 840.0}])
    if hold:
        spool.record(e.id, [{"hold": True}])
    return spool.load(e.id)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.prepare()
    return s


@pytest.fixture
def stuck_daemon(spool: Spool) -> Iterator[int]:
    """A daemon that holds the spool's lock and never looks at control/ (hung)."""
    fd = spool.lock()
    try:
        yield fd
    finally:
        os.close(fd)


# -- formatting --------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h00m"), (7500, "2h05m"),
    (47 * 3600 + 59 * 60, "47h59m"), (48 * 3600, "2d00h"), (5 * 86400 + 3 * 3600, "5d03h"),
    (-5, "0s"),
])
def test_age_text(seconds: float, text: str) -> None:
    assert qa.age_text(seconds) == text


@pytest.mark.parametrize(("octets", "text"), [(0, "0"), (9999, "9999"), (10_000, "10k"),
                                              (2_500_000, "2500k"), (26_214_400, "26M")])
def test_size_text(octets: int, text: str) -> None:
    assert qa.size_text(octets) == text


def test_shown_escapes_terminal_controls_but_tab() -> None:
    assert qa.shown("a\tb") == "a\tb"
    assert qa.shown("\x1b[31m") == "\\x1b[31m"
    assert qa.shown("\x9b2J\x7f\x00\n") == "\\x9b2J\\x7f\\x00\\x0a"
    assert qa.shown("jörg 用户") == "jörg 用户"


# -- reading --------------------------------------------------------------------------------------

def test_no_spool_yet_is_an_empty_queue(tmp_path: Path) -> None:
    lst = qa.listing(Spool(tmp_path / "nothing"), now=NOW)
    assert lst.entries == [] and lst.unreadable == [] and not lst.daemon.running
    assert qa.render_listing(lst) == ["the queue is empty; the daemon is not running"]


def test_listing_lines_and_summary(spool: Spool) -> None:
    old = put(spool, age=7500.0)
    held = put(spool, age=30.0, hold=True, mail_from="", reply="x" * 200)
    bad = new_id(NOW)
    (spool.queue / bad).write_bytes(b"garbage")
    lst = qa.listing(spool, now=NOW)
    assert [e.id for e in lst.entries] == [old.id, held.id]
    assert [i for i, _ in lst.unreadable] == [bad]
    lines = qa.render_listing(lst)
    assert lines[0].split() == ["ID", "AGE", "SIZE", "FROM", "RCPTS", "TRIES", "NEXT", "HOLD",
                                "LAST", "REPLY"]
    first = lines[1].split(maxsplit=8)
    assert first[:8] == [old.id, "2h05m", str(len(MESSAGE)), "<alice@example.test>", "1/2",
                         "1", "in", "14m"]
    assert first[8].split(maxsplit=1) == ["-", "451 4.4.3 DNS lookup of remote.example MX "
                                                "failed: timed out"]
    second = lines[2].split()
    assert second[:8] == [held.id, "30s", str(len(MESSAGE)), "<>", "1/2", "1", "-", "held"]
    assert lines[2].endswith("x" * 57 + "...")                 # cut to SHORT_REPLY
    assert len(lines[2].split("  ")[-1]) == qa.SHORT_REPLY
    assert lines[3].startswith(f"{bad}  UNREADABLE: ")
    assert lines[-1] == ("3 messages, oldest 2h05m, 1 on hold, 1 unreadable; "
                         "the daemon is not running")
    # Columns line up: every row's FROM starts where the header's does.
    column = lines[0].index("FROM")
    assert all(line[column] == "<" for line in lines[1:3])


def test_listing_json(spool: Spool) -> None:
    e = put(spool, age=100.0)
    data = json.loads(qa.listing_json(qa.listing(spool, now=NOW)))
    assert data["count"] == 1 and data["oldest_age"] == 100.0
    assert data["daemon_running"] is False and data["unreadable"] == []
    m = data["messages"][0]
    assert (m["id"], m["mail_from"], m["recipients_pending"], m["recipients_total"]) == (
        e.id, "alice@example.test", 1, 2)
    assert (m["attempts"], m["next_attempt"], m["hold"]) == (1, NOW + 840.0, False)
    assert m["last_reply"].startswith("451 4.4.3")
    assert [r["status"] for r in m["recipients"]] == ["delivered", "pending"]


def test_show_renders_envelope_recipients_header_and_escapes(spool: Spool) -> None:
    e = put(spool, age=100.0)
    header, body = qa.message_parts(spool, e.id)
    assert body == b"the body\r\nline 2\r\n"
    lines = qa.render_entry(qa.load(spool, e.id), header, None, NOW)
    text = "\n".join(lines)
    assert f"id:        {e.id}" in lines
    assert "from:      <alice@example.test>" in lines
    assert "source:    client 192.0.2.1, listener submission, user alice" in lines
    assert "attempts:  1, next in 14m (2027-01-15 08:14:00 UTC)" in lines
    assert "recipients (1 of 2 pending):" in lines
    assert "  <carol@remote.example>  pending 4.4.3  (remote)" in lines
    assert "      NOTIFY=FAILURE ORCPT=rfc822;carol@remote.example" in lines
    assert "  <bob@example.test>  delivered 2.0.0  (local, account bob)" in lines
    assert "  Subject: hello \\x1b[31mred\\x1b[0m \\x9b2J" in lines   # no escape reaches a tty
    assert "  \tby y" in lines                                         # folding kept
    assert "\x1b" not in text and "\x9b" not in text
    assert "the body" not in text
    with_body = qa.render_entry(qa.load(spool, e.id), header, body, NOW)
    assert with_body[-3:] == ["the body", "line 2", ""]


@pytest.mark.parametrize("given", ["nope", "0123456789abcdef0", "../queue", "/etc/passwd",
                                   "", "..", ".lock"])
def test_unknown_and_hostile_ids_are_unknown_entries(spool: Spool, given: str) -> None:
    put(spool)
    with pytest.raises(qa.UnknownEntry):
        qa.load(spool, given)
    for op in ("delete", "hold", "release", "retry"):
        with pytest.raises(qa.UnknownEntry):
            qa.act(spool, op, given)  # type: ignore[arg-type]
    assert len(spool.ids()) == 1


def test_an_outside_file_is_never_deleted(spool: Spool, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    with pytest.raises(qa.UnknownEntry):
        qa.act(spool, "delete", "../../victim")
    assert victim.read_text() == "keep me"


def test_unreadable_entry_can_be_listed_and_deleted_but_not_held(spool: Spool) -> None:
    bad = new_id(NOW)
    (spool.queue / bad).write_bytes(b"garbage")
    with pytest.raises(qa.QueueError, match="delete"):
        qa.load(spool, bad)
    with pytest.raises(qa.QueueError):
        qa.act(spool, "hold", bad)
    assert qa.act(spool, "delete", bad).message == f"{bad} deleted"
    assert spool.ids() == []


# -- changing, no daemon: the spool directly -------------------------------------------------------

def test_hold_release_retry_delete_directly(spool: Spool) -> None:
    e = put(spool, attempts=3)
    out = qa.act(spool, "hold", e.id)
    assert not out.via_daemon and out.message == f"{e.id} put on hold"
    assert spool.load(e.id).hold
    assert qa.act(spool, "hold", e.id).message == f"{e.id} is already on hold"
    with pytest.raises(qa.QueueError, match="release"):
        qa.act(spool, "retry", e.id)
    assert "tried at once" in qa.act(spool, "release", e.id).message
    loaded = spool.load(e.id)
    assert not loaded.hold and loaded.next_attempt == 0 and loaded.attempts == 3
    assert qa.act(spool, "release", e.id).message == f"{e.id} is not on hold"
    spool.record(e.id, [{"attempts": 3, "next": NOW + 900}])
    qa.act(spool, "retry", e.id)
    loaded = spool.load(e.id)
    assert (loaded.attempts, loaded.next_attempt) == (3, 0.0)  # due at once, count kept
    assert qa.act(spool, "delete", e.id).message == f"{e.id} deleted"
    assert spool.ids() == [] and list(spool.queue.iterdir()) == []


def test_retry_all_skips_held_messages(spool: Spool) -> None:
    waiting = [put(spool), put(spool)]
    held = put(spool, hold=True)
    out = qa.act(spool, "retry", qa.ALL)
    assert out.message.startswith("2 message(s)")
    assert [spool.load(e.id).next_attempt for e in waiting] == [0.0, 0.0]
    assert spool.load(held.id).next_attempt == NOW + 840.0


def test_retry_all_with_nothing_to_do(spool: Spool) -> None:
    assert qa.act(spool, "retry", qa.ALL).message == "nothing to retry: the queue is empty"
    put(spool, hold=True)
    assert qa.act(spool, "retry", qa.ALL).message == ("nothing to retry: all 1 messages are "
                                                     "on hold")
    with pytest.raises(qa.QueueError):
        qa.act(spool, "delete", qa.ALL)


def test_direct_change_takes_the_lock_a_daemon_would_need(spool: Spool) -> None:
    # A spool that a daemon of this version used has a lock file: the direct change must
    # hold it, so a daemon starting meanwhile waits instead of loading a half-changed entry.
    os.close(spool.lock())
    e = put(spool)
    seen: list[bool] = []
    original = spool.record

    def record_and_probe(entry_id: str, outcomes: list[dict[str, object]]) -> None:
        seen.append(qa.daemon_state(spool).running)  # someone holds it: us
        original(entry_id, outcomes)

    spool.record = record_and_probe  # type: ignore[method-assign]
    qa.act(spool, "hold", e.id)
    assert seen == [True]
    assert not qa.daemon_state(spool).running  # and let go after


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_leaves_the_log_to_the_spool_owner(spool: Spool) -> None:
    e = put(spool)
    (spool.queue / f"{e.id}.log").unlink()
    os.chown(spool.queue, 4321, 4321)
    qa.act(spool, "hold", e.id)
    st = (spool.queue / f"{e.id}.log").stat()
    assert (st.st_uid, st.st_gid) == (4321, 4321)


# -- changing, with a daemon that does not answer --------------------------------------------------

def test_a_daemon_that_does_not_answer(spool: Spool, stuck_daemon: int) -> None:
    e = put(spool)
    state = qa.daemon_state(spool)
    assert state.running and state.pid == os.getpid()
    for op in ("hold", "delete", "retry"):
        with pytest.raises(qa.NoAnswer, match="did not answer"):
            qa.act(spool, op, e.id, wait=0.2)  # type: ignore[arg-type]
        # Withdrawn: nothing waits in control/ to surprise anyone later; nothing changed.
        assert list(spool.control.iterdir()) == []
        assert list(spool.incoming.iterdir()) == []
        loaded = spool.load(e.id)
        assert not loaded.hold and loaded.next_attempt == NOW + 840.0
    with pytest.raises(qa.NoAnswer):
        qa.act(spool, "retry", qa.ALL, wait=0.2)
    assert list(spool.control.iterdir()) == []


def test_request_file_names_and_atomicity(spool: Spool, stuck_daemon: int) -> None:
    e = put(spool)
    path = qa.request(spool, "hold", e.id)
    assert path == spool.control / f"hold-{e.id}"
    assert path.stat().st_mode & 0o777 == 0o600
    assert list(spool.incoming.iterdir()) == []  # the tmp name is gone: renamed
    assert qa.request(spool, "retry", qa.ALL).name == "retry-all"


def test_a_request_taken_at_the_last_moment_counts(spool: Spool, stuck_daemon: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon removes the file just as the wait runs out: not withdrawn, not an error.
    e = put(spool)
    ticks = iter([0.0, 10.0])
    clock_calls: list[float] = []

    def clock() -> float:
        value = next(ticks, 10.0)
        clock_calls.append(value)
        if value >= 10.0:
            for f in spool.control.iterdir():
                f.unlink()  # taken
        return value

    monkeypatch.setattr(qa, "_visible", lambda *_: True)
    out = qa.act(spool, "hold", e.id, wait=5.0, clock=clock)
    assert out.via_daemon and "by the daemon" in out.message
    assert clock_calls  # the deadline was reached


def test_daemon_state_probe_leaves_the_lock_free(spool: Spool) -> None:
    os.close(spool.lock())
    assert not qa.daemon_state(spool).running
    fd = spool.lock()  # the probe did not keep it
    os.close(fd)
