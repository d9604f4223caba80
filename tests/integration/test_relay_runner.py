"""The delivery runner driven directly, with a fake clock: retry schedule, delay notice,
expiry, restart on the same spool, queue control.

Real parts: a Spool and a MaildirStore in tmp_path, the file directory, an OutboundClient
talking to a fake upstream (aiosmtpd) found through the DNS stub. Time moves only when a test
moves it (`clock.now = ...; runner.kick()`); nothing sleeps through a retry interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailkeep.config import load_config
from mailkeep.config.model import Config
from mailkeep.directory.base import DirectoryUnavailable, UserDirectory, load_directory
from mailkeep.relay import claims
from mailkeep.relay.client import OutboundClient
from mailkeep.relay.envelope import OutboundMessage
from mailkeep.relay.nexthop import Destination
from mailkeep.relay.queue_control import CONTROL_INTERVAL, HOLD_BACK_LIMIT
from mailkeep.relay.results import RecipientResult
from mailkeep.relay.runner import DeliveryRunner
from mailkeep.relay.spool import Spool, SpoolEntry, SpoolRecipient, new_id
from mailkeep.store.maildir import MaildirStore
from tests.support.daemon import write_config
from tests.support.dnsstub import DnsStub
from tests.support.relay import (
    daemon_delivery,
    mailbox_messages,
    message_ids,
    mx_zone,
    parse_dsn,
    simple_message,
    spool_ids,
)
from tests.support.upstream import Behaviour, Upstream, Upstreams, upstreams

T0 = 1_800_000_000.0
TEMPFAIL = Behaviour(mail="451 4.3.0 not now")
# A bound for each wait on the runner (never a measurement).
WAIT = 10.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingClient(OutboundClient):
    """The real client; it notes the (fake) time of every delivery attempt."""

    def __init__(self, config: Config, clock: Clock) -> None:
        super().__init__(config.delivery)
        self.clock = clock
        self.attempts: list[float] = []

    async def deliver(self, destination: Destination,
                      message: OutboundMessage) -> list[RecipientResult]:
        self.attempts.append(self.clock())
        return await super().deliver(destination, message)


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll the condition on the loop; fail the test at the bound."""
    async with asyncio.timeout(timeout):
        while not predicate():  # polling state that other tasks change
            await asyncio.sleep(0.01)


@dataclass
class Harness:
    config: Config
    spool: Spool
    store: MaildirStore
    directory: UserDirectory
    clock: Clock
    runners: list[DeliveryRunner]
    clients: list[RecordingClient]

    async def runner(self) -> DeliveryRunner:
        """A new runner (and client) on the same spool, started: a restart."""
        client = RecordingClient(self.config, self.clock)
        runner = DeliveryRunner(self.config, self.spool, self.store, self.directory, client,
                                clock=self.clock)
        await runner.start()
        self.runners.append(runner)
        self.clients.append(client)
        return runner

    async def submit(self, runner: DeliveryRunner, recipients: list[str], message_id: str,
                     *, mail_from: str = "alice@example.test", **fields: Any) -> SpoolEntry:
        data = simple_message(message_id, sender=mail_from or "mailer-daemon@partner.test")
        entry = await runner.new_entry(mail_from=mail_from, recipients=recipients,
                                       size=len(data))
        assert entry is not None
        for rcpt in entry.recipients:
            for key, value in fields.items():
                setattr(rcpt, key, value)
        await runner.enqueue(entry, data)
        return entry

    def inbox(self, account: str) -> list[bytes]:
        return mailbox_messages(self.config.data_dir, account)

    async def move_to(self, runner: DeliveryRunner, when: float) -> None:
        self.clock.now = when
        runner.kick()


@pytest.fixture
def dns() -> Iterator[DnsStub]:
    with DnsStub(mx_zone()) as stub:
        yield stub


@pytest.fixture
def ups() -> Iterator[Upstreams]:
    yield from upstreams()


HarnessFactory = Callable[..., Any]


