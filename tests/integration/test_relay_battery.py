"""The open-relay battery, from the attacker's side, against every SMTP connector kind.

Every classic trick for getting a server to carry mail to another domain is tried on:
submission without a login, submission logged in (only the tricks that disguise a remote
address as a local one: a logged-in user may relay anyway), the inbound MX, a relay connector
with may_relay = false, and a relay connector with may_relay = true reached from an address
outside its `clients`.

What counts is what happens, not what the replies look like: every RCPT that gets 250 is
followed by DATA, and after the queue has drained
- the delivery runner was never asked to plan a remote recipient (its planner is watched),
- the fake internet (the MX of every remote name in the DNS stub) saw no connection,
- the DNS stub was never asked for an MX record,
- every accepted message is in a local INBOX.
The remote acceptances counted that way must be zero on every connector.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from mailkeep.relay.envelope import Recipient
from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config
from tests.support.dnsstub import DnsStub
from tests.support.rawsmtp import RawSMTP, Reply, ServerClosed
from tests.support.relay import daemon_delivery, mailbox_messages, message_ids, mx_zone
from tests.support.upstream import Upstream
from tests.support.wait import eventually

# Sent after each trick: its reply ends the replies to the trick. NOOP leaves the
# transaction alone, needs no login, and is not an unknown command (aiosmtpd hangs up after
# five of those).
MARK = b"NOOP"
WAIT = 15.0


@dataclass(frozen=True)
class Trick:
    rcpt: bytes                 # what follows "RCPT TO:" on the wire (no CRLF)
    # A logged-in user may legitimately send this to another domain: not a trick there.
    plain_remote: bool = False


TRICKS = [
    Trick(b"<carol@remote.test>", plain_remote=True),
    Trick(b"carol@remote.test", plain_remote=True),
    Trick(b"<carol@remote.test> NOTIFY=NEVER", plain_remote=True),
    Trick(b"<postmaster@remote.test>", plain_remote=True),
    Trick(b"<carol@REMOTE.TEST>", plain_remote=True),
    Trick(b"<Carol@Remote.Test>", plain_remote=True),
    Trick(b"<carol@remote.test.>"),
    Trick(b"<carol@remote.test..>"),
    Trick(b"<carol@example.test.remote.test>", plain_remote=True),
    Trick(b"<carol@EXAMPLE.TEST.remote.test>", plain_remote=True),
    Trick(b"<carol@remote.test.example.test>", plain_remote=True),
    # Percent hack, bang path, double @, source routes.
    Trick(b"<carol%remote.test@example.test>"),
    Trick(b"<carol%remote.test@EXAMPLE.TEST>"),
    Trick(b"<bob%remote.test@example.test>"),
    Trick(b"<remote.test!carol@example.test>"),
    Trick(b"<remote.test!carol>"),
    Trick(b"<carol@remote.test@example.test>"),
    Trick(b"<carol@remote.test@EXAMPLE.test>"),
    Trick(b"<@example.test:carol@remote.test>", plain_remote=True),
    Trick(b"<@example.test,@example.test:carol@remote.test>", plain_remote=True),
    Trick(b"<@example.test:carol%remote.test@example.test>"),
    # Quoted local parts.
    Trick(b'<"carol@remote.test"@example.test>'),
    Trick(b'<"carol%remote.test"@example.test>'),
    Trick(b'<"remote.test!carol"@example.test>'),
    Trick(b'<"carol@remote.test">'),
    Trick(b'<"carol\\@remote.test"@example.test>'),
    Trick(b'<"carol"@remote.test>', plain_remote=True),
    Trick(b'<"bob"@example.test@remote.test>'),
    Trick(b'<carol@remote.test"@example.test>'),
    # Address literals and IP-ish domains.
    Trick(b"<carol@[127.0.0.1]>"),
    Trick(b"<bob@[127.0.0.1]>"),
    Trick(b"<carol@[192.0.2.1]>"),
    Trick(b"<carol@[IPv6:::1]>"),
    Trick(b"<carol%[192.0.2.1]@example.test>"),
    # A bare IP address is no domain (RFC 5321 §4.1.3 brackets literals): refused even for
    # a logged-in user, who could otherwise reach any host (the loopback one included)
    # through a resolver that reads it as an address.
    Trick(b"<carol@127.0.0.1>"),
    Trick(b"<bob@127.0.0.1>"),
    Trick(b"carol@192.0.2.1"),
    Trick(b"<carol@127.1>"),
    Trick(b"<carol@2130706433>"),
    Trick(b"<carol@0x7f000001>"),
    Trick(b"<carol%remote.test@127.0.0.1>"),
    Trick(b"<@example.test:carol@127.0.0.1>"),
    # Control characters: NUL, CR, LF inside and around the address.
    Trick(b"<carol@remote.test\x00@example.test>"),
    Trick(b"<bob@example.test\x00carol@remote.test>"),
    Trick(b"<carol@remote.test>\x00"),
    Trick(b"<carol@remote.test\r@example.test>"),
    Trick(b"<bob@example.test>\rRCPT TO:<carol@remote.test>"),
    Trick(b"<carol@remote.test\n@example.test>"),
    Trick(b"<bob@example.test>\nRCPT TO:<carol@remote.test>", plain_remote=True),
    Trick(b"<bob@example.test>\r\nRCPT TO:<carol@remote.test>", plain_remote=True),
    Trick(b"<carol@remote.test\r\n@example.test>"),
    Trick(b"<bob@example.test> ORCPT=rfc822;carol@remote.test"),
    # Several addresses in one command, and a parameter smuggling one.
    Trick(b"<bob@example.test>,<carol@remote.test>"),
    Trick(b"<bob@example.test> <carol@remote.test>"),
    Trick(b"<bob@example.test carol@remote.test>"),
    # UTF-8 without SMTPUTF8, and look-alike domains.
    Trick("<carol@remote.tést>".encode()),
    Trick("<carol@exаmple.test>".encode()),  # a Cyrillic "а"
]


class PlanRecorder:
    """Wraps the runner's outbound planner: every recipient handed to remote delivery."""

    def __init__(self, d: RunningDaemon) -> None:
        assert d.daemon is not None and d.daemon.runner is not None
        client = d.daemon.runner.client
        original = client.plan
        self.recipients: list[str] = []
        self.lock = threading.Lock()

        def plan(recipients: list[Recipient]) -> Any:
            with self.lock:
                self.recipients += [r.address for r in recipients]
            return original(recipients)

        client.plan = plan  # type: ignore[method-assign]


