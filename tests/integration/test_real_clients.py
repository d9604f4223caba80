"""swaks and curl, the tools administrators actually use, against the real daemon."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import HOSTNAME, RunningDaemon

pytestmark = pytest.mark.skipif(not (shutil.which("swaks") and shutil.which("curl")),
                                reason="swaks and curl are installed by scripts/check.sh")


def ca_file(d: RunningDaemon) -> str:
    path = d.root / "ca.pem"
    d.ca.cert_pem.write_to_path(str(path))
    return str(path)


def swaks(d: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["swaks", "--server", "localhost", "--helo", "client.test",
                           "--tls-verify", "--tls-ca-path", ca_file(d), *args],
                          capture_output=True, text=True, timeout=60)


def test_swaks_starttls_auth_plain_delivers(daemon: RunningDaemon) -> None:
    r = swaks(daemon, "--port", str(daemon.submission_port), "--tls", "--auth", "PLAIN",
              "--auth-user", "alice@example.test", "--auth-password", "alice-secret-pw",
              "--from", "alice@example.test", "--to", "bob@example.test",
              "--header", "Subject: via swaks")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0 Ok: queued as" in r.stdout
    [f] = daemon.maildir_files("bob")
    assert b"Subject: via swaks" in f.read_bytes()


def test_swaks_implicit_tls_auth_login(daemon: RunningDaemon) -> None:
    r = swaks(daemon, "--port", str(daemon.submissions_port), "--tlsc", "--auth", "LOGIN",
              "--auth-user", "bob", "--auth-password", "bob-secret-pw-2",
              "--from", "bob@example.test", "--to", "alice@example.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(daemon.maildir_files("alice")) == 1


def test_swaks_without_tls_cannot_authenticate(daemon: RunningDaemon) -> None:
    r = swaks(daemon, "--port", str(daemon.submission_port), "--auth", "PLAIN",
              "--auth-user", "alice", "--auth-password", "alice-secret-pw",
              "--from", "alice@example.test", "--to", "bob@example.test")
    assert r.returncode != 0
    assert "235" not in r.stdout
    assert daemon.maildir_files("bob") == []


def test_swaks_wrong_password(daemon: RunningDaemon) -> None:
    r = swaks(daemon, "--port", str(daemon.submission_port), "--tls", "--auth", "PLAIN",
              "--auth-user", "alice", "--auth-password", "nope", "--timeout", "15",
              "--from", "alice@example.test", "--to", "bob@example.test")
    assert r.returncode != 0
    assert "535 5.7.8" in r.stdout


def curl(d: RunningDaemon, scheme: str, port: int, msg: Path,
         *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--url", f"{scheme}://{HOSTNAME}:{port}",
         "--resolve", f"{HOSTNAME}:{port}:127.0.0.1", "--cacert", ca_file(d),
         "--upload-file", str(msg), *args],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_curl_submits(daemon: RunningDaemon, tmp_path: Path, scheme: str) -> None:
    msg = tmp_path / "msg.eml"
    msg.write_bytes(b"From: alice@example.test\r\nTo: bob@example.test\r\n"
                    b"Subject: curl\r\n\r\nhi\r\n")
    port = daemon.submission_port if scheme == "smtp" else daemon.submissions_port
    extra = ["--ssl-reqd"] if scheme == "smtp" else []
    r = curl(daemon, scheme, port, msg, *extra, "--user", "alice:alice-secret-pw",
             "--mail-from", "alice@example.test", "--mail-rcpt", "bob@example.test")
    assert r.returncode == 0, r.stderr
    [f] = daemon.maildir_files("bob")
    stored = f.read_bytes()
    header, body = msg.read_bytes().split(b"\r\n\r\n")
    # The header section as sent, then the fields RFC 6409 §8 lets us add, then the body.
    assert header + b"\r\nDate: " in stored
    assert b"\r\nMessage-ID: <" in stored
    assert stored.endswith(b"\r\n\r\n" + body)


def test_curl_spoofed_sender_refused(daemon: RunningDaemon, tmp_path: Path) -> None:
    msg = tmp_path / "msg.eml"
    msg.write_bytes(b"From: ceo@example.test\r\n\r\npay this invoice\r\n")
    r = curl(daemon, "smtp", daemon.submission_port, msg, "--ssl-reqd",
             "--user", "alice:alice-secret-pw", "--mail-from", "ceo@example.test",
             "--mail-rcpt", "bob@example.test")
    assert r.returncode != 0
    assert daemon.maildir_files("bob") == []
