"""Certificate renewal without restart, users-file changes, graceful SIGTERM."""

from __future__ import annotations

import hashlib
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import (
    HOSTNAME,
    USERS,
    RunningDaemon,
    start_process_daemon,
    write_config,
    write_users,
)


def served_fingerprint(d: RunningDaemon, port: int) -> str:
    ctx = d.client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


def file_fingerprint(path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_renewed_certificate_is_served_without_restart(daemon: RunningDaemon) -> None:
    cert = daemon.root / "certs" / "mailkeep.crt"
    key = daemon.root / "certs" / "mailkeep.key"
    old = served_fingerprint(daemon, daemon.submissions_port)
    assert old == file_fingerprint(cert)
    # An open session carries on across the renewal.
    s = daemon.smtp()
    s.login("alice", "alice-secret-pw")
    renewed = daemon.ca.issue_cert(HOSTNAME)
    renewed.private_key_pem.write_to_path(str(key))
    renewed.cert_chain_pems[0].write_to_path(str(cert))
    new = file_fingerprint(cert)
    assert new != old
    assert wait_for(lambda: served_fingerprint(daemon, daemon.submissions_port) == new)
    # STARTTLS on 587 gets the new one too.
    s2 = daemon.smtp()
    der = s2.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None and hashlib.sha256(der).hexdigest() == new
    s2.quit()
    msg = b"From: alice@example.test\r\n\r\nx\r\n"
    assert s.sendmail("alice@example.test", ["bob@example.test"], msg) == {}
    s.quit()


def test_broken_renewal_is_refused_and_old_certificate_keeps_serving(
        daemon: RunningDaemon, caplog: pytest.LogCaptureFixture) -> None:
    cert = daemon.root / "certs" / "mailkeep.crt"
    old = served_fingerprint(daemon, daemon.submissions_port)
    # A certificate that does not match the key on disk (half-finished renewal).
    other = daemon.ca.issue_cert(HOSTNAME)
    other.cert_chain_pems[0].write_to_path(str(cert))
    assert wait_for(lambda: any("TLS reload refused" in r.getMessage() for r in caplog.records))
    assert served_fingerprint(daemon, daemon.submissions_port) == old
    # Garbage is refused too.
    cert.write_text("not a certificate\n")
    time.sleep(0.5)
    assert served_fingerprint(daemon, daemon.submissions_port) == old
    s = daemon.smtps()
    s.login("bob", "bob-secret-pw-2")
    s.quit()


def test_users_file_changes_apply_without_restart(daemon: RunningDaemon) -> None:
    users = dict(USERS)
    users["carol"] = ("carol-secret-pw", ["carol@example.test"], False)
    del users["bob"]
    write_users(daemon.root / "users.toml", users)
    # The file is looked at once a second at most.
    def carol_works() -> bool:
        s = daemon.smtp()
        try:
            s.login("carol", "carol-secret-pw")
            return True
        except smtplib.SMTPAuthenticationError:
            return False
        finally:
            s.close()
    assert wait_for(carol_works)
    s = daemon.smtp()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        s.login("bob", "bob-secret-pw-2")
    s.close()
    # A broken users file keeps the last good one.
    (daemon.root / "users.toml").write_text("[users.x\n")
    time.sleep(1.2)
    s = daemon.smtp()
    s.login("carol", "carol-secret-pw")
    s.quit()


@pytest.fixture
def proc_daemon(tmp_path: Path, ca: trustme.CA):  # type: ignore[no-untyped-def]
    config = write_config(tmp_path, ca, extra_top={"shutdown_grace": 5.0})
    d = start_process_daemon(config, ca)
    yield d
    d.stop()


def test_sighup_reloads_certificate(proc_daemon: RunningDaemon) -> None:
    d = proc_daemon
    text = (d.root / "mailkeep.toml").read_text().replace("reload_interval = 0.2",
                                                          "reload_interval = 3600")
    assert text != (d.root / "mailkeep.toml").read_text()
    d.stop()
    (d.root / "mailkeep.toml").write_text(text)
    d2 = start_process_daemon(d.root / "mailkeep.toml", d.ca)
    try:
        renewed = d.ca.issue_cert(HOSTNAME)
        renewed.private_key_pem.write_to_path(str(d.root / "certs" / "mailkeep.key"))
        renewed.cert_chain_pems[0].write_to_path(str(d.root / "certs" / "mailkeep.crt"))
        new = file_fingerprint(d.root / "certs" / "mailkeep.crt")
        time.sleep(0.3)
        assert served_fingerprint(d2, d2.submissions_port) != new  # no polling: still old
        assert d2.proc is not None
        d2.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: served_fingerprint(d2, d2.submissions_port) == new)
    finally:
        d2.stop()


def test_sigterm_lets_transaction_finish_and_closes_idle(proc_daemon: RunningDaemon) -> None:
    d = proc_daemon
    idle = d.smtp()
    idle.login("bob", "bob-secret-pw-2")
    busy = d.smtp()
    busy.login("alice", "alice-secret-pw")
    busy.ehlo()
    busy.mail("alice@example.test")
    busy.rcpt("bob@example.test")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    # The idle session is told and closed.
    assert idle.getreply()[0] == 421
    # The session in a transaction may finish it...
    code, _ = busy.data(b"From: alice@example.test\r\nSubject: last\r\n\r\nbye\r\n")
    assert code == 250
    # ...and is then closed too.
    with pytest.raises(smtplib.SMTPServerDisconnected):
        busy.noop()
        busy.noop()
    assert d.proc.wait(15) == 0
    files = d.maildir_files("bob")
    assert len(files) == 1 and files[0].read_bytes().endswith(b"bye\r\n")
    assert not any((d.data_dir / "mail" / "bob" / "tmp").iterdir())
    # New connections are refused once stopping began.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.submission_port), timeout=2).recv(100)
