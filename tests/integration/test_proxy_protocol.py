"""PROXY protocol behind a real haproxy (Debian package): the real client address drives
limits, logs and Received headers on every door, STARTTLS ones included; a header from an
address outside trusted_proxies closes the connection."""

from __future__ import annotations

import contextlib
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import HOSTNAME, RunningDaemon, start_thread_daemon, write_config
from tests.support.imap import RawImap
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="haproxy is not installed (scripts/check.sh installs it)")

DOORS = ("submission", "submissions", "imaps", "imap", "pop3s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, ca: trustme.CA, trusted: list[str], **security: object) -> Path:
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True,
                          extra_top={"trusted_proxies": trusted},
                          security=dict(security) or None)
    text = config.read_text()
    for door in DOORS:
        text = text.replace(f"[listeners.{door}]\n", f"[listeners.{door}]\nproxy_protocol = true\n")
    config.write_text(text)
    return config


@contextlib.contextmanager
def _haproxy(tmp_path: Path, d: RunningDaemon, version: str) -> Iterator[dict[str, int]]:
    """haproxy in TCP mode in front of each door, sending PROXY `version` ("v1"/"v2")."""
    send = "send-proxy" if version == "v1" else "send-proxy-v2"
    fronts = {door: _free_port() for door in DOORS}
    lines = ["global", "  maxconn 200", "defaults", "  mode tcp", "  timeout connect 5s",
             "  timeout client 30s", "  timeout server 30s"]
    for door, port in fronts.items():
        lines += [f"frontend f_{door}", f"  bind 127.0.0.1:{port}", f"  default_backend b_{door}",
                  f"backend b_{door}", f"  server s 127.0.0.1:{d.ports[door]} {send}"]
    cfg = tmp_path / f"haproxy-{version}.cfg"
    cfg.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        for port in fronts.values():
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=1):
                    break
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline, "haproxy did not start"
                time.sleep(0.05)
        yield fronts
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def proxied(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    d = start_thread_daemon(_config(tmp_path, ca, ["127.0.0.1/32"],
                                    max_connections_per_ip=2), ca)
    try:
        yield d
    finally:
        d.stop()


def _closed(sock: socket.socket) -> bool:
    """The server closed (EOF) or reset the connection without saying anything."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def _budget_count(d: RunningDaemon, address: str) -> int:
    assert d.daemon is not None and d.daemon.services is not None
    return d.daemon.services.budget.count(address)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_real_client_address_reaches_every_door(proxied: RunningDaemon, tmp_path: Path,
                                                     version: str) -> None:
    d = proxied
    with _haproxy(tmp_path, d, version) as fronts:
        ctx = d.client_context()
        # Implicit TLS through the proxy: the TLS handshake is mailkeep's own.
        imap = RawImap(fronts["imaps"], context=ctx, source="127.0.0.5")
        imap.greeting()
        imap.login("bob")
        assert eventually(lambda: _budget_count(d, "127.0.0.5") == 1)
        assert _budget_count(d, "127.0.0.1") == 0  # the proxy's address counts for nothing
        # STARTTLS through the proxy.
        plain = RawImap(fronts["imap"], source="127.0.0.6")
        plain.greeting()
        plain.starttls(ctx)
        plain.login("alice")
        assert eventually(lambda: _budget_count(d, "127.0.0.6") == 1)
        plain.close()
        # Submission on 587 (STARTTLS) from 127.0.0.7: the Received header names it.
        s = smtplib.SMTP("127.0.0.1", fronts["submission"], timeout=10,
                         source_address=("127.0.0.7", 0))
        s._host = HOSTNAME  # type: ignore[attr-defined]
        s.starttls(context=ctx)
        s.login("alice", "alice-secret-pw")
        s.sendmail("alice@example.test", ["bob@example.test"],
                   f"From: alice@example.test\r\nSubject: via {version}\r\n\r\nx\r\n".encode())
        s.quit()
        stored = [f.read_bytes() for f in d.maildir_files("bob")]
        assert any(b"([127.0.0.7])" in m and f"via {version}".encode() in m for m in stored)
        imap.close()


def test_limits_count_the_real_client_not_the_proxy(proxied: RunningDaemon,
                                                    tmp_path: Path) -> None:
    d = proxied
    with _haproxy(tmp_path, d, "v2") as fronts:
        ctx = d.client_context()
        held = [RawImap(fronts["imaps"], context=ctx, source="127.0.0.5") for _ in range(2)]
        for c in held:
            c.greeting()
        # The third from the same client is over max_connections_per_ip = 2: closed.
        third = socket.create_connection(("127.0.0.1", fronts["imaps"]), timeout=10,
                                         source_address=("127.0.0.5", 0))
        assert _closed(third)
        # Another client behind the same proxy is not affected.
        other = RawImap(fronts["imaps"], context=ctx, source="127.0.0.6")
        other.greeting()
        other.login("bob")
        other.close()
        for c in held:
            c.close()


def test_proxy_header_from_an_untrusted_address_is_refused(tmp_path: Path,
                                                           ca: trustme.CA) -> None:
    d = start_thread_daemon(_config(tmp_path, ca, ["127.0.0.2/32"]), ca)
    try:
        # haproxy connects from 127.0.0.1, which is not trusted: closed at once.
        with _haproxy(tmp_path, d, "v1") as fronts:
            s = socket.create_connection(("127.0.0.1", fronts["submission"]), timeout=10,
                                         source_address=("127.0.0.5", 0))
            assert _closed(s)
        # Someone forging a header directly: the same.
        s = socket.create_connection(("127.0.0.1", d.ports["submission"]), timeout=10)
        s.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 1234 587\r\n")
        assert _closed(s)
    finally:
        d.stop()


def test_a_trusted_proxy_without_a_header_is_closed(tmp_path: Path, ca: trustme.CA) -> None:
    d = start_thread_daemon(_config(tmp_path, ca, ["127.0.0.1/32"]), ca)
    try:
        s = socket.create_connection(("127.0.0.1", d.ports["submission"]), timeout=10)
        s.sendall(b"EHLO not-a-proxy-header\r\n")
        assert _closed(s)
    finally:
        d.stop()
