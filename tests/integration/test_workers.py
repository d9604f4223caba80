"""`workers = 2`: one daemon, two worker processes, the limits and the mail shared.

A real `mailkeep serve` subprocess with two workers on SO_REUSEPORT listeners. Each test that
needs connections on both workers opens connections until one lands on each (which worker
serves a connection is read from /proc, tests/support/workers.py). Every wait is bounded;
nothing is timed.
"""

from __future__ import annotations

import os
import poplib
import re
import signal
import smtplib
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from mailkeep.relay import claims
from mailkeep.relay.spool import Spool
from tests.support.daemon import RunningDaemon, start_process_daemon, write_config
from tests.support.dnsstub import DnsStub
from tests.support.imap import RawImap, append, close_all, message, session
from tests.support.relay import daemon_delivery, mailbox_messages, message_ids, mx_zone, spool_ids
from tests.support.upstream import Behaviour, Upstream
from tests.support.wait import eventually
from tests.support.workers import on_worker, serving_pid, worker_pids

WAIT = 30.0


def start(root: Path, ca: trustme.CA, **kw: Any) -> RunningDaemon:
    kw.setdefault("extra_top", {})["workers"] = 2
    config = write_config(root, ca, imap_listeners=True, pop3_listeners=True, **kw)
    return start_process_daemon(config, ca)


