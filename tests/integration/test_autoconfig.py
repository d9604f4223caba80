"""The autoconfig listener of the real daemon, over real sockets: curl over HTTP and HTTPS
(verified against the test CA), HEAD, 404 and 405, the request limits from the attacker's
side, keep-alive, and the connection budget it shares with every other door.

Every wait is bounded by a socket timeout; nothing measures time.
"""

from __future__ import annotations

import contextlib
import plistlib
import shutil
import socket
import ssl
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.cli import main
from mailkeep.server.http import (
    MAX_BODY_OCTETS,
    MAX_HEAD_OCTETS,
    MAX_REQUESTS_PER_CONNECTION,
)
from tests.support.autoconfig import AUTOCONFIG_LISTENERS, start_autoconfig_daemon
from tests.support.daemon import HOSTNAME, RunningDaemon
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

TB_PATH = "/mail/config-v1.1.xml"
WELL_KNOWN = "/.well-known/autoconfig/mail/config-v1.1.xml"
AUTODISCOVER = "/autodiscover/autodiscover.xml"
OUTLOOK_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
OUTLOOK_REQUEST = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
    'requestschema/2006"><Request><EMailAddress>a.smith@example.test</EMailAddress>'
    "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/"
    "responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>")


@pytest.fixture
def site(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    running = start_autoconfig_daemon(tmp_path, ca, loop_kind)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def one_site(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    """asyncio only, with a short login timeout (the bound on every wait of this door)."""
    running = start_autoconfig_daemon(tmp_path, ca, security={"login_timeout": 1.0})
    try:
        yield running
    finally:
        running.stop()


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True,
                          timeout=30, check=False)


def http(d: RunningDaemon, path: str, listener: str = "autoconfig") -> str:
    return f"http://127.0.0.1:{d.ports[listener]}{path}"


def status(d: RunningDaemon, path: str, *args: str) -> str:
    result = curl("--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", *args, http(d, path))
    return result.stdout.decode()


def raw(d: RunningDaemon, data: bytes, *, listener: str = "autoconfig",
        pieces: int = 1) -> bytes:
    """Send `data` (in `pieces` writes), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", d.ports[listener]), timeout=10) as sock:
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            sock.sendall(data[i:i + step])
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _incoming_ports(document: bytes) -> list[tuple[str, str, str]]:
    provider = ET.fromstring(document).find("emailProvider")
    assert provider is not None
    return [(s.get("type", ""), s.findtext("port", ""), s.findtext("socketType", ""))
            for s in provider if s.tag in ("incomingServer", "outgoingServer")]


# -- the documents, fetched with curl -------------------------------------------------------------


def test_curl_fetches_thunderbird_config(site: RunningDaemon) -> None:
    result = curl("-D", "-", http(site, TB_PATH))
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Type: application/xml; charset=utf-8\r\n" in head
    p = site.ports
    # The real, bound ports of every door, implicit TLS first (all bound to port 0 here).
    assert _incoming_ports(body) == [
        ("imap", str(p["imaps"]), "SSL"), ("imap", str(p["imap"]), "STARTTLS"),
        ("pop3", str(p["pop3s"]), "SSL"), ("pop3", str(p["pop3"]), "STARTTLS"),
        ("smtp", str(p["submissions"]), "SSL"), ("smtp", str(p["submission"]), "STARTTLS"),
    ]
    for server in ET.fromstring(body).iter("hostname"):
        assert server.text == HOSTNAME
    well_known = curl(http(site, WELL_KNOWN + "?emailaddress=alice%40example.test"))
    assert well_known.stdout == body


def test_curl_https_verifies_the_certificate(site: RunningDaemon, tmp_path: Path) -> None:
    port = site.ports["autoconfigs"]
    result = curl("--cacert", str(tmp_path / "ca.pem"), "--resolve",
                  f"{HOSTNAME}:{port}:127.0.0.1", "-w", "\n%{http_code} %{scheme}",
                  f"https://{HOSTNAME}:{port}{TB_PATH}")
    assert result.returncode == 0, result.stderr
    body, _, tail = result.stdout.rpartition(b"\n")
    assert tail == b"200 HTTPS"
    assert body == curl(http(site, TB_PATH)).stdout
    # Without the CA, curl refuses (exit 60): it is the configured certificate serving.
    refused = curl("--resolve", f"{HOSTNAME}:{port}:127.0.0.1",
                   f"https://{HOSTNAME}:{port}{TB_PATH}")
    assert refused.returncode == 60


def test_head_has_the_headers_and_no_body(site: RunningDaemon) -> None:
    body = curl(http(site, TB_PATH)).stdout
    head = curl("-I", http(site, TB_PATH))
    assert head.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"\r\nContent-Length: {len(body)}\r\n".encode() in head.stdout
    # On the wire: headers, then nothing, then the close we asked for.
    answer = raw(site, f"HEAD {TB_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                 .encode())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("path", ["/", "/mail/", "/mail/config-v1.1.xml/", "/index.html",
                                  "/.well-known/", "/mail/../etc/passwd", "/%2e%2e/etc/passwd",
                                  "/autodiscover/", "/favicon.ico", "/.git/config"])
def test_nothing_else_is_served(one_site: RunningDaemon, path: str) -> None:
    assert status(one_site, path) == "404"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", TB_PATH, "GET, HEAD"), ("DELETE", TB_PATH, "GET, HEAD"),
    ("POST", TB_PATH, "GET, HEAD"), ("OPTIONS", WELL_KNOWN, "GET, HEAD"),
    ("PATCH", AUTODISCOVER, "GET, HEAD, POST"), ("PROPFIND", "/", "GET, HEAD"),
])
def test_other_methods_get_405(one_site: RunningDaemon, method: str, path: str,
                               allow: str) -> None:
    result = curl("-X", method, "-D", "-", "-o", "/dev/null", http(one_site, path))
    assert result.stdout.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert f"\r\nAllow: {allow}\r\n".encode() in result.stdout


def test_outlook_autodiscover_post(site: RunningDaemon) -> None:
    result = curl("-H", "Content-Type: text/xml; charset=utf-8", "--data-binary",
                  OUTLOOK_REQUEST, http(site, AUTODISCOVER))
    account = ET.fromstring(result.stdout).find(f"{OUTLOOK_NS}Response/{OUTLOOK_NS}Account")
    assert account is not None
    protocols = [(p.findtext(f"{OUTLOOK_NS}Type"), p.findtext(f"{OUTLOOK_NS}Port"),
                  p.findtext(f"{OUTLOOK_NS}LoginName"))
                 for p in account.iter(f"{OUTLOOK_NS}Protocol")]
    login = "a.smith@example.test"  # an alias of alice: login accepts any of her addresses
    assert protocols == [("IMAP", str(site.ports["imaps"]), login),
                         ("POP3", str(site.ports["pop3s"]), login),
                         ("SMTP", str(site.ports["submissions"]), login)]


def test_apple_profile(site: RunningDaemon) -> None:
    result = curl("-D", "-", http(site, "/email.mobileconfig?emailaddress=bob%40example.test"))
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert b"\r\nContent-Type: application/x-apple-aspen-config\r\n" in head
    (mail,) = plistlib.loads(body)["PayloadContent"]
    assert (mail["PayloadType"], mail["EmailAddress"], mail["IncomingMailServerPortNumber"],
            mail["OutgoingMailServerPortNumber"]) == (
        "com.apple.mail.managed", "bob@example.test", site.ports["imaps"],
        site.ports["submissions"])
    assert status(site, "/email.mobileconfig?emailaddress=bob%40elsewhere.test") == "404"
    assert status(site, "/email.mobileconfig") == "400"


# -- limits, from the attacker's side -------------------------------------------------------------


def _request_with_head_of(size: int, method: str = "GET", path: str = TB_PATH) -> bytes:
    start = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: ".encode()
    pad = size - len(start) - len(b"\r\n\r\n")
    return start + b"a" * pad + b"\r\n\r\n"


@pytest.mark.parametrize("pieces", [1, 9])
def test_request_head_limit(one_site: RunningDaemon, pieces: int) -> None:
    at_limit = _request_with_head_of(MAX_HEAD_OCTETS)
    assert len(at_limit) == MAX_HEAD_OCTETS
    assert raw(one_site, at_limit, pieces=pieces).startswith(b"HTTP/1.1 200 OK\r\n")
    past = raw(one_site, _request_with_head_of(MAX_HEAD_OCTETS + 1), pieces=pieces)
    assert past.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"\r\nConnection: close\r\n" in past


def test_endless_head_is_cut_off(one_site: RunningDaemon) -> None:
    """A client that never ends its headers is answered 431 and dropped once it passes the
    limit, without the server buffering what it sends after."""
    with socket.create_connection(("127.0.0.1", one_site.ports["autoconfig"]),
                                  timeout=10) as sock:
        sock.sendall(f"GET {TB_PATH} HTTP/1.1\r\nHost: x\r\n".encode())
        answer = b""
        try:
            for _ in range(100):  # at most 100 x 1 KiB: well past the 8 KiB limit
                sock.sendall(b"X-Pad: " + b"a" * 1017 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_request_body_limit(one_site: RunningDaemon) -> None:
    document = OUTLOOK_REQUEST.encode()
    at_limit = document + b" " * (MAX_BODY_OCTETS - len(document))
    head = (f"POST {AUTODISCOVER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Content-Type: text/xml\r\nContent-Length: {}\r\n\r\n")
    ok = raw(one_site, head.format(len(at_limit)).encode() + at_limit)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    # One past it: refused on the Content-Length alone, before any body is read.
    refused = raw(one_site, head.format(MAX_BODY_OCTETS + 1).encode())
    assert refused.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    # A chunked body is counted as it arrives.
    chunked = (f"POST {AUTODISCOVER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               "\r\n").encode() + (b"1000\r\n" + b" " * 4096 + b"\r\n") * 3 + b"0\r\n\r\n"
    assert raw(one_site, chunked).startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize("request_bytes", [
    b"garbage\r\n\r\n",
    b"GET /mail/config-v1.1.xml HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host (RFC 9112 §3.2)
    b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS hello
])
def test_malformed_requests_get_400_and_close(one_site: RunningDaemon,
                                              request_bytes: bytes) -> None:
    answer = raw(one_site, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in answer


def test_keep_alive_and_pipelining(one_site: RunningDaemon) -> None:
    one = f"GET {TB_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    last = f"HEAD {WELL_KNOWN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    # Two requests in one write, then a third: three answers on one connection.
    with socket.create_connection(("127.0.0.1", one_site.ports["autoconfig"]),
                                  timeout=10) as sock:
        sock.sendall(one + one)
        sock.sendall(last)
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert answers.count(b"</clientConfig>") == 2  # HEAD: no body


def test_requests_per_connection_limit(one_site: RunningDaemon) -> None:
    """The last allowed request is answered with Connection: close; one more is not read."""
    head = f"HEAD {TB_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", one_site.ports["autoconfig"]),
                                  timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head * (MAX_REQUESTS_PER_CONNECTION + 1))
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == MAX_REQUESTS_PER_CONNECTION
    assert answers.count(b"\r\nConnection: close\r\n") == 1
    assert answers.rpartition(b"HTTP/1.1 200 OK\r\n")[2].count(b"Connection: close") == 1


def test_absolute_form_target(one_site: RunningDaemon) -> None:
    """RFC 9112 §3.2.2: what a client behind a proxy (and Thunderbird's test) sends."""
    answer = raw(one_site, f"GET http://autoconfig.example.test{TB_PATH}?emailaddress=a%40"
                 "example.test HTTP/1.1\r\nHost: autoconfig.example.test\r\n"
                 "Connection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"</clientConfig>\n")


def test_slow_request_gets_408_and_idle_connection_closes(one_site: RunningDaemon) -> None:
    port = one_site.ports["autoconfig"]
    # Half a request, then silence past security.login_timeout (1 s here): 408, closed.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {TB_PATH} HTTP/1.1\r\nHost: x\r\n".encode())
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    # Silence between requests (or before the first): closed without a word.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {TB_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"</clientConfig>\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert read_until_closed(sock) == b""


# -- the connection budget, shared with every door ------------------------------------------------


def test_connection_limits_apply(tmp_path: Path, ca: trustme.CA) -> None:
    d = start_autoconfig_daemon(tmp_path, ca, security={"max_connections_per_ip": 2})
    try:
        port = d.ports["autoconfig"]
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            assert d.daemon is not None and d.daemon.services is not None
            budget = d.daemon.services.budget
            assert eventually(lambda: budget.total == 2)
            # A third plain-HTTP client is told 503 and closed, before any HTTP parsing.
            refused = raw(d, f"GET {TB_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert b"\r\nRetry-After: 60\r\n" in refused
            # HTTPS: closed before the handshake.
            ctx = ssl.create_default_context()
            d.ca.configure_trust(ctx)
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)), \
                    socket.create_connection(("127.0.0.1", d.ports["autoconfigs"]),
                                             timeout=10) as plain_sock, \
                    ctx.wrap_socket(plain_sock, server_hostname=HOSTNAME):
                pass
            # The same budget as the mail doors: IMAP is refused too.
            with socket.create_connection(("127.0.0.1", d.ports["imap"]), timeout=10) as s:
                assert b"too many connections" in read_until_closed(s).lower()
        finally:
            for sock in held:
                sock.close()
        # The slots come back when those clients leave.
        assert eventually(lambda: budget.total == 0)
        again = raw(d, f"GET {TB_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    .encode())
        assert again.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        d.stop()


# -- the command line ------------------------------------------------------------------------------


def _init_site(tmp_path: Path, *sans: str) -> Path:
    args = ["init", str(tmp_path / "site"), "--hostname", "mail.example.test",
            "--ports", "unprivileged", "--no-demo-user"]
    for name in sans:
        args += ["--san", name]
    assert main(args) == 0
    return tmp_path / "site" / "mailkeep.toml"


def test_dns_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _init_site(tmp_path)
    capsys.readouterr()
    assert main(["dns", "example.test", "--config", str(config)]) == 0
    before = capsys.readouterr().out
    assert "example.test.\tIN\tMX\t10 mail.example.test." in before
    assert "_imaps._tcp.example.test.\tIN\tSRV\t0 0 10993 mail.example.test." in before
    assert "_imap._tcp.example.test.\tIN\tSRV\t0 0 0 ." in before
    assert "_submissions._tcp.example.test.\tIN\tSRV\t0 0 10465 mail.example.test." in before
    assert "; none: no autoconfig listener is configured" in before
    assert 'example.test.\tIN\tTXT\t"v=spf1 mx -all"' in before
    config.write_text(config.read_text() + AUTOCONFIG_LISTENERS)
    assert main(["dns", "example.test", "--config", str(config)]) == 0
    after = capsys.readouterr().out
    assert "autoconfig.example.test.\tIN\tCNAME\tmail.example.test." in after
    assert "autodiscover.example.test.\tIN\tCNAME\tmail.example.test." in after
    assert main(["dns", "elsewhere.test", "--config", str(config)]) == 2
    assert "not a local domain" in capsys.readouterr().err


def test_check_config_warns_about_autoconfig_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _init_site(tmp_path)
    config.write_text(config.read_text() + AUTOCONFIG_LISTENERS)
    capsys.readouterr()
    assert main(["check-config", "--config", str(config)]) == 0  # a warning, not a failure
    err = capsys.readouterr().err
    assert "warning: listeners.autoconfigs: the certificate" in err
    assert "does not cover autoconfig.example.test, autodiscover.example.test" in err
    assert "listeners.autoconfig:" not in err  # plain HTTP: no certificate involved


def test_check_config_quiet_when_the_certificate_covers_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _init_site(tmp_path, "autoconfig.example.test", "autodiscover.example.test")
    config.write_text(config.read_text() + AUTOCONFIG_LISTENERS)
    capsys.readouterr()
    assert main(["check-config", "--config", str(config)]) == 0
    assert "warning" not in capsys.readouterr().err