@dataclass
class Battery:
    d: RunningDaemon
    dns: DnsStub
    internet: Upstream
    planner: PlanRecorder
    accepted: dict[str, list[str]] = field(default_factory=dict)  # connector -> message ids


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Battery]:
    with DnsStub(mx_zone("remote.test", "example.test.remote.test")) as dns, \
            Upstream() as internet:
        root = tmp_path_factory.mktemp("battery")
        config = write_config(
            root, ca, delivery=daemon_delivery(dns, internet.port),
            # The battery makes many refusals on one connection: no hang-up in the middle.
            submission={"max_errors": 100_000},
            listeners={
                "inbound": {"protocol": "smtp", "tls": "starttls"},
                "nolocal": {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
                            "senders": ["@example.test"]},
                "relayer": {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
                            "senders": ["@example.test"], "may_relay": True},
            })
        d = start_thread_daemon(config, ca)
        try:
            yield Battery(d, dns, internet, PlanRecorder(d))
        finally:
            d.stop()


def context(d: RunningDaemon) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    d.ca.configure_trust(ctx)
    return ctx


def rcpt_replies(c: RawSMTP, trick: Trick) -> list[Reply]:
    """The replies to the RCPT line (one per command it turned into), up to our marker."""
    c.send(b"RCPT TO:" + trick.rcpt + b"\r\n" + MARK + b"\r\n")
    replies = []
    for _ in range(10):
        r = c.reply()
        if r.code == 250 and r.lines == ("2.0.0 OK",):
            return replies
        replies.append(r)
    raise AssertionError(f"no reply to the marker after {trick.rcpt!r}: {replies}")


def run(b: Battery, name: str, c: RawSMTP, sender: str, tricks: list[Trick]) -> int:
    """Each trick in its own transaction; an accepted one gets DATA. Returns the 250s."""
    acceptances = 0
    for i, trick in enumerate(tricks):
        assert c.cmd("RSET").code == 250
        mail = c.cmd(f"MAIL FROM:<{sender}>")
        replies = rcpt_replies(c, trick)
        accepted = [r for r in replies if r.code == 250]
        for r in replies:
            assert r.code in (250, 500, 501, 503, 530, 550, 553, 554, 555), (trick, r)
        if not accepted:
            continue
        assert mail.code == 250, (trick, mail)
        acceptances += len(accepted)
        ident = f"battery-{name}-{i}@t"
        assert c.cmd("DATA").code == 354
        c.send(f"From: {sender}\r\nTo: x\r\nSubject: battery\r\nMessage-ID: <{ident}>\r\n\r\n"
               ".\r\n".encode())
        if c.reply().code == 250:
            b.accepted.setdefault(name, []).append(ident)
    return acceptances


