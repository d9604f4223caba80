"""The idle timeout counts from the last bytes received, so a slow upload is not cut off."""

from __future__ import annotations

import time

from tests.support.daemon import RunningDaemon


def test_slow_data_upload_outlives_idle_timeout(make_daemon) -> None:  # type: ignore[no-untyped-def]
    d: RunningDaemon = make_daemon(submission={"idle_timeout": 1.0})
    s = d.smtp()
    s.login("alice", "alice-secret-pw")
    s.ehlo()
    assert s.mail("alice@example.test")[0] == 250
    assert s.rcpt("bob@example.test")[0] == 250
    assert s.docmd("DATA")[0] == 354
    s.send(b"From: alice@example.test\r\nSubject: slow\r\n\r\n")
    for i in range(8):  # 8 x 0.3 s = 2.4 s in all, more than twice the idle timeout
        time.sleep(0.3)
        s.send(b"chunk %d\r\n" % i)
    s.send(b".\r\n")
    code, text = s.getreply()
    assert code == 250, text
    s.quit()
    [f] = d.maildir_files("bob")
    assert f.read_bytes().endswith(b"chunk 7\r\n")