@pytest.fixture
async def harness(tmp_path: Path, ca: trustme.CA, dns: DnsStub) -> AsyncIterator[HarnessFactory]:
    made: list[Harness] = []

    async def make(up: Upstream, **queue: Any) -> Harness:
        config = load_config(write_config(tmp_path, ca,
                                          delivery=daemon_delivery(dns, up.port, **queue)))
        directory = load_directory(config.directory.backend, config.directory.options,
                                   config.directory.base_dir)
        h = Harness(config, Spool(config.data_dir / "spool"), MaildirStore(config.data_dir),
                    directory, Clock(T0), [], [])
        made.append(h)
        return h

    yield make
    for h in made:
        for runner in h.runners:
            await runner.stop(grace=1.0)
        await h.directory.close()
        await asyncio.to_thread(h.store.close)


def attempts(runner: DeliveryRunner, entry_id: str) -> int:
    """Finished attempts of an entry (-1: gone). An attempt counts once it has settled
    completely (outcomes logged, notices queued, next attempt scheduled), so a test that
    moves the clock next is not racing the attempt's own rescheduling."""
    entry = runner.entries.get(entry_id)
    if entry is None:
        return -1
    return -2 if runner._running else entry.attempts


async def test_retry_schedule_is_followed_exactly(harness: HarnessFactory,
                                                  ups: Upstreams) -> None:
    up = ups(TEMPFAIL)
    h = await harness(up, retry_schedule=[60, 300, 900], max_lifetime=100_000)
    runner = await h.runner()
    entry = await h.submit(runner, ["carol@partner.test"], "retry@t")
    await until(lambda: attempts(runner, entry.id) == 1)
    assert runner.entries[entry.id].next_attempt == T0 + 60

    # One second early: nothing happens (the kick makes the scheduler look).
    await h.move_to(runner, T0 + 59)
    await asyncio.sleep(0.2)
    assert h.clients[0].attempts == [T0] and attempts(runner, entry.id) == 1

    expected = [T0, T0 + 60, T0 + 360, T0 + 1260, T0 + 2160]  # the last interval repeats
    for n, when in enumerate(expected[1:], start=2):
        await h.move_to(runner, when)
        await until(lambda n=n: attempts(runner, entry.id) == n)  # type: ignore[misc]
    assert h.clients[0].attempts == expected
    assert up.connections == len(expected) and up.messages == []
    assert runner.entries[entry.id].next_attempt == T0 + 3060
    assert h.inbox("alice") == []  # delay notices are off in this config


async def test_delay_notice_once_then_expiry_bounce(harness: HarnessFactory,
                                                    ups: Upstreams) -> None:
    up = ups(Behaviour(rcpt={"carol@partner.test": "452 4.2.2 mailbox full"}))
    h = await harness(up, retry_schedule=[100], delay_warning=250, max_lifetime=1000)
    runner = await h.runner()
    entry = await h.submit(runner, ["carol@partner.test"], "late@t")
    await until(lambda: attempts(runner, entry.id) == 1)
    for n in range(2, 11):  # attempts at T0+100 ... T0+900
        await h.move_to(runner, T0 + 100 * (n - 1))
        await until(lambda n=n: attempts(runner, entry.id) == n)  # type: ignore[misc]
        # The notice is queued and delivered locally during the attempt that crossed 250 s.
        notices = h.inbox("alice")
        assert len(notices) == (0 if n < 4 else 1), (n, len(notices))
    delayed = parse_dsn(h.inbox("alice")[0])
    carol = delayed.recipient("carol@partner.test")
    assert carol["Action"] == "delayed"
    assert carol["Status"] == "4.2.2"
    assert carol["Diagnostic-Code"] == "smtp; 452 4.2.2 mailbox full"
    assert carol.get("Will-Retry-Until")  # RFC 3464 §2.3.8
    assert "delay" in delayed.message["Subject"].lower()

    # The attempt at T0+1000 is past max_lifetime: the recipient fails with X.4.7.
    await h.move_to(runner, T0 + 1000)
    await until(lambda: entry.id not in runner.entries and len(runner.entries) == 0)
    assert spool_ids(h.config.data_dir) == []
    notices = h.inbox("alice")
    assert len(notices) == 2
    failed = parse_dsn(notices[1])
    carol = failed.recipient("carol@partner.test")
    assert carol["Action"] == "failed"
    assert carol["Status"] == "5.4.7"  # RFC 3463: delivery time expired
    assert "452 4.2.2 mailbox full" in carol["Diagnostic-Code"]
    assert up.connections == 11 and up.messages == []