def assert_no_remote_acceptance(b: Battery, name: str) -> None:
    d = b.d
    assert d.daemon is not None and d.daemon.runner is not None
    runner = d.daemon.runner
    assert eventually(lambda: not runner.entries, WAIT), runner.entries
    local = set()
    for account in ("alice", "bob", "app"):
        local.update(message_ids(mailbox_messages(d.data_dir, account)))
    not_local = [i for i in b.accepted.get(name, []) if i not in local]
    remote = len(b.planner.recipients) + len(b.internet.messages) + len(not_local)
    assert remote == 0, (b.planner.recipients, b.internet.messages, not_local)
    assert b.internet.connections == 0
    assert [q for q in b.dns.queries if q[1] == "MX"] == []


def test_submission_without_login(battery: Battery) -> None:
    d = battery.d
    with RawSMTP(d.submission_port) as c:
        c.greeting()
        c.ehlo("attacker.test")
        # Before STARTTLS too: nothing but 530.
        assert c.cmd("MAIL FROM:<alice@example.test>").code == 530
        c.starttls(context(d))
        c.ehlo("attacker.test")
        run(battery, "submission-anon", c, "alice@example.test", TRICKS)
    assert battery.accepted.get("submission-anon", []) == []
    assert_no_remote_acceptance(battery, "submission-anon")


def test_submission_logged_in_tricks(battery: Battery) -> None:
    d = battery.d
    tricks = [t for t in TRICKS if not t.plain_remote]
    with RawSMTP(d.submission_port) as c:
        c.greeting()
        c.ehlo("client.test")
        c.starttls(context(d))
        c.ehlo("client.test")
        c.login("alice")
        run(battery, "submission-auth", c, "alice@example.test", tricks)
    assert_no_remote_acceptance(battery, "submission-auth")


def test_inbound_mx(battery: Battery) -> None:
    d = battery.d
    with RawSMTP(d.ports["inbound"]) as c:
        c.greeting()
        c.ehlo("attacker.test")
        run(battery, "inbound", c, "attacker@evil.test", TRICKS)
        # And the same inside TLS.
        c.starttls(context(d))
        c.ehlo("attacker.test")
        run(battery, "inbound-tls", c, "attacker@evil.test", TRICKS)
    assert_no_remote_acceptance(battery, "inbound")
    assert_no_remote_acceptance(battery, "inbound-tls")


def test_relay_connector_without_may_relay(battery: Battery) -> None:
    with RawSMTP(battery.d.ports["nolocal"]) as c:
        c.greeting()
        c.ehlo("app.lan")
        run(battery, "nolocal", c, "app@example.test", TRICKS)
    assert_no_remote_acceptance(battery, "nolocal")


def test_relay_connector_with_may_relay_from_outside_its_clients(battery: Battery) -> None:
    for source in ("127.0.0.2", "127.1.2.3"):
        with RawSMTP(battery.d.ports["relayer"], source=source) as c:
            first = c.reply()
            assert (first.code, first.enhanced) == (554, "5.7.1"), first
            c.send(b"EHLO attacker.test\r\nMAIL FROM:<app@example.test>\r\n"
                   b"RCPT TO:<carol@remote.test>\r\nDATA\r\n")
            with pytest.raises(ServerClosed):
                c.reply()
    assert_no_remote_acceptance(battery, "relayer")


def test_the_battery_can_see_a_relay(battery: Battery) -> None:
    """The oracle itself: the same connector from inside its clients does relay, and the
    counting above would have seen it (a battery that cannot fail proves nothing)."""
    d = battery.d
    with RawSMTP(d.ports["relayer"]) as c:
        c.greeting()
        c.ehlo("app.lan")
        assert run(battery, "control", c, "app@example.test",
                   [Trick(b"<carol@remote.test>")]) == 1
    assert eventually(lambda: len(battery.internet.messages) == 1, WAIT)
    assert battery.planner.recipients == ["carol@remote.test"]
    assert [q for q in battery.dns.queries if q[1] == "MX"] != []
    # Reset the oracle for any test that runs after this one.
    battery.planner.recipients.clear()
    battery.internet.messages.clear()
    battery.internet.connections = 0
    battery.dns.queries.clear()
