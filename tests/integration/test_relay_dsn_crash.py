"""kill -9 between a permanent failure and its bounce: the bounce is neither lost nor doubled.

A message to bob (local) and carol (remote, refused with 550) makes the runner log carol's
failure and owe alice a DSN. The daemon runs as a real process through
tests/support/killpoint.py, which sends SIGKILL to it at an exact point of that work:

- before-dsn-spooled: the failure is logged, the DSN not yet written;
- after-dsn-spooled:  the DSN is in the queue, the original's log does not say it was sent;
- after-notice-done:  the log says the DSN was sent, the original is not yet removed.

A plain `mailkeep serve` is then started on the same data_dir. Whatever the point, once the
queue has drained alice holds exactly one report about carol, bob exactly one copy, and the
upstream (carol's MX) never accepted the message.
"""

from __future__ import annotations

import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support import killpoint
from tests.support.daemon import RunningDaemon, start_process_daemon, write_config
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
from tests.support.upstream import Behaviour, Upstream
from tests.support.wait import eventually

# Bounds (never measurements).
WAIT = 30.0
DEATH_WAIT = 30.0
REFUSED = "550 5.1.1 carol is gone"


@pytest.fixture
def dns() -> Iterator[DnsStub]:
    with DnsStub(mx_zone()) as stub:
        yield stub


def send(d: RunningDaemon) -> None:
    """alice -> bob (local) and carol (refused remotely). The kill may come before the
    client has read every reply: the message is spooled by then either way."""
    s = d.smtp(timeout=10)
    try:
        s.login("alice", "alice-secret-pw")
        s.sendmail("alice@example.test", ["bob@example.test", "carol@partner.test"],
                   simple_message("doomed@t", to="bob@example.test, carol@partner.test"))
        s.quit()
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        pass
    finally:
        s.close()


@pytest.mark.parametrize("point", killpoint.POINTS)
def test_bounce_survives_kill_9(tmp_path: Path, ca: trustme.CA, dns: DnsStub,
                                point: str) -> None:
    with Upstream(Behaviour(rcpt={"carol@partner.test": REFUSED})) as up:
        config = write_config(tmp_path, ca, delivery=daemon_delivery(dns, up.port))
        d = start_process_daemon(config, ca, launcher=[
            sys.executable, killpoint.__file__, point])
        assert d.proc is not None
        try:
            send(d)
            d.proc.wait(DEATH_WAIT)  # it reached the point and died there
        finally:
            d.stop()
        assert d.proc.returncode == -9, "the daemon did not die at the kill point"
        assert up.messages == [] and up.connections >= 1
        assert spool_ids(d.data_dir), "nothing left in the queue: the kill came too late"

        d = start_process_daemon(config, ca)
        try:
            assert eventually(lambda: spool_ids(d.data_dir) == []
                              and mailbox_messages(d.data_dir, "alice") != [], WAIT), \
                (spool_ids(d.data_dir), (d.root / "daemon.log").read_text()[-3000:])
        finally:
            d.stop()

    reports = mailbox_messages(d.data_dir, "alice")
    assert len(reports) == 1, f"{len(reports)} reports to alice after a kill at {point}"
    dsn = parse_dsn(reports[0])
    carol = dsn.recipient("carol@partner.test")
    assert carol["Action"] == "failed" and carol["Status"] == "5.1.1"
    assert REFUSED in carol["Diagnostic-Code"]
    assert [r.fields["final-recipient"] for r in dsn.recipients] == ["rfc822; carol@partner.test"]
    assert message_ids(mailbox_messages(d.data_dir, "bob")) == ["doomed@t"]
    assert up.messages == []