async def test_no_dsn_for_a_null_sender(harness: HarnessFactory, ups: Upstreams) -> None:
    up = ups(Behaviour(rcpt={"gone@partner.test": "550 5.1.1 no such user"}))
    h = await harness(up)
    runner = await h.runner()
    entry = await h.submit(runner, ["gone@partner.test"], "bounce@t", mail_from="")
    await until(lambda: not runner.entries)
    assert up.connections == 1
    assert runner.stats.bounced == 1
    assert spool_ids(h.config.data_dir) == []
    assert all(h.inbox(a) == [] for a in ("alice", "bob", "app"))
    assert entry.recipients[0].status == "failed"


async def test_success_dsn_for_local_delivery(harness: HarnessFactory, ups: Upstreams) -> None:
    h = await harness(ups())
    runner = await h.runner()
    await h.submit(runner, ["bob@example.test"], "notify@t", notify=["SUCCESS"])
    await until(lambda: not runner.entries and len(h.inbox("alice")) == 1)
    dsn = parse_dsn(h.inbox("alice")[0])
    bob = dsn.recipient("bob@example.test")
    assert bob["Action"] == "delivered" and bob["Status"].startswith("2.")
    assert message_ids(h.inbox("bob")) == ["notify@t"]


async def test_restart_resumes_from_the_log_without_repeating(harness: HarnessFactory,
                                                              ups: Upstreams) -> None:
    # First connection: dave is tempfailed, carol accepted. Afterwards everyone is accepted.
    up = ups(Behaviour(rcpt={"dave@partner.test": "451 4.3.0 later"}), Behaviour())
    h = await harness(up, retry_schedule=[60])
    first = await h.runner()
    entry = await h.submit(first, ["bob@example.test", "carol@partner.test",
                                   "dave@partner.test"], "resume@t")
    await until(lambda: attempts(first, entry.id) == 1)
    assert [m.rcpt_tos for m in up.messages] == [["carol@partner.test"]]
    await first.stop(grace=1.0)
    h.runners.remove(first)

    second = await h.runner()  # the same spool: it reads the entry and its log
    resumed = second.entries[entry.id]
    assert [r.status for r in resumed.recipients] == ["delivered", "delivered", "pending"]
    assert resumed.next_attempt == T0 + 60
    await h.move_to(second, T0 + 60)
    await until(lambda: not second.entries)
    assert [m.rcpt_tos for m in up.messages] == [["carol@partner.test"],
                                                 ["dave@partner.test"]]
    assert h.clients[1].attempts == [T0 + 60]
    assert message_ids(h.inbox("bob")) == ["resume@t"]  # not delivered twice


async def test_repeated_local_delivery_after_a_crash_is_recognised(
        harness: HarnessFactory, ups: Upstreams) -> None:
    # A crash after the local copy was written but before the entry was removed: the
    # entry comes back whole at the next start, and the copy is found by its name.
    h = await harness(ups())
    first = await h.runner()
    entry = await h.submit(first, ["bob@example.test", "alice@example.test"], "again@t")
    await until(lambda: not first.entries)
    assert len(h.inbox("bob")) == 1 and len(h.inbox("alice")) == 1
    message = simple_message("again@t")
    for rcpt in entry.recipients:
        rcpt.status = "pending"
    await asyncio.to_thread(h.spool.accept, entry, message)  # as if never removed
    # One copy has been read by an IMAP client meanwhile (moved to cur/ with flags).
    [new] = (h.config.data_dir / "mail" / "bob" / "new").iterdir()
    new.rename(h.config.data_dir / "mail" / "bob" / "cur" / f"{new.name}:2,S")
    await first.stop(grace=1.0)
    h.runners.remove(first)

    second = await h.runner()
    await until(lambda: not second.entries)
    assert message_ids(h.inbox("bob")) == ["again@t"]
    assert message_ids(h.inbox("alice")) == ["again@t"]
    assert spool_ids(h.config.data_dir) == []


