"""The built-in ACME client (RFC 8555) against a real ACME server: pebble on loopback.

The daemon starts at once with a self-signed placeholder, obtains a certificate by answering
TLS-ALPN-01 (RFC 8737) on its own implicit-TLS listener, serves it without a restart, and
renews it (SIGHUP makes it look; renew_before_days longer than pebble's 5-year certificates
makes it due), the new one again reaching new connections without a restart. HTTP-01 is
answered by the daemon's own plain-HTTP autoconfig listener, and through
acme_http01_response() by a minimal HTTP server of the test's own. Skipped where the
Debian package pebble is not installed (scripts/check.sh installs it).
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mailkeep.tls.acme import (
    AcmeIssuer,
    AcmeProblem,
    Http01Responder,
    TlsAlpnResponder,
    acme_http01_response,
)
from mailkeep.tls.context import TlsContexts
from tests.integration.test_cli import mk
from tests.support.daemon import (
    HOSTNAME,
    start_process_daemon,
    start_thread_daemon,
    toml_value,
    write_config,
)
from tests.support.pebble import PEBBLE, Pebble, free_port

needs_pebble = pytest.mark.skipif(PEBBLE is None, reason="the Debian package pebble (an ACME "
                                  "test server) is not installed; scripts/check.sh installs it")
# Bounds: pebble validates and issues in about a second; nothing here waits longer than this.
ISSUE_TIMEOUT = 60.0


def acme_site(root: Path, ca: trustme.CA, *, implicit_port: int, directory: str,
              ca_file: Path, renew_before_days: int = 30) -> Path:
    """The test daemon's config with [tls.acme] as the default certificate (no tls.cert)
    and its implicit-TLS listener on the port pebble validates on."""
    config = write_config(root, ca)
    text = config.read_text()
    text = text.replace('cert = "certs/mailkeep.crt"\nkey = "certs/mailkeep.key"\n', "")
    head, _, tail = text.partition("[listeners.submissions]")
    tail = tail.replace('bind = ["127.0.0.1:0"]', f'bind = ["127.0.0.1:{implicit_port}"]', 1)
    acme = {"directory": directory, "ca_file": str(ca_file), "email": "postmaster@example.test",
            "renew_before_days": renew_before_days}
    text = (head + "[listeners.submissions]" + tail + "\n[tls.acme]\n"
            + "".join(f"{k} = {toml_value(v)}\n" for k, v in acme.items()))
    config.write_text(text)
    return config


def served(port: int, name: str = HOSTNAME, *, starttls: bool = False) -> x509.Certificate:
    """The certificate a client sees (no verification: the placeholder is self-signed)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        if starttls:
            f = raw.makefile("rb")
            f.readline()
            raw.sendall(b"EHLO client.example\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220")
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def verified_by(root_pem: bytes, port: int) -> str:
    """Handshake trusting only pebble's root, checking the hostname; the leaf's sha256."""
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of the leaf: the first certificate of the full chain in `path`.
    (ssl.PEM_cert_to_DER_cert reads one PEM block only: given the chain, it decoded both
    blocks and the text between them as one, which failed now and then on the padding.)"""
    leaf = x509.load_pem_x509_certificate(path.read_bytes())
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()


def wait_until(predicate: Callable[[], bool], what: str,
               timeout: float = ISSUE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


@pytest.fixture
def implicit_port() -> int:
    return free_port()


@pytest.fixture
def pebble(tmp_path: Path, ca: trustme.CA, implicit_port: int) -> Iterator[Pebble]:
    if PEBBLE is None:
        pytest.skip("the Debian package pebble is not installed")
    with Pebble(tmp_path / "pebble", ca, names=[HOSTNAME], tls_port=implicit_port) as server:
        yield server


@needs_pebble
def test_obtain_then_renew_hot_swapped_in_a_real_process(
        tmp_path: Path, ca: trustme.CA, pebble: Pebble, implicit_port: int) -> None:
    config = acme_site(tmp_path / "site", ca, implicit_port=implicit_port,
                       directory=pebble.directory, ca_file=pebble.ca_file,
                       renew_before_days=3650)  # > pebble's 5-year lifetime: always due
    running = start_process_daemon(config, ca)
    try:
        cert_file = tmp_path / "site" / "data" / "acme" / "cert.pem"
        submission = running.ports["submission"]
        # Obtained at start (the placeholder served meanwhile), answered on our own 465.
        wait_until(lambda: not is_self_signed(x509.load_pem_x509_certificate(
            cert_file.read_bytes())), "the first certificate")
        first = file_sha256(cert_file)
        wait_until(lambda: verified_by(pebble.root_pem(), implicit_port) == first,
                   "the first certificate to be served")
        leaf = served(submission, starttls=True)  # the STARTTLS door gets it too
        assert hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest() == first
        assert leaf.issuer != leaf.subject
        log = (tmp_path / "site" / "daemon.log").read_text()
        assert "SELF-SIGNED PLACEHOLDER" in log

        # Renewal: SIGHUP makes the daemon look; the certificate is due; a new one is
        # obtained (a new validation: pebble reuses no authorization) and hot-swapped.
        assert running.proc is not None
        running.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: file_sha256(cert_file) != first, "the renewed certificate")
        second = file_sha256(cert_file)
        wait_until(lambda: verified_by(pebble.root_pem(), implicit_port) == second,
                   "the renewed certificate to be served")
        assert hashlib.sha256(served(submission, starttls=True).public_bytes(
            Encoding.DER)).hexdigest() == second
        assert running.proc.poll() is None  # the same process all along
        log = (tmp_path / "site" / "daemon.log").read_text()
        assert log.count("ACME: new certificate for mail.example.test") == 2
        assert "renewed at every check" in log  # the absurd renew_before_days is flagged
    finally:
        running.stop()


@needs_pebble
def test_thread_daemon_counts_issuance_and_cert_show_reports_it(
        tmp_path: Path, ca: trustme.CA, pebble: Pebble, implicit_port: int,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailkeep")
    config = acme_site(tmp_path / "site", ca, implicit_port=implicit_port,
                       directory=pebble.directory, ca_file=pebble.ca_file)
    running = start_thread_daemon(config, ca)
    try:
        assert running.daemon is not None and running.daemon.acme is not None
        acme = running.daemon.acme
        wait_until(lambda: acme.issued == 1, "the first certificate")
        assert acme.failures == 0 and acme.last_error is None
        # Not due (30 days before a 5-year expiry): SIGHUP looks and leaves it alone.
        before = file_sha256(config.parent / "data" / "acme" / "cert.pem")
        assert running.loop is not None
        running.loop.call_soon_threadsafe(running.daemon.reload)
        wait_until(lambda: any("SIGHUP" in r.getMessage() for r in caplog.records), "SIGHUP")
        time.sleep(0.5)  # give a wrong renewal the chance to show itself
        assert acme.issued == 1
        assert file_sha256(config.parent / "data" / "acme" / "cert.pem") == before
    finally:
        running.stop()
    out = mk("cert", "show", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "managed by:  ACME https://127.0.0.1:" in out.stdout
    assert "tls-alpn-01, for mail.example.test; renewed 30 days before expiry, next " \
           "renewal from" in out.stdout
    assert "status:      OK for mail.example.test" in out.stdout
    assert "Pebble Intermediate" in out.stdout


@needs_pebble
def test_failed_validation_is_reported_with_the_cas_reason(
        tmp_path: Path, ca: trustme.CA, pebble: Pebble) -> None:
    """Nothing answers on pebble's tlsPort: the CA's problem document is in the error."""
    issuer = AcmeIssuer(pebble.directory, tmp_path / "account.key",
                        TlsAlpnResponder(TlsContexts(HOSTNAME)), ca_file=pebble.ca_file)
    with pytest.raises(AcmeProblem, match=r"validation failed: mail\.example\.test: .*"
                                          r"unauthorized.*tls-alpn-01"):
        issuer.issue([HOSTNAME])
    # The account key was created 0600 and is reused by the next attempt.
    assert (tmp_path / "account.key").stat().st_mode & 0o777 == 0o600


@needs_pebble
def test_http01_through_acme_http01_response(tmp_path: Path, ca: trustme.CA) -> None:
    """HTTP-01 (RFC 8555 §8.3) answered by an HTTP server that does what the autoconfig
    listener does: ask acme_http01_response(path), else 404."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = acme_http01_response(self.path)
            seen.append(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Pebble(tmp_path / "pebble", ca, names=[HOSTNAME], tls_port=free_port(),
                    http_port=server.server_address[1]) as pebble:
            issuer = AcmeIssuer(pebble.directory, tmp_path / "account.key", Http01Responder(),
                                ca_file=pebble.ca_file)
            issued = issuer.issue([HOSTNAME])
        leaf = x509.load_pem_x509_certificates(issued.fullchain_pem)[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [HOSTNAME]
        assert seen and all(p.startswith("/.well-known/acme-challenge/") for p in seen)
        # Answered during validation only: the token is gone afterwards.
        assert acme_http01_response(seen[0]) is None
        assert acme_http01_response("/index.html") is None
    finally:
        server.shutdown()
        server.server_close()


@needs_pebble
def test_http01_answered_by_the_daemons_own_autoconfig_listener(
        tmp_path: Path, ca: trustme.CA, implicit_port: int) -> None:
    """challenge = "http-01": pebble fetches the token from the daemon's plain-HTTP
    autoconfig listener (RFC 8555 §8.3), which answers it before its other routes."""
    http_port = free_port()
    with Pebble(tmp_path / "pebble", ca, names=[HOSTNAME], tls_port=free_port(),
                http_port=http_port) as pebble:
        config = acme_site(tmp_path / "site", ca, implicit_port=implicit_port,
                           directory=pebble.directory, ca_file=pebble.ca_file)
        text = config.read_text().replace(
            "[tls.acme]\n", '[tls.acme]\nchallenge = "http-01"\n', 1)
        # An autoconfig listener needs a way in to advertise: an IMAP door too.
        text += ('\n[listeners.imaps]\nprotocol = "imap"\ntls = "implicit"\n'
                 'bind = ["127.0.0.1:0"]\n'
                 f'\n[listeners.autoconfig]\nprotocol = "autoconfig"\ntls = "none"\n'
                 f'bind = ["127.0.0.1:{http_port}"]\n')
        config.write_text(text)
        running = start_thread_daemon(config, ca)
        try:
            assert running.daemon is not None and running.daemon.acme is not None
            acme = running.daemon.acme
            wait_until(lambda: acme.issued == 1 or acme.failures > 0, "the certificate")
            assert acme.failures == 0, acme.last_error
            first = file_sha256(config.parent / "data" / "acme" / "cert.pem")
            wait_until(lambda: verified_by(pebble.root_pem(), implicit_port) == first,
                       "the certificate to be served")
            # No challenge pending: the same path is a plain 404, autoconfig still served.
            with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
                s.sendall(b"GET /.well-known/acme-challenge/x HTTP/1.1\r\n"
                          b"Host: mail.example.test\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 404 ")
        finally:
            running.stop()


def test_unreachable_ca_serves_the_placeholder_and_retries(
        tmp_path: Path, ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    """No pebble needed: the CA refuses connections. The daemon starts at once with the
    placeholder on every door, logs why, and schedules a retry (it does not spin)."""
    caplog.set_level(logging.INFO, logger="mailkeep.acme")
    port = free_port()
    closed = free_port()
    config = acme_site(tmp_path / "site", ca, implicit_port=port,
                       directory=f"https://127.0.0.1:{closed}/dir", ca_file=ca_path(tmp_path, ca))
    running = start_thread_daemon(config, ca)
    try:
        assert is_self_signed(served(port))
        assert is_self_signed(served(running.ports["submission"], starttls=True))
        assert running.daemon is not None and running.daemon.acme is not None
        acme = running.daemon.acme
        wait_until(lambda: acme.failures >= 1, "the first failure", timeout=30)
        assert acme.issued == 0 and acme.last_error
        messages = [r.getMessage() for r in caplog.records]
        assert any("SELF-SIGNED PLACEHOLDER" in m for m in messages)
        assert any("ACME: no certificate for mail.example.test (attempt 1)" in m
                   and "retrying in 600 s" in m for m in messages)
        time.sleep(0.5)
        assert acme.failures == 1  # backing off, not retrying in a loop
    finally:
        running.stop()


def ca_path(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
