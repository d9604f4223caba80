"""Real POP3 clients against the daemon: curl (pop3s://) and fetchmail (Debian packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import HOSTNAME, RunningDaemon, start_thread_daemon, write_config
from tests.support.pop3 import message, running_pop3_daemon, submit


@pytest.fixture
def pop3d(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_pop3_daemon(tmp_path, ca, loop_kind)


def ca_file(d: RunningDaemon) -> str:
    path = d.root / "ca.pem"
    d.ca.cert_pem.write_to_path(str(path))
    return str(path)


def curl(d: RunningDaemon, path: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    port = d.pop3s_port
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--url", f"pop3s://{HOSTNAME}:{port}{path}",
         "--resolve", f"{HOSTNAME}:{port}:127.0.0.1", "--cacert", ca_file(d),
         "--user", "bob:bob-secret-pw-2", *args],
        capture_output=True, timeout=60)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is installed by scripts/check.sh")
def test_curl_lists_and_retrieves(pop3d: RunningDaemon) -> None:
    submit(pop3d, message("via curl", b".dotted\r\nplain\r\n"))
    [on_disk] = [f.read_bytes() for f in pop3d.maildir_files("bob")]
    r = curl(pop3d, "/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"1 {len(on_disk)}\r\n".encode()
    r = curl(pop3d, "/1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == on_disk
    r = curl(pop3d, "/", "--request", "UIDL")
    assert r.returncode == 0 and r.stdout.startswith(b"1 00000001")


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is installed by scripts/check.sh")
def test_curl_refuses_wrong_certificate_name(pop3d: RunningDaemon) -> None:
    port = pop3d.pop3s_port
    r = subprocess.run(["curl", "-sS", "--max-time", "30", "--url",
                        f"pop3s://wrong.example.test:{port}/", "--resolve",
                        f"wrong.example.test:{port}:127.0.0.1", "--cacert", ca_file(pop3d),
                        "--user", "bob:bob-secret-pw-2"], capture_output=True, timeout=60)
    assert r.returncode != 0


@pytest.mark.skipif(not shutil.which("fetchmail"),
                    reason="fetchmail is not installed (apt-get install fetchmail; .ci/run)")
def test_fetchmail_downloads_and_deletes_over_verified_tls(tmp_path: Path, ca: trustme.CA,
                                                           loop_kind: str) -> None:
    """Issue 3 "done when": fetchmail on 995 with TLS verified against the configured CA
    downloads mail submitted through 587, and deletes it (no --keep)."""
    root = tmp_path / "site"
    config = write_config(root, ca, pop3_listeners=True)
    # fetchmail 6.4 wants the name in the subject CN as well as in the SAN.
    leaf = ca.issue_cert(HOSTNAME, "127.0.0.1", common_name=HOSTNAME)
    leaf.private_key_pem.write_to_path(str(root / "certs/mailkeep.key"))
    leaf.cert_chain_pems[0].write_to_path(str(root / "certs/mailkeep.crt"))
    pop3d = start_thread_daemon(config, ca, loop_kind)
    try:
        fetch_and_check(pop3d, tmp_path)
    finally:
        pop3d.stop()


def fetch_and_check(pop3d: RunningDaemon, tmp_path: Path) -> None:
    submit(pop3d, message("fetch one", b".dot line\r\nbody one\r\n"))
    submit(pop3d, message("fetch two"))
    originals = [f.read_bytes() for f in pop3d.maildir_files("bob")]
    out = tmp_path / "fetched.mbox"
    home = tmp_path / "home"
    home.mkdir()
    rc = home / ".fetchmailrc"
    rc.write_text(
        f'set no syslog\n'
        f'poll {HOSTNAME} via 127.0.0.1 protocol pop3 service {pop3d.pop3s_port}\n'
        f'  user "bob" there with password "bob-secret-pw-2" is "bob" here\n'
        f'  ssl sslcertck sslcertfile "{ca_file(pop3d)}" sslcommonname "{HOSTNAME}"\n'
        f'  fetchall\n'
        f'  mda "/bin/sh -c \'cat >> {out}; echo ==END== >> {out}\'"\n')
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    r = subprocess.run(["fetchmail", "-v", "--nodetach", "-f", str(rc)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    fetched = out.read_bytes()
    assert fetched.count(b"==END==") == 2
    for original in originals:
        subject = next(ln for ln in original.split(b"\r\n") if ln.startswith(b"Subject:"))
        assert subject in fetched
    assert b"\n.dot line\n" in fetched.replace(b"\r\n", b"\n")  # un-stuffed by fetchmail
    assert pop3d.maildir_files("bob") == []  # deleted after download (no --keep)