async def test_queue_control_hold_release_retry_delete(harness: HarnessFactory,
                                                       ups: Upstreams) -> None:
    up = ups(TEMPFAIL)
    h = await harness(up, retry_schedule=[3600])
    runner = await h.runner()
    entry = await h.submit(runner, ["carol@partner.test"], "ctl@t")
    await until(lambda: attempts(runner, entry.id) == 1)

    # retry: at once, long before it is due.
    assert await runner.control("retry", entry.id)
    await until(lambda: attempts(runner, entry.id) == 2)
    assert h.clients[0].attempts == [T0, T0]

    # hold: not attempted even when due; release: attempted at once.
    assert await runner.control("hold", entry.id)
    await h.move_to(runner, T0 + 7200)
    await asyncio.sleep(0.2)
    assert attempts(runner, entry.id) == 2
    assert not await runner.control("retry", entry.id)  # a held entry stays held
    assert await runner.control("release", entry.id)
    await until(lambda: attempts(runner, entry.id) == 3)
    assert h.clients[0].attempts == [T0, T0, T0 + 7200]

    # The hold survives a restart (it is logged).
    assert await runner.control("hold", entry.id)
    await runner.stop(grace=1.0)
    h.runners.remove(runner)
    runner = await h.runner()
    assert runner.entries[entry.id].hold

    # delete: gone from memory and from disk.
    assert await runner.control("delete", entry.id)
    assert entry.id not in runner.entries
    assert spool_ids(h.config.data_dir) == []
    assert not await runner.control("delete", entry.id)
    assert not await runner.control("bogus", entry.id)
    assert up.messages == []


async def test_queue_control_through_files(harness: HarnessFactory, ups: Upstreams) -> None:
    # `mailkeep queue ...` drops OP-ID files into spool/control; the runner polls the folder.
    up = ups(TEMPFAIL)
    h = await harness(up, retry_schedule=[3600])
    runner = await h.runner()
    entry = await h.submit(runner, ["carol@partner.test"], "files@t")
    other = await h.submit(runner, ["dave@partner.test"], "files2@t")
    await until(lambda: attempts(runner, entry.id) == 1 and attempts(runner, other.id) == 1)
    control = h.spool.control
    bound = CONTROL_INTERVAL * 5
    (control / f"retry-{entry.id}").touch()
    await until(lambda: attempts(runner, entry.id) == 2, bound)
    assert attempts(runner, other.id) == 1
    (control / f"hold-{other.id}").touch()
    await until(lambda: runner.entries[other.id].hold, bound)
    (control / "retry-all").touch()
    await until(lambda: attempts(runner, entry.id) == 3, bound)
    assert attempts(runner, other.id) == 1  # held: "retry all" passes it by
    (control / f"delete-{entry.id}").touch()
    (control / "junk-without-target").touch()
    await until(lambda: entry.id not in runner.entries, bound)
    assert spool_ids(h.config.data_dir) == [other.id]
    await until(lambda: not any(control.iterdir()), bound)  # every request consumed


async def test_a_request_for_an_entry_another_worker_attempts_waits_for_it(
        harness: HarnessFactory, ups: Upstreams) -> None:
    # workers > 1: the primary takes `mailkeep queue` requests, but an entry another worker
    # is still attempting (it holds the claim) cannot be adopted yet. The request is kept
    # and applied once the claim is let go, not dropped.
    up = ups(TEMPFAIL)
    h = await harness(up, retry_schedule=[3600])
    primary = DeliveryRunner(h.config, h.spool, h.store, h.directory,
                             RecordingClient(h.config, h.clock), clock=h.clock, shared=True)
    await primary.start()
    h.runners.append(primary)
    assert primary.primary
    entry = SpoolEntry(id=new_id(), mail_from="alice@example.test",
                       recipients=[SpoolRecipient("carol@partner.test", "remote")],
                       arrival=T0, size=5, next_attempt=T0 + 3600, attempts=1)
    fd = claims.claim_new(h.spool, entry.id)  # the other worker's first attempt
    try:
        h.spool.accept(entry, b"hello")
        (h.spool.control / f"hold-{entry.id}").touch()
        await primary.take_requests()
        assert entry.id not in primary.entries
        assert ("hold", entry.id) in primary._held_back
    finally:
        claims.release(h.spool, entry.id, fd)
    await primary.take_requests()
    assert primary.entries[entry.id].hold
    assert h.spool.load(entry.id).hold
    assert not primary._held_back

    # At and past HOLD_BACK_LIMIT: a request kept that long is dropped, never applied late.
    other = SpoolEntry(id=new_id(), mail_from="alice@example.test",
                       recipients=[SpoolRecipient("dave@partner.test", "remote")],
                       arrival=T0, size=5, next_attempt=T0 + 3600, attempts=1)
    fd = claims.claim_new(h.spool, other.id)
    try:
        h.spool.accept(other, b"hello")
        (h.spool.control / f"hold-{other.id}").touch()
        await primary.take_requests()
        h.clock.now += HOLD_BACK_LIMIT - 1
        await primary.take_requests()
        assert ("hold", other.id) in primary._held_back  # not yet
        h.clock.now += 1
        await primary.take_requests()
        assert ("hold", other.id) not in primary._held_back  # dropped at the limit
    finally:
        claims.release(h.spool, other.id, fd)
    await primary.take_requests()
    assert not h.spool.load(other.id).hold


