"""kill -9 with the queue busy: nothing acknowledged is lost, nothing is delivered locally twice.

`mailkeep serve` runs as a real process; the internet is a fake upstream in this test process
that records every message it accepted (by Message-ID). The daemon is killed during a burst of
messages with local and remote recipients (so the kill lands while spooling, while
delivering locally and while delivering remotely), and while the upstream stalls after the
final dot of DATA. After a restart and a drained queue:
- every acknowledged message is in bob's INBOX exactly once, and at the upstream at least once;
- a remote duplicate is possible only for a delivery in flight at the kill (the upstream had
  said 250, we had not logged it yet: RFC 5321 §6.1 prefers a duplicate to a loss); they are
  counted and must stay below the number of deliveries that can be in flight at once.
"""

from __future__ import annotations

import re
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.relay.queue_config import DEFAULT_CONCURRENCY
from tests.support.daemon import RunningDaemon, start_process_daemon, write_config
from tests.support.dnsstub import DnsStub
from tests.support.relay import daemon_delivery, mailbox_messages, message_ids, mx_zone, spool_ids
from tests.support.upstream import Behaviour, Upstream
from tests.support.wait import eventually

CLIENTS = 4
BODY_LINES = 60
WAIT = 40.0
RECIPIENTS = ["bob@example.test", "carol@partner.test"]

pytestmark = pytest.mark.slow


def message(ident: str) -> bytes:
    body = b"".join(b"line %03d of %s\r\n" % (i, ident.encode()) for i in range(BODY_LINES))
    return (f"From: alice@example.test\r\nTo: bob@example.test, carol@partner.test\r\n"
            f"Subject: {ident}\r\nMessage-ID: <{ident}@crash>\r\n\r\n").encode() + body


def upstream_ids(up: Upstream) -> Counter[str]:
    found: Counter[str] = Counter()
    for m in list(up.messages):
        hit = re.search(rb"Message-ID: <([^>]+)@crash>", m.data)
        assert hit, m.data[:200]
        found[hit.group(1).decode()] += 1
    return found


def local_ids(d: RunningDaemon) -> Counter[str]:
    return Counter(i.removesuffix("@crash") for i in
                   message_ids(mailbox_messages(d.data_dir, "bob")))


def kill(d: RunningDaemon) -> None:
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)


@pytest.fixture
def dns() -> Iterator[DnsStub]:
    with DnsStub(mx_zone()) as stub:
        yield stub


def test_kill_9_during_a_mixed_burst(tmp_path: Path, ca: trustme.CA, dns: DnsStub) -> None:
    with Upstream() as up:
        config = write_config(tmp_path, ca, delivery=daemon_delivery(dns, up.port))
        d = start_process_daemon(config, ca)
        acked: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(n: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    with d.smtp(timeout=5) as s:
                        s.login("alice", "alice-secret-pw")
                        while not stop.is_set():
                            ident = f"c{n}m{i}"
                            i += 1
                            s.sendmail("alice@example.test", RECIPIENTS, message(ident))
                            with lock:
                                acked.append(ident)
                except (smtplib.SMTPException, OSError):
                    return  # the daemon is gone

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        # Kill once remote deliveries are flowing too (bounded; no timing assertion).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (len(acked) >= 40 and len(up.messages) >= 10):
            time.sleep(0.01)
        kill(d)
        stop.set()
        for t in threads:
            t.join(10)
        with lock:
            acknowledged = set(acked)
        assert len(acknowledged) >= 40 and up.messages, "the burst did not get going"
        at_kill = len(up.messages)

        d = start_process_daemon(config, ca)
        try:
            assert eventually(lambda: acknowledged <= set(upstream_ids(up))
                              and spool_ids(d.data_dir) == [], WAIT), \
                (sorted(acknowledged - set(upstream_ids(up)))[:5], spool_ids(d.data_dir)[:5])
        finally:
            d.stop()
        remote = upstream_ids(up)
        local = local_ids(d)

    missing_local = acknowledged - set(local)
    assert not missing_local, f"acknowledged but lost locally: {sorted(missing_local)[:5]}"
    doubled_local = sorted(i for i, n in local.items() if n > 1)
    assert not doubled_local, f"delivered locally twice: {doubled_local[:5]}"
    missing_remote = acknowledged - set(remote)
    assert not missing_remote, f"acknowledged but never relayed: {sorted(missing_remote)[:5]}"
    # A message spooled but not acknowledged (the kill came before the 250) may or may not
    # be delivered; once spooled it goes everywhere: nothing relayed lacks its local copy.
    assert set(remote) <= set(local)
    doubled_remote = sorted(i for i, n in remote.items() if n > 1)
    print(f"acknowledged={len(acknowledged)} relayed before the kill={at_kill} "
          f"remote duplicates={len(doubled_remote)}")
    assert len(doubled_remote) <= DEFAULT_CONCURRENCY, doubled_remote
    assert inbox_is_clean(d)


def inbox_is_clean(d: RunningDaemon) -> bool:
    """No DSN was sent to alice: nothing failed, nobody asked for one."""
    return mailbox_messages(d.data_dir, "alice") == []


def test_kill_9_while_the_upstream_stalls_after_data(tmp_path: Path, ca: trustme.CA,
                                                     dns: DnsStub) -> None:
    # Every connection stalls after the final dot: the message has been sent, no reply yet.
    with Upstream(Behaviour(stall="DATA-END")) as up:
        config = write_config(tmp_path, ca, delivery=daemon_delivery(dns, up.port))
        d = start_process_daemon(config, ca)
        idents = [f"stall{n}" for n in range(4)]
        with d.smtp() as s:
            s.login("alice", "alice-secret-pw")
            for ident in idents:
                assert s.sendmail("alice@example.test", RECIPIENTS, message(ident)) == {}
        # Every message is on the upstream's wire, its final dot sent, and unanswered.
        assert eventually(lambda: all(f"<{i}@crash>".encode() in up.received()
                                      for i in idents) and up.received().count(b"\r\n.\r\n")
                          >= len(idents), WAIT)
        assert up.messages == []
        kill(d)
        assert sorted(spool_ids(d.data_dir)) != []  # still queued: nothing was confirmed
        up.behaviours = [Behaviour()]  # the next connections are answered

        d = start_process_daemon(config, ca)
        try:
            assert eventually(lambda: set(idents) <= set(upstream_ids(up))
                              and spool_ids(d.data_dir) == [], WAIT)
        finally:
            d.stop()
        remote = upstream_ids(up)
    # The stalled transactions never completed on the upstream's side: exactly one copy.
    assert {i: remote[i] for i in idents} == dict.fromkeys(idents, 1)
    local = local_ids(d)
    assert {i: local[i] for i in idents} == dict.fromkeys(idents, 1)
    assert inbox_is_clean(d)