@pytest.fixture
def two(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    d = start(tmp_path, ca)
    yield d
    close_all()
    d.stop()


def log_text(d: RunningDaemon) -> str:
    return (d.root / "daemon.log").read_text(errors="replace")


def imap_on(d: RunningDaemon, pid: int, *, plain: bool = False) -> RawImap:
    def connect() -> RawImap:
        return RawImap.plain(d) if plain else RawImap.tls(d)
    c = on_worker(d, pid, connect, lambda c: c.sock, lambda c: c.close())
    c.greeting()
    return c


def pop3_on(d: RunningDaemon, pid: int) -> poplib.POP3_SSL:
    return on_worker(d, pid, d.pop3s, lambda p: p.sock, lambda p: p.close())


def test_two_workers_serve_every_door(two: RunningDaemon) -> None:
    pids = worker_pids(two)
    assert len(set(pids)) == 2 and two.proc is not None and two.proc.pid not in pids
    for pid in pids:
        c = imap_on(two, pid)
        c.login("bob")
        c.ok("SELECT INBOX")
        c.close()
        with smtplib.SMTP_SSL(timeout=10, context=two.client_context()) as s:
            s._host = "mail.example.test"  # type: ignore[attr-defined]
            s.connect("127.0.0.1", two.submissions_port)
            s.login("alice", "alice-secret-pw")
            s.sendmail("alice@example.test", ["bob@example.test"], message(f"via {pid}"))
        p = pop3_on(two, pid)
        p.user("bob")
        p.pass_("bob-secret-pw-2")
        assert p.stat()[0] >= 1
        p.quit()
    assert len(two.maildir_files("bob")) == 2


def test_connections_per_address_are_counted_across_workers(tmp_path: Path,
                                                             ca: trustme.CA) -> None:
    d = start(tmp_path, ca, security={"max_connections_per_ip": 4})
    try:
        a, b = worker_pids(d)
        # Two on each worker: four in all, the address's limit.
        held = [imap_on(d, a, plain=True), imap_on(d, a, plain=True),
                imap_on(d, b, plain=True), imap_on(d, b, plain=True)]
        for _ in range(2):  # the fifth is refused, whichever worker takes it
            fifth = RawImap.plain(d)
            line = fifth.read_response()
            assert line is not None and b"too many connections" in line, line
            assert fifth.closed()
            fifth.close()
        for c in held:
            c.close()
        # Slots come back as connections close: a new one is served again.
        def served() -> bool:
            c = RawImap.plain(d)
            try:
                line = c.read_response()
                return line is not None and line.startswith(b"* OK")
            finally:
                c.close()
        assert eventually(served, WAIT)
    finally:
        close_all()
        d.stop()


def test_login_failures_on_both_workers_block_the_address(tmp_path: Path,
                                                          ca: trustme.CA) -> None:
    d = start(tmp_path, ca, security={"auth_failures_before_block": 4,
                                      "auth_failures_before_delay": 100,
                                      "auth_block_seconds": 600})
    try:
        a, b = worker_pids(d)
        first, second = imap_on(d, a), imap_on(d, b)
        for c in (first, second, first, second):  # two failures on each worker
            assert c.command('LOGIN bob "wrong password"').status == "NO"
        for pid in (a, b):  # blocked on both, even with the right password
            c = imap_on(d, pid)
            r = c.command('LOGIN bob "bob-secret-pw-2"')
            assert r.status == "NO", r
            c.close()
    finally:
        close_all()
        d.stop()


def test_imap_sessions_per_user_are_counted_across_workers(tmp_path: Path,
                                                           ca: trustme.CA) -> None:
    d = start(tmp_path, ca, imap={"max_connections_per_user_ip": 2})
    try:
        a, b = worker_pids(d)
        one, two_ = imap_on(d, a), imap_on(d, b)
        one.login("bob")
        two_.login("bob")
        for pid in (a, b):
            third = imap_on(d, pid)
            r = third.command('LOGIN bob "bob-secret-pw-2"')
            assert r.status == "NO" and b"too many sessions" in r.text.lower(), r
            third.close()
        one.close()  # a session ends: its place is free again, on any worker
        assert eventually(lambda: session(d, select=None) is not None, WAIT)
    finally:
        close_all()
        d.stop()


def test_pop3_maildrop_lock_holds_across_workers(two: RunningDaemon) -> None:
    a, b = worker_pids(two)
    first = pop3_on(two, a)
    first.user("bob")
    first.pass_("bob-secret-pw-2")
    second = pop3_on(two, b)
    second.user("bob")
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        second.pass_("bob-secret-pw-2")
    second.close()
    first.quit()


def test_idle_on_one_worker_sees_mail_delivered_by_the_other(two: RunningDaemon) -> None:
    a, b = worker_pids(two)
    idler = imap_on(two, a)
    idler.login("bob")
    idler.ok("SELECT INBOX")
    idler.send(b"idle IDLE\r\n")
    assert idler.continuation().startswith(b"+ ")
    other = imap_on(two, b)
    other.login("bob")
    append(other, "INBOX", message("appended on the other worker"))
    idler.sock.settimeout(WAIT)
    seen = []
    for _ in range(20):
        line = idler.read_response()
        assert line is not None, seen
        seen.append(line)
        if line.upper().rstrip().endswith(b" EXISTS"):
            break
    else:
        raise AssertionError(seen)
    # And mail submitted to the other worker (delivered by it) too.
    def smtp_on_b() -> smtplib.SMTP:
        return two.smtp()
    s = on_worker(two, b, smtp_on_b, lambda s: s.sock, lambda s: s.close())
    s.login("alice", "alice-secret-pw")
    s.sendmail("alice@example.test", ["bob@example.test"], message("submitted"))
    s.quit()
    for _ in range(20):
        line = idler.read_response()
        assert line is not None
        if line.upper().rstrip().endswith(b" EXISTS"):
            break
    else:
        raise AssertionError("no EXISTS for the submitted message")
    idler.send(b"DONE\r\n")
    assert idler.until_tagged("idle").status == "OK"


def test_sighup_reloads_every_worker_and_a_broken_config_reloads_none(
        two: RunningDaemon) -> None:
    assert two.proc is not None
    pids = worker_pids(two)
    two.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: all(f"[{pid}] mailkeep: SIGHUP" in log_text(two)
                                  for pid in pids), WAIT), log_text(two)[-2000:]
    config = two.root / "mailkeep.toml"
    good = config.read_text()
    config.write_text(good + "\nworkers = 0\n[security]\nmax_connections = -1\n")
    before = log_text(two).count("mailkeep: SIGHUP")
    two.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: "nothing reloaded" in log_text(two), WAIT)
    text = log_text(two)
    assert "workers" in text.split("nothing reloaded", 1)[1]
    assert text.count("mailkeep: SIGHUP") == before  # nothing forwarded
    config.write_text(good)
    assert worker_pids(two) == pids


def test_sigterm_stops_every_worker_gracefully(two: RunningDaemon) -> None:
    assert two.proc is not None
    pids = worker_pids(two)
    two.proc.send_signal(signal.SIGTERM)
    assert two.proc.wait(WAIT) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or \
            "zombie" in Path(f"/proc/{pid}/status").read_text()
    text = log_text(two)
    assert text.count("mailkeep: stopped") == 2 and "did not stop in time" not in text