async def test_no_bounce_through_split_delivery_to_a_source_routed_sender(
        harness: HarnessFactory, ups: Upstreams) -> None:
    # A sender like "x%victim.test@example.test" (an application connector's `senders =
    # ["@example.test"]` allows it) has no account here; split delivery would hand its
    # bounce to the legacy server, which may route on the "%": backscatter through the old
    # relay. No report is sent to such an address; a plain unknown one still gets its own.
    mx = ups(Behaviour(rcpt={"gone@partner.test": "550 5.1.1 no such user"}))
    legacy = ups()
    h = await harness(mx, routes={"legacy": {"type": "smarthost", "host": "127.0.0.1",
                                             "port": legacy.port, "tls": "none"}},
                      local_domains={"example.test": {"fallback_route": "legacy"}})
    runner = await h.runner()
    routed = await runner.new_entry(mail_from="x%victim.test@example.test",
                                    recipients=["x%victim.test@example.test"], size=1)
    assert routed is None  # nor may it be a recipient of mail we make ourselves
    await h.submit(runner, ["gone@partner.test"], "routed@t",
                   mail_from="x%victim.test@example.test")
    await until(lambda: not runner.entries)
    assert legacy.connections == 0 and legacy.messages == []
    await h.submit(runner, ["gone@partner.test"], "plain@t", mail_from="olduser@example.test")
    await until(lambda: not runner.entries and len(legacy.messages) == 1)
    (bounce,) = legacy.messages
    assert bounce.rcpt_tos == ["olduser@example.test"] and bounce.mail_from == ""


async def test_a_bounce_that_cannot_be_queued_keeps_its_message(
        harness: HarnessFactory, ups: Upstreams, monkeypatch: pytest.MonkeyPatch) -> None:
    # carol's 550 calls for a bounce to alice, but the directory is down when it is built
    # (the DSN's local recipient cannot be resolved). The failed message must not be
    # removed with the report unsent: it stays queued, owing it, across a restart too, and
    # the report goes out once (and only once) when the directory is back.
    up = ups(Behaviour(rcpt={"carol@partner.test": "550 5.1.1 carol is gone"}))
    h = await harness(up, retry_schedule=[60])
    lookup = h.directory.lookup

    async def down(_name: str) -> None:
        raise DirectoryUnavailable("down for the test")

    monkeypatch.setattr(h.directory, "lookup", down)
    first = await h.runner()
    entry = await h.submit(first, ["carol@partner.test"], "owed@t")
    kept = first.entries[entry.id]
    await until(lambda: kept.done() and not first._running)
    assert not kept.finished() and entry.id in first.entries
    assert [(n.action, n.done) for n in kept.notices] == [("failed", False)]
    assert spool_ids(h.config.data_dir) == [entry.id]  # only the original: no DSN yet
    await first.stop(grace=1.0)
    h.runners.remove(first)

    monkeypatch.setattr(h.directory, "lookup", lookup)
    second = await h.runner()  # a restart settles what the log says is owed, at once
    await until(lambda: not second.entries and len(h.inbox("alice")) == 1)
    await h.move_to(second, T0 + 3600)  # later attempts add nothing
    await asyncio.sleep(0.2)
    (report,) = h.inbox("alice")
    carol = parse_dsn(report).recipient("carol@partner.test")
    assert carol["Action"] == "failed" and carol["Status"] == "5.1.1"
    assert spool_ids(h.config.data_dir) == []
    assert len(up.messages) == 0 and up.connections == 1  # carol was not asked again
