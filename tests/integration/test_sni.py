"""Several certificates chosen by SNI, seen by `openssl s_client -servername` on every door:
implicit TLS (465, 993) and STARTTLS (587 `-starttls smtp`, 143 `-starttls imap`)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.app import StartupError
from tests.support.daemon import (
    HOSTNAME,
    RunningDaemon,
    start_process_daemon,
    start_thread_daemon,
    write_config,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="openssl is not installed (scripts/check.sh installs it)")

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
SNI_TABLES = """
[tls.certificates.example-net]
cert = "certs/net.crt"
key = "certs/net.key"

[tls.certificates.example-org]
cert = "certs/org.crt"
key = "certs/org.key"
names = ["mail.example.org"]
"""


def s_client(port: int, name: str | None, starttls: str | None = None) -> str:
    """The sha256 of the certificate `openssl s_client` was shown."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"]
    cmd += ["-servername", name] if name else ["-noservername"]
    if starttls:
        cmd += ["-starttls", starttls]
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=20).stdout
    match = _PEM.search(out)
    assert match, out.decode(errors="replace")[-2000:]
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(match.group().decode())).hexdigest()


def pem_fingerprint(path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def write_sni_site(root: Path, ca: trustme.CA) -> Path:
    config = write_config(root, ca, imap_listeners=True)
    certs = root / "certs"
    for stem, names in (("net", ("mail.example.net", "*.example.net")),
                        ("org", ("mail.example.org", "smtp.example.org"))):
        leaf = ca.issue_cert(*names)
        leaf.private_key_pem.write_to_path(str(certs / f"{stem}.key"))
        leaf.cert_chain_pems[0].write_to_path(str(certs / f"{stem}.crt"))
    config.write_text(config.read_text() + SNI_TABLES)
    return config


@pytest.fixture
def sni_daemon(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    running = start_thread_daemon(write_sni_site(tmp_path, ca), ca, loop_kind)
    try:
        yield running
    finally:
        running.stop()


# name sent by the client -> which certificate it must get
EXPECTED = {
    "mail.example.net": "net",
    "imap.example.net": "net",          # *.example.net: one label
    "a.b.example.net": "default",       # two labels: not the wildcard (RFC 6125 §6.4.3)
    "mail.example.org": "org",
    "smtp.example.org": "default",      # in org's SAN, but names = ["mail.example.org"]
    HOSTNAME: "default",
    "unknown.example": "default",
    None: "default",                    # no SNI at all
}


@pytest.mark.parametrize(("door", "starttls"), [
    ("submissions", None), ("submission", "smtp"), ("imaps", None), ("imap", "imap"),
])
def test_each_name_gets_its_certificate_on_every_door(sni_daemon: RunningDaemon, door: str,
                                                      starttls: str | None) -> None:
    files = {"net": sni_daemon.root / "certs" / "net.crt",
             "org": sni_daemon.root / "certs" / "org.crt",
             "default": sni_daemon.root / "certs" / "mailkeep.crt"}
    fingerprints = {k: pem_fingerprint(v) for k, v in files.items()}
    assert len(set(fingerprints.values())) == 3
    port = sni_daemon.ports[door]
    seen = {name: s_client(port, name, starttls) for name in EXPECTED}
    assert seen == {name: fingerprints[which] for name, which in EXPECTED.items()}


def test_python_client_verifies_each_name(sni_daemon: RunningDaemon) -> None:
    """A verifying client (hostname check on) connects by each name without warnings."""
    ctx = sni_daemon.client_context()
    for name in ("mail.example.net", "pop.example.net", "mail.example.org", HOSTNAME):
        with socket.create_connection(("127.0.0.1", sni_daemon.submissions_port), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_renewed_sni_certificate_reaches_new_connections_on_sighup(
        tmp_path: Path, ca: trustme.CA) -> None:
    """A real process: the org certificate is renewed on disk; SIGHUP; s_client sees it."""
    running = start_process_daemon(write_sni_site(tmp_path, ca), ca)
    try:
        port = running.ports["submissions"]
        org = tmp_path / "certs" / "org.crt"
        assert s_client(port, "mail.example.org") == pem_fingerprint(org)
        leaf = ca.issue_cert("mail.example.org")
        leaf.private_key_pem.write_to_path(str(tmp_path / "certs" / "org.key.new"))
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "certs" / "org.crt.new"))
        os.replace(tmp_path / "certs" / "org.key.new", tmp_path / "certs" / "org.key")
        os.replace(tmp_path / "certs" / "org.crt.new", org)
        assert running.proc is not None
        running.proc.send_signal(signal.SIGHUP)
        new = pem_fingerprint(org)
        deadline = time.monotonic() + 15
        while s_client(port, "mail.example.org") != new:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.1)
        # the other names are untouched
        assert s_client(port, "mail.example.net") == pem_fingerprint(tmp_path / "certs" /
                                                                     "net.crt")
    finally:
        running.stop()


def test_cert_show_lists_every_certificate_with_its_names_and_doors(
        tmp_path: Path, ca: trustme.CA) -> None:
    config = write_sni_site(tmp_path, ca)
    out = subprocess.run([sys.executable, "-m", "mailkeep", "cert", "show", "--config",
                          str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("\n\n")
    assert len(blocks) == 3
    default, net, org = blocks
    assert "default for: submission (submission, starttls TLS" in default
    assert "imaps (imap, implicit TLS" in default
    assert "SNI:" not in default
    assert "SNI:         mail.example.net, *.example.net (on every listener; " \
           "tls.certificates.example-net)" in net
    assert "SNI:         mail.example.org (on every listener" in org
    assert "names (SAN): mail.example.org, smtp.example.org" in org
    for block in blocks:
        assert re.search(r"UTC \(\d+ days left\)", block)
        assert "sha256:" in block and "status:      OK" in block


def test_startup_names_the_broken_sni_certificate(tmp_path: Path, ca: trustme.CA) -> None:
    """Every problem keyed by the table that configures it; the daemon does not start."""
    config = write_sni_site(tmp_path, ca)
    text = config.read_text().replace('names = ["mail.example.org"]',
                                      'names = ["mail.example.org", "imap.example.org"]')
    config.write_text(text)
    (tmp_path / "certs" / "net.key").write_text("garbage")
    with pytest.raises(StartupError) as info:
        start_thread_daemon(config, ca)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("tls.certificates.example-net: ")
    assert "not an unencrypted PEM private key" in problems[0]
    assert problems[1].startswith("tls.certificates.example-org: ")
    assert "does not cover 'imap.example.org'" in problems[1]
    out = subprocess.run([sys.executable, "-m", "mailkeep", "check-config", "--config",
                          str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 78
    assert "tls.certificates.example-net: " in out.stderr
    assert "tls.certificates.example-org: " in out.stderr
