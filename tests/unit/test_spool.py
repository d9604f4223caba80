"""relay/spool.py: the durable spool -- accept, record, load, remove; what a crash or a corrupt
file leaves behind; a full disk; file modes; the daemon's lock."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.relay.spool import (
    MAGIC,
    Spool,
    SpoolBusy,
    SpoolEntry,
    SpoolError,
    SpoolRecipient,
    new_id,
    notice_id,
)
from mailkeep.store.base import DeliveryError, DiskFull
from tests.support.fullfs import SmallFs, small_tmpfs

__all__ = ["small_tmpfs"]  # the fixture, used by name below

MESSAGE = b"From: alice@example.test\r\nSubject: hello\r\n\r\nbody\r\n"


def entry(entry_id: str | None = None, **kwargs: object) -> SpoolEntry:
    values: dict[str, object] = {
        "id": entry_id or new_id(),
        "mail_from": "alice@example.test",
        "recipients": [SpoolRecipient("bob@example.test", "local", account="bob"),
                       SpoolRecipient("carol@remote.example", "remote",
                                      notify=["FAILURE", "DELAY"],
                                      orcpt=["rfc822", "carol@remote.example"])],
        "arrival": 1_800_000_000.25,
        "size": len(MESSAGE),
    }
    values.update(kwargs)
    return SpoolEntry(**values)  # type: ignore[arg-type]


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.prepare()
    return s


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: any mode we get is the one we asked for, not one the umask trimmed."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- accept / load / record / remove -------------------------------------------------------------

def test_accept_then_load_gives_the_same_entry_and_message(spool: Spool) -> None:
    e = entry(ret="HDRS", envid="QQ+2Bid", smtputf8=True, source={"listener": "submission"})
    spool.accept(e, MESSAGE)
    assert spool.ids() == [e.id]
    loaded = spool.load(e.id)
    assert loaded == e
    assert loaded.recipients[1].notify == ["FAILURE", "DELAY"]
    assert spool.message(e.id) == MESSAGE
    assert list(spool.incoming.iterdir()) == []  # the tmp file became the entry


def test_the_file_is_magic_envelope_message(spool: Spool) -> None:
    e = entry()
    spool.accept(e, MESSAGE)
    data = (spool.queue / e.id).read_bytes()
    assert data.startswith(MAGIC)
    line, _, rest = data[len(MAGIC):].partition(b"\n")
    assert json.loads(line)["id"] == e.id
    assert rest == MESSAGE


def test_accept_never_replaces_an_entry(spool: Spool) -> None:
    e = entry()
    spool.accept(e, MESSAGE)
    (spool.incoming / e.id).write_bytes(b"half")  # a leftover of the same name
    with pytest.raises(DeliveryError):
        spool.accept(e, b"other")
    assert spool.message(e.id) == MESSAGE


def test_recorded_outcomes_are_applied_in_order(spool: Spool) -> None:
    e = entry()
    spool.accept(e, MESSAGE)
    spool.record(e.id, [{"i": 0, "status": "delivered", "reply": "250 2.0.0 ok",
                         "dsn_status": "2.0.0", "remote_mta": ""},
                        {"i": 1, "status": "pending", "reply": "451 4.4.1 later",
                         "dsn_status": "4.4.1", "remote_mta": "mx.remote.example"}])
    spool.record(e.id, [{"attempts": 1, "next": 1_800_000_060.0}])
    spool.record(e.id, [{"delay_notified": True}, {"hold": True}])
    spool.record(e.id, [])  # nothing: no file change
    loaded = spool.load(e.id)
    assert [r.status for r in loaded.recipients] == ["delivered", "pending"]
    assert loaded.recipients[1].reply == "451 4.4.1 later"
    assert loaded.recipients[1].remote_mta == "mx.remote.example"
    assert loaded.pending() == [1] and not loaded.done()
    assert (loaded.attempts, loaded.next_attempt) == (1, 1_800_000_060.0)
    assert loaded.delay_notified and loaded.hold
    spool.record(e.id, [{"hold": False}, {"i": 1, "status": "failed", "reply": "550 5.1.1 no"}])
    loaded = spool.load(e.id)
    assert not loaded.hold and loaded.done()
    assert loaded.recipients[1].dsn_status == "4.4.1"  # kept: not in the last outcome


def test_notices_are_owed_until_logged_done(spool: Spool) -> None:
    # A report is logged with the failure that calls for it, then logged done once its DSN
    # is spooled: in between, the entry is done but not finished (it must not be removed).
    e = entry()
    spool.accept(e, MESSAGE)
    spool.record(e.id, [{"i": 0, "status": "delivered"},
                        {"i": 1, "status": "failed", "reply": "550 5.1.1 no"},
                        {"notice": 0, "action": "failed", "rcpts": [1], "at": 1_800_000_010.5}])
    loaded = spool.load(e.id)
    assert loaded.done() and not loaded.finished()
    (owed,) = loaded.owed_notices()
    assert (owed.n, owed.action, owed.recipients, owed.at) == (0, "failed", [1], 1_800_000_010.5)
    spool.record(e.id, [{"notice": 0, "action": "failed", "rcpts": [1], "at": 1.0},  # a replay
                        {"notice": 1, "action": "delivered", "rcpts": [0, 9], "at": 2.0},
                        {"notice_done": 0}, {"notice_done": 7}])
    loaded = spool.load(e.id)
    assert [(n.n, n.done, n.at) for n in loaded.notices] == [(0, True, 1_800_000_010.5),
                                                             (1, False, 2.0)]
    assert loaded.notices[1].recipients == [0]  # an index past the recipients is dropped
    spool.record(e.id, [{"notice_done": 1}])
    assert spool.load(e.id).finished()


def test_a_notice_id_is_fixed_and_never_a_new_id() -> None:
    base = new_id()
    assert notice_id(base, 0) == notice_id(base, 0) == base + "0000"
    assert notice_id(base, 0) != notice_id(base, 1)
    assert len(notice_id(base, 300)) != len(new_id()) and len(notice_id(base, 300)) <= 64
    assert all(c in "0123456789abcdef" for c in notice_id(base, 65535))


def test_outcome_for_a_recipient_that_does_not_exist_is_ignored(spool: Spool) -> None:
    e = entry()
    spool.accept(e, MESSAGE)
    spool.record(e.id, [{"i": 7, "status": "delivered"}, {"i": -1, "status": "delivered"}])
    assert spool.load(e.id).pending() == [0, 1]


def test_remove_forgets_entry_and_log(spool: Spool) -> None:
    e = entry()
    spool.accept(e, MESSAGE)
    spool.record(e.id, [{"hold": True}])
    spool.remove(e.id)
    assert spool.ids() == []
    assert list(spool.queue.iterdir()) == []
    spool.remove(e.id)  # twice: no error
    with pytest.raises(SpoolError, match="gone"):
        spool.load(e.id)


def test_ids_are_sorted_by_arrival_and_skip_other_names(spool: Spool) -> None:
    ids = [new_id(t) for t in (1_800_000_002.0, 1_800_000_000.0, 1_800_000_001.0)]
    for i in ids:
        spool.accept(entry(i), MESSAGE)
    spool.record(ids[0], [{"hold": True}])
    (spool.queue / "README").write_text("not an entry")
    (spool.queue / ".hidden").write_text("")
    assert spool.ids() == sorted(ids)
    assert spool.ids()[0] == ids[1]  # the oldest first


def test_new_ids_are_unique_and_hex() -> None:
    ids = {new_id(1_800_000_000.0) for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 19 and int(i, 16) >= 0 for i in ids)


# -- crashes and corruption --------------------------------------------------------------------

def test_torn_last_log_line_is_ignored(spool: Spool) -> None:
    e = entry()
    spool.accept(e, MESSAGE)
    spool.record(e.id, [{"i": 0, "status": "delivered", "reply": "250 ok"}])
    with (spool.queue / f"{e.id}.log").open("ab") as f:
        f.write(b'{"i":1,"status":"deliv')  # a crash in the middle of an append
    loaded = spool.load(e.id)
    assert [r.status for r in loaded.recipients] == ["delivered", "pending"]
    # The next append (after the restart) must not be glued to the torn fragment, or it
    # would be lost with it and its recipient delivered again after the next restart.
    spool.record(e.id, [{"i": 1, "status": "failed", "reply": "550 no"}])
    assert [r.status for r in spool.load(e.id).recipients] == ["delivered", "failed"]


@pytest.mark.parametrize("line", [
    b"5", b'"text"', b"[1, 2]", b"null", b"true",                  # JSON, not an outcome
    b'{"i": "x", "status": "delivered"}', b'{"i": null}',          # wrong types
    b'{"attempts": "many"}', b'{"attempts": 1, "next": "soon"}',
    b'{"i": 0, "status": "exploded"}', b'{"i": 0, "status": 5}',
    b'{"i": 0, "reply": ["not", "text"]}',
    b'{"notice": 0, "action": "exploded", "rcpts": [1], "at": 1}',  # notices
    b'{"notice": 0, "action": "failed", "rcpts": 1, "at": 1}',
    b'{"notice": 0, "action": "failed", "rcpts": [true], "at": 1}',
    b'{"notice": "0", "action": "failed", "rcpts": [1], "at": 1}',
    b'{"notice": 0, "action": "failed", "rcpts": [1]}',
    b'{"notice_done": "all"}',
])
def test_a_log_line_that_is_no_outcome_is_skipped(spool: Spool, line: bytes) -> None:
    e = entry()
    spool.accept(e, MESSAGE)
    with (spool.queue / f"{e.id}.log").open("ab") as f:
        f.write(line + b"\n")
    spool.record(e.id, [{"i": 1, "status": "failed", "reply": "550 5.1.1 no"}])
    loaded = spool.load(e.id)
    assert loaded.recipients[0].status == "pending"
    assert loaded.recipients[1].status == "failed"
    assert isinstance(loaded.attempts, int) and isinstance(loaded.next_attempt, float)


def write_raw(spool: Spool, entry_id: str, data: bytes) -> None:
    (spool.queue / entry_id).write_bytes(data)


@pytest.mark.parametrize("data", [
    b"",                                                    # empty
    b"MAILKEEP-SPOOL 2\n{}\n",                              # another format
    b"From: someone\r\n\r\nnot a spool file",
    MAGIC,                                                  # no envelope
    MAGIC + b'{"id": "x"',                                  # truncated, no newline
    MAGIC + b"not json\n" + MESSAGE,
    MAGIC + b"{}\n" + MESSAGE,                              # keys missing
    MAGIC + b"[]\n" + MESSAGE,                              # JSON, but not an object
    MAGIC + b'"envelope"\n' + MESSAGE,
    MAGIC + b"null\n" + MESSAGE,
    MAGIC + b"12\n" + MESSAGE,
])
def test_corrupt_envelope_is_a_spool_error(spool: Spool, data: bytes) -> None:
    entry_id = new_id()
    write_raw(spool, entry_id, data)
    with pytest.raises(SpoolError):
        spool.load(entry_id)


def good_envelope() -> dict[str, object]:
    return json.loads(entry("00000000000000000000").to_json())  # type: ignore[no-any-return]


@pytest.mark.parametrize(("path", "value"), [
    (("colour",), "blue"),                     # an unknown key
    (("recipients",), "bob@example.test"),     # not a list of recipients
    (("recipients",), [1, 2]),
    (("recipients", 0, "kind"), "elsewhere"),
    (("recipients", 0, "status"), "exploded"),
    (("recipients", 0, "address"), 5),
    (("recipients", 0, "notify"), "FAILURE"),
    (("arrival",), "yesterday"),
    (("size",), "big"),
    (("attempts",), 1.5),
    (("mail_from",), None),
    (("source",), ["listener"]),
    (("hold",), "no"),
    (("notices",), "none"),
    (("notices",), [{"n": 0, "action": "failed", "recipients": [1], "at": 1.0}]),  # log only
])
def test_an_envelope_of_the_wrong_shape_is_a_spool_error(
        spool: Spool, path: tuple[object, ...], value: object) -> None:
    raw = good_envelope()
    target: object = raw
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    entry_id = new_id()
    write_raw(spool, entry_id, MAGIC + json.dumps(raw).encode() + b"\n" + MESSAGE)
    with pytest.raises(SpoolError):
        spool.load(entry_id)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_envelope_bytes_load_or_raise_spool_error(tmp_path_factory: pytest.TempPathFactory,
                                                      line: bytes) -> None:
    s = Spool(tmp_path_factory.mktemp("spool"))
    s.prepare()
    write_raw(s, "0" * 19, MAGIC + line + b"\n" + MESSAGE)
    try:
        loaded = s.load("0" * 19)
    except SpoolError:
        return
    assert isinstance(loaded, SpoolEntry)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["i", "status", "reply", "attempts",
                                                       "next", "hold", "delay_notified",
                                                       "dsn_status", "remote_mta", "x"]),
                                      children, max_size=4),
                    max_leaves=8))
def test_any_json_log_line_is_applied_or_skipped(tmp_path_factory: pytest.TempPathFactory,
                                                 value: object) -> None:
    s = Spool(tmp_path_factory.mktemp("spool"))
    s.prepare()
    e = entry()
    s.accept(e, MESSAGE)
    with (s.queue / f"{e.id}.log").open("ab") as f:
        f.write(json.dumps(value).encode() + b"\n")
    loaded = s.load(e.id)
    assert all(r.status in ("pending", "delivered", "relayed", "failed")
               and isinstance(r.reply, str) for r in loaded.recipients)
    assert isinstance(loaded.attempts, int)
    assert isinstance(loaded.next_attempt, float)


def test_entries_yields_the_readable_and_the_errors(spool: Spool) -> None:
    good = entry()
    spool.accept(good, MESSAGE)
    bad = new_id()
    write_raw(spool, bad, MAGIC + b"garbage\n")
    found = list(spool.entries())
    assert [x for x in found if isinstance(x, SpoolEntry)] == [good]
    errors = [x for x in found if isinstance(x, SpoolError)]
    assert len(errors) == 1 and bad in str(errors[0])


def test_prepare_removes_incoming_leftovers_and_keeps_the_queue(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    assert s.prepare() == 0
    e = entry()
    s.accept(e, MESSAGE)
    (s.incoming / new_id()).write_bytes(MAGIC + b'{"half')   # a crash mid-accept
    (s.incoming / "control.1.ab").write_bytes(b"")           # a request being written
    assert s.prepare() == 2
    assert list(s.incoming.iterdir()) == []
    assert s.ids() == [e.id]


# -- file modes --------------------------------------------------------------------------------

def test_modes_are_private_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    s = Spool(tmp_path / "data" / "spool")
    s.prepare()
    for folder in (s.root, s.incoming, s.queue, s.control):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    e = entry()
    s.accept(e, MESSAGE)
    s.record(e.id, [{"hold": True}])
    assert (s.queue / e.id).stat().st_mode & 0o777 == 0o600
    assert (s.queue / f"{e.id}.log").stat().st_mode & 0o777 == 0o600
    fd = s.lock()
    os.close(fd)
    assert s.lock_path.stat().st_mode & 0o777 == 0o600


# -- a full disk -------------------------------------------------------------------------------

def test_disk_full_is_disk_full_and_leaves_nothing(small_tmpfs: SmallFs) -> None:
    s = Spool(small_tmpfs.path / "spool")
    s.prepare()
    small_tmpfs.fill()
    e = entry()
    with pytest.raises(DiskFull):
        s.accept(e, MESSAGE * 1000)
    assert list(s.queue.iterdir()) == []
    assert list(s.incoming.iterdir()) == []
    small_tmpfs.empty()
    s.accept(e, MESSAGE)  # space is back: the same entry goes in
    assert s.load(e.id) == e


def test_a_message_larger_than_the_space_left_is_disk_full(small_tmpfs: SmallFs) -> None:
    s = Spool(small_tmpfs.path / "spool")
    s.prepare()
    big = b"x" * (small_tmpfs.available() + 65536)
    with pytest.raises(DiskFull):
        s.accept(entry(), big)
    assert s.ids() == [] and list(s.incoming.iterdir()) == []


# -- the daemon's lock --------------------------------------------------------------------------

def test_the_lock_is_exclusive_and_names_its_holder(spool: Spool) -> None:
    fd = spool.lock()
    try:
        with pytest.raises(SpoolBusy, match=f"pid {os.getpid()}"):
            spool.lock()  # flock: a second open file description conflicts, even here
    finally:
        os.close(fd)
    os.close(spool.lock())  # let go: it can be had again


def test_lock_waits_for_a_holder_that_lets_go(spool: Spool) -> None:
    fd = spool.lock()
    taken = threading.Event()

    def let_go() -> None:
        taken.wait(10)
        os.close(fd)

    thread = threading.Thread(target=let_go)
    thread.start()
    taken.set()
    try:
        second = spool.lock(wait=30)  # returns once the first holder closed its descriptor
    finally:
        thread.join(10)
    os.close(second)


def test_lock_creates_the_spool_folder(tmp_path: Path) -> None:
    s = Spool(tmp_path / "new" / "spool")
    fd = s.lock()
    os.close(fd)
    assert s.lock_path.read_text().strip() == str(os.getpid())