def test_a_second_daemon_on_the_same_data_dir_is_refused(two: RunningDaemon,
                                                         ca: trustme.CA) -> None:
    # The supervisor holds the spool's lock: `mailkeep queue` sees the daemon there too.
    assert two.proc is not None
    assert (two.data_dir / "spool" / ".lock").read_text().strip() == str(two.proc.pid)
    with pytest.raises(RuntimeError, match="another mailkeep daemon"):
        start_process_daemon(two.root / "mailkeep.toml", ca, timeout=WAIT)


# -- a worker killed --------------------------------------------------------------------------

CRASH_MESSAGES = 30


def crash_message(ident: str) -> bytes:
    return (f"From: alice@example.test\r\nTo: bob@example.test, carol@partner.test\r\n"
            f"Subject: {ident}\r\nMessage-ID: <{ident}@workers>\r\n\r\nbody of {ident}\r\n"
            ).encode()


def ids_in(messages: list[bytes]) -> Counter[str]:
    found: Counter[str] = Counter()
    for m in messages:
        hit = re.search(rb"Message-ID: <([^>]+)@workers>", m)
        if hit:
            found[hit.group(1).decode()] += 1
    return found


def test_kill_9_of_a_worker_restarts_it_releases_its_slots_and_loses_nothing(
        tmp_path: Path, ca: trustme.CA) -> None:
    with DnsStub(mx_zone()) as dns, Upstream() as up:
        d = start(tmp_path, ca, security={"max_connections_per_ip": 6},
                  delivery=daemon_delivery(dns, up.port))
        try:
            a, b = worker_pids(d)
            sent: list[str] = []
            # A batch through both workers, local and remote recipients.
            for n in range(CRASH_MESSAGES):
                pid = (a, b)[n % 2]
                s = on_worker(d, pid, d.smtp, lambda s: s.sock, lambda s: s.close())
                s.login("alice", "alice-secret-pw")
                ident = f"m{n}"
                s.sendmail("alice@example.test", ["bob@example.test", "carol@partner.test"],
                           crash_message(ident))
                sent.append(ident)
                s.quit()
            # The victim holds slots when it dies: 4 of the address's 6.
            held = [imap_on(d, a, plain=True) for _ in range(4)]
            os.kill(a, signal.SIGKILL)
            for c in held:
                c.close()
            assert eventually(lambda: len(set(worker_pids(d)) - {a, b}) == 1, WAIT), \
                log_text(d)[-3000:]
            assert "died (signal SIGKILL)" in log_text(d)
            assert "released 4 connection slots" in log_text(d)
            new = next(iter(set(worker_pids(d)) - {a, b}))
            # All six slots are free again: six connections at once are served.
            six = [RawImap.plain(d) for _ in range(6)]
            for c in six:
                line = c.read_response()
                assert line is not None and line.startswith(b"* OK"), line
            assert {serving_pid(d, c.sock) for c in six} <= {b, new}
            for c in six:
                c.close()
            assert eventually(lambda: set(ids_in(list(m.data for m in up.messages)))
                              >= set(sent) and spool_ids(d.data_dir) == [], WAIT), \
                (len(up.messages), spool_ids(d.data_dir))
        finally:
            close_all()
            d.stop()
        remote = ids_in([m.data for m in up.messages])
        local = Counter(i.removesuffix("@workers") for i in
                        message_ids(mailbox_messages(d.data_dir, "bob")))
    assert set(local) == set(sent) and max(local.values()) == 1, local
    assert set(remote) == set(sent) and max(remote.values()) == 1, remote


def test_a_killed_primary_is_replaced_and_its_deferred_mail_still_goes(
        tmp_path: Path, ca: trustme.CA) -> None:
    """The spool's primary (retries) dies while mail waits for a retry: another worker
    takes the spool over and delivers it, once."""
    later = Behaviour(mail="451 4.3.0 try again later")
    with DnsStub(mx_zone()) as dns, Upstream(later, Behaviour()) as up:
        d = start(tmp_path, ca, delivery=daemon_delivery(dns, up.port, retry=3.0))
        try:
            lock = d.data_dir / "spool" / ".primary"
            primary = int(lock.read_text().split()[0])
            assert primary in worker_pids(d)
            with d.smtp() as s:
                s.login("alice", "alice-secret-pw")
                s.sendmail("alice@example.test", ["carol@partner.test"],
                           crash_message("late"))
            entry = d.data_dir / "spool" / "queue"
            assert eventually(lambda: any(p.name.endswith(".log") for p in entry.iterdir()),
                              WAIT)  # deferred (the first attempt was refused)
            os.kill(primary, signal.SIGKILL)
            assert eventually(lambda: lock.read_text().strip() not in ("", str(primary)),
                              WAIT), log_text(d)[-3000:]
            assert eventually(lambda: spool_ids(d.data_dir) == [] and up.messages, WAIT), \
                log_text(d)[-3000:]
        finally:
            d.stop()
    assert ids_in([m.data for m in up.messages]) == Counter({"late": 1})


