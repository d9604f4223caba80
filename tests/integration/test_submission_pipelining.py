"""RFC 2920 PIPELINING: a whole envelope in one write gets its replies in order."""

from __future__ import annotations

from tests.support.daemon import RunningDaemon
from tests.support.rawsmtp import ready_session


def test_pipelined_envelope_replies_in_order(daemon: RunningDaemon) -> None:
    with ready_session(daemon.submission_port, daemon.client_context()) as c:
        c.send(b"MAIL FROM:<alice@example.test>\r\n"
               b"RCPT TO:<bob@example.test>\r\n"
               b"RCPT TO:<nobody@example.test>\r\n"
               b"RCPT TO:<a.smith@example.test>\r\n"
               b"DATA\r\n")
        codes = [c.reply().code for _ in range(5)]
        assert codes == [250, 250, 550, 250, 354]
        c.send(b"From: alice@example.test\r\nSubject: pipelined\r\n\r\nbody\r\n.\r\n"
               b"MAIL FROM:<alice@example.test>\r\nRSET\r\nNOOP\r\n")
        assert [c.reply().code for _ in range(4)] == [250, 250, 250, 250]
    assert len(daemon.maildir_files("bob")) == 1
    assert len(daemon.maildir_files("alice")) == 1
