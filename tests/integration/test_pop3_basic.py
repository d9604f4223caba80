"""POP3 over real TLS (995-style implicit listener) with poplib, asyncio and uvloop."""

from __future__ import annotations

import os
import poplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.proto.sasl import encode_plain
from tests.support.daemon import RunningDaemon, start_thread_daemon
from tests.support.pop3 import RawPop3, message, running_pop3_daemon, submit


@pytest.fixture
def pop3d(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_pop3_daemon(tmp_path, ca, loop_kind)


def login(d: RunningDaemon, user: str = "bob", pw: str = "bob-secret-pw-2") -> poplib.POP3_SSL:
    p = d.pop3s()
    p.user(user)
    p.pass_(pw)
    return p


def stored(d: RunningDaemon, account: str = "bob") -> list[bytes]:
    return [f.read_bytes() for f in d.maildir_files(account)]


def test_submitted_message_is_retrieved_byte_for_byte(pop3d: RunningDaemon) -> None:
    submit(pop3d, message("byte for byte"))
    [on_disk] = stored(pop3d)
    p = login(pop3d)
    resp, lines, _octets = p.retr(1)
    assert resp == f"+OK {len(on_disk)} octets".encode()
    assert b"\r\n".join(lines) + b"\r\n" == on_disk
    assert lines[0] == b"Return-Path: <alice@example.test>"  # RFC 5321 §4.4
    assert lines[1].startswith(b"Received: from ")
    assert b"Subject: byte for byte" in lines
    p.quit()


def test_every_transaction_command(pop3d: RunningDaemon) -> None:
    for i in range(3):
        submit(pop3d, message(f"m{i}", b"line 1\r\nline 2\r\nline 3\r\n"))
    sizes = [len(b) for b in stored(pop3d)]
    p = login(pop3d)
    assert p.stat() == (3, sum(sizes))
    resp, listing, _ = p.list()
    assert resp.startswith(b"+OK 3 messages")
    assert sorted(int(x.split()[1]) for x in listing) == sorted(sizes)
    assert p.list(2).startswith(b"+OK 2 ")
    resp, uidls, _ = p.uidl()
    ids = [x.split()[1] for x in uidls]
    assert len(set(ids)) == 3 and all(len(x) == 16 for x in ids)
    assert p.uidl(3) == b"+OK 3 " + ids[2]
    resp, top, _ = p.top(1, 1)
    assert top[-2:] == [b"", b"line 1"]
    assert p.noop() == b"+OK"
    assert p.dele(1).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(1)
    assert p.stat()[0] == 2
    assert p.rset().startswith(b"+OK")
    assert p.stat()[0] == 3
    with pytest.raises(poplib.error_proto, match="no message 4"):
        p.list(4)
    with pytest.raises(poplib.error_proto, match="Unknown command"):
        p._shortcmd("APOP bob 0123456789abcdef0123456789abcdef")
    assert p.quit().startswith(b"+OK")
    assert len(stored(pop3d)) == 3


def test_dele_then_quit_deletes(pop3d: RunningDaemon) -> None:
    submit(pop3d, message("a"))
    submit(pop3d, message("b"))
    p = login(pop3d)
    p.dele(1)
    assert p.quit() == b"+OK Logging out, messages deleted."
    [left] = stored(pop3d)
    assert b"Subject: b" in left


def test_dele_then_dropped_connection_deletes_nothing(pop3d: RunningDaemon) -> None:
    submit(pop3d, message("a"))
    p = login(pop3d)
    p.dele(1)
    p.file.close()  # no QUIT: no UPDATE state (RFC 1939 §6)
    p.sock.shutdown(socket.SHUT_RDWR)
    p.sock.close()
    time.sleep(0.3)
    assert len(stored(pop3d)) == 1
    p2 = login(pop3d)  # the lock was released
    assert p2.stat()[0] == 1
    p2.quit()


def test_retr_marks_seen_like_dovecot_and_top_does_not(pop3d: RunningDaemon) -> None:
    submit(pop3d, message("a"))
    submit(pop3d, message("b"))
    p = login(pop3d)
    p.top(1, 0)
    p.retr(2)
    p.quit()
    new = os.listdir(pop3d.data_dir / "mail/bob/new")
    cur = os.listdir(pop3d.data_dir / "mail/bob/cur")
    assert len(new) == 1 and len(cur) == 1 and cur[0].endswith(":2,S")
    p = login(pop3d)  # the UIDs survive the move
    assert p.stat()[0] == 2
    p.quit()


def test_second_session_gets_in_use(pop3d: RunningDaemon) -> None:
    first = login(pop3d)
    second = pop3d.pop3s()
    second.user("bob")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_("bob-secret-pw-2")
    other = login(pop3d, "alice", "alice-secret-pw")  # another mailbox is not affected
    other.quit()
    first.quit()
    second.user("bob")
    assert second.pass_("bob-secret-pw-2").startswith(b"+OK")
    second.quit()


def test_auth_plain_and_login_over_tls(pop3d: RunningDaemon) -> None:
    p = pop3d.pop3s()
    assert p._shortcmd("AUTH PLAIN " + encode_plain("bob@example.test", "bob-secret-pw-2")
                       ).startswith(b"+OK Logged in")
    p.quit()
    p = pop3d.pop3s()
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd("AUTH PLAIN " + encode_plain("bob", "wrong"))
    p.quit()


def test_dot_stuffing_round_trip(pop3d: RunningDaemon) -> None:
    body = b".starts with a dot\r\n..two dots\r\n.\r\nnormal\r\n"
    submit(pop3d, message("dots", body))
    [on_disk] = stored(pop3d)
    assert b"\r\n.starts with a dot\r\n..two dots\r\n.\r\n" in on_disk  # stored un-stuffed
    p = login(pop3d)
    _, lines, _ = p.retr(1)  # poplib un-stuffs
    assert b"\r\n".join(lines) + b"\r\n" == on_disk
    raw = RawPop3(pop3d, tls=True)
    raw.line()
    p.quit()
    raw.send(b"USER bob\r\nPASS bob-secret-pw-2\r\nRETR 1\r\n")
    raw.line(), raw.line(), raw.line()
    wire = raw.multiline()
    assert b"..starts with a dot" in wire and b"...two dots" in wire and b".." in wire
    raw.close()


def test_login_right_after_quit_finds_the_maildrop_free(pop3d: RunningDaemon) -> None:
    # The lock of a session is let go before its QUIT is answered: a client that logs in again
    # the moment it reads +OK is not told [IN-USE] by its own previous session.
    submit(pop3d, message("again"))
    for _ in range(10):
        p = login(pop3d)
        raw = RawPop3(pop3d, tls=True)
        raw.line()
        p.quit()
        raw.send(b"USER bob\r\nPASS bob-secret-pw-2\r\n")
        assert raw.line().startswith(b"+OK")
        assert raw.line().startswith(b"+OK"), "maildrop still locked after QUIT was answered"
        raw.send(b"QUIT\r\n")
        raw.line()
        raw.close()


def test_four_megabyte_message(pop3d: RunningDaemon) -> None:
    line = b"0123456789" * 7 + b"\r\n"
    body = line * (4 * 1024 * 1024 // len(line))
    submit(pop3d, message("big", body))
    [on_disk] = stored(pop3d)
    assert len(on_disk) > 4_000_000
    p = login(pop3d)
    assert p.list(1) == f"+OK 1 {len(on_disk)}".encode()
    _, lines, _octets = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == on_disk
    p.quit()


def test_ten_thousand_messages_listed_without_reading_bodies(pop3d: RunningDaemon) -> None:
    new = pop3d.data_dir / "mail/bob/new"
    new.mkdir(parents=True)
    body = b"Subject: x\r\n\r\nbody\r\n"
    # W= claims 1000 octets while the files hold 21: the listing must come from the names.
    for i in range(10_000):
        (new / f"1700000000.M{i}P1Q{i}.host,S=1000,W=1000").write_bytes(body)
    started = time.monotonic()
    p = login(pop3d)
    assert p.stat() == (10_000, 10_000_000)
    _, listing, _ = p.list()
    assert len(listing) == 10_000 and listing[-1] == b"10000 1000"
    _, uidls, _ = p.uidl()
    assert uidls[0].split()[1][:8] == b"00000001" and uidls[-1].split()[1][:8] == b"00002710"
    elapsed = time.monotonic() - started
    _, lines, _ = p.retr(10_000)
    assert lines == [b"Subject: x", b"", b"body"]
    p.quit()
    assert (pop3d.data_dir / "mail/bob/dovecot-uidlist").read_bytes().count(b"\n") == 10_001
    print(f"login+STAT+LIST+UIDL of 10,000 messages: {elapsed:.2f}s")


def test_uidl_unchanged_after_restart(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> None:
    gen = running_pop3_daemon(tmp_path, ca, loop_kind)
    d = next(gen)
    submit(d, message("one"))
    submit(d, message("two"))
    p = login(d)
    p.retr(1)  # moves it to cur/: the UIDL must not change
    before = p.uidl()[1]
    p.quit()
    d.stop()
    again = start_thread_daemon(tmp_path / "mailkeep.toml", ca, loop_kind)
    try:
        p = login(again)
        assert p.uidl()[1] == before
        p.quit()
    finally:
        again.stop()
        gen.close()


def test_garbage_and_over_long_lines_over_tls(pop3d: RunningDaemon) -> None:
    raw = RawPop3(pop3d, tls=True)
    assert raw.line() == b"+OK mailkeep ready."
    raw.send(b"\x00\xff\xfe garbage\r\n")
    assert raw.line().startswith(b"-ERR")
    raw.send(b"USER " + b"a" * 5000 + b"\r\n")
    assert raw.line() == b"-ERR Line too long (at most 2048 octets)."
    raw.send(b"USER bob\r\nPASS bob-secret-pw-2\r\nSTAT\r\n")
    assert raw.line() == b"+OK Send your password."
    assert raw.line().startswith(b"+OK Logged in")
    assert raw.line() == b"+OK 0 0"
    raw.close()


def test_bad_command_budget_closes(pop3d: RunningDaemon) -> None:
    raw = RawPop3(pop3d, tls=True)
    raw.line()
    raw.send(b"BOGUS\r\n" * 20)
    replies = [raw.line() for _ in range(21)]
    assert replies[-1] == b"-ERR Too many bad commands, closing."
    assert raw.closed()