def test_queue_requests_reach_the_primary_worker(tmp_path: Path, ca: trustme.CA) -> None:
    """`mailkeep queue` finds the daemon by the supervisor's spool lock; the primary worker
    takes the request from spool/control/."""
    with DnsStub(mx_zone()) as dns, Upstream(Behaviour(mail="451 4.3.0 later")) as up:
        d = start(tmp_path, ca, delivery=daemon_delivery(dns, up.port, retry=600.0))
        try:
            with d.smtp() as s:
                s.login("alice", "alice-secret-pw")
                s.sendmail("alice@example.test", ["carol@partner.test"], crash_message("q"))
            queue = d.data_dir / "spool" / "queue"
            assert eventually(lambda: any(p.name.endswith(".log") for p in queue.iterdir()),
                              WAIT)
            [entry_id] = spool_ids(d.data_dir)
            spool = Spool(d.data_dir / "spool")

            def first_attempt_over() -> bool:  # the accepting worker let go of its claim
                fd = claims.claim(spool, entry_id)
                if fd is not None:
                    claims.release(spool, entry_id, fd)
                return fd is not None
            assert eventually(first_attempt_over, WAIT)
            # The request may come before the primary has adopted the entry: it looks.
            r = subprocess.run([sys.executable, "-m", "mailkeep", "queue", "hold", entry_id,
                                "--config", str(d.root / "mailkeep.toml")],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and "(by the daemon)" in r.stdout, r.stdout + r.stderr
            assert '"hold":true' in (queue / f"{entry_id}.log").read_text()
        finally:
            d.stop()


def test_mailkeep_reload_reaches_every_worker_through_the_supervisor(two: RunningDaemon) -> None:
    assert two.proc is not None
    config = two.root / "mailkeep.toml"
    assert (two.data_dir / "mailkeep.pid").read_text().strip() == str(two.proc.pid)
    config.write_text(config.read_text().replace("[security]",
                                                 "[security]\nmax_connections_per_ip = 7"))
    r = subprocess.run([sys.executable, "-m", "mailkeep", "reload", "--config", str(config)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"(pid {two.proc.pid})" in r.stdout, r.stdout + r.stderr
    pids = worker_pids(two)
    assert eventually(lambda: all(f"[{pid}] mailkeep: reload: security.max_connections_per_ip"
                                  in log_text(two) for pid in pids), WAIT)


def _scrape(d: RunningDaemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.ports['admin']}/metrics",
                                timeout=10) as answer:
        body = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def test_metrics_are_summed_over_the_workers(tmp_path: Path, ca: trustme.CA) -> None:
    """Whichever worker answers a scrape, /metrics counts what both workers did: IMAPS
    connections made on each worker add up, the open sessions of both are counted, and a
    total never goes backwards from one scrape to the next (observe/shared.py)."""
    d = start(tmp_path, ca, listeners={"admin": {"protocol": "admin"}})
    try:
        pids = worker_pids(d)
        held = [imap_on(d, pid) for pid in pids for _ in range(2)]  # two open on each
        made = sum(1 for _ in held)
        key = ("mailkeep_connections_accepted_total", (("listener", "imaps"),
                                                        ("protocol", "imap")))
        opened = ("mailkeep_sessions_open", (("listener", "imaps"), ("protocol", "imap")))
        # imap_on() may have opened (and closed) extra connections to land on a worker.
        assert eventually(lambda: _scrape(d)[key] >= made and _scrape(d)[opened] == made,
                          timeout=WAIT)
        files = sorted(p.name for p in (d.data_dir / "run" / "metrics").glob("*.json"))
        assert files == sorted(f"{pid}.json" for pid in pids)
        seen = []
        for _ in range(12):  # SO_REUSEPORT: both workers answer some of these
            figures = _scrape(d)
            seen.append(figures[key])
            assert figures[opened] == made
        assert seen == sorted(seen) and seen[0] >= made
        for c in held:
            c.close()
        assert eventually(lambda: _scrape(d).get(opened, 0.0) == 0, timeout=WAIT)
    finally:
        close_all()
        d.stop()
