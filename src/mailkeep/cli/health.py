"""`mailkeep health`: every listener address answers as its protocol should (a container's
HEALTHCHECK, a monitoring script). Exit 0 when all do, 1 otherwise.

Each kind of listener has its probe: the mail doors' greetings (SMTP 220 on submission, the
inbound MX and application connectors; POP3 +OK; IMAP * OK), autoconfig's document, and the
admin listener's /readyz, which covers what the greetings cannot (the Maildirs writable, the
user directory reachable) and says what failed.
"""

from __future__ import annotations

import argparse
import socket
import ssl
from collections.abc import Callable

from mailkeep.cli.common import load_or_exit
from mailkeep.config.model import BindAddress, Config, ListenerConfig

# Seconds per connection, per read: a daemon that takes longer to greet is not healthy.
PROBE_TIMEOUT = 5.0
# An HTTP answer read at most (a /readyz answer lists a few failed checks).
MAX_HTTP_ANSWER = 64 * 1024
# A PROXY v1 header saying "this connection is the proxy's own" (HAProxy's health checks
# send the same): the daemon believes it only from trusted_proxies.
PROXY_LOCAL = b"PROXY UNKNOWN\r\n"
# What a healthy SMTP, POP3 or IMAP listener says first, and how to leave politely.
GREETINGS = {"submission": (b"220", b"QUIT\r\n"), "smtp": (b"220", b"QUIT\r\n"),
             "relay": (b"220", b"QUIT\r\n"), "pop3": (b"+OK", b"QUIT\r\n"),
             "imap": (b"* OK", b"h LOGOUT\r\n")}
HTTP_PROBES = {"autoconfig": ("HEAD", "/mail/config-v1.1.xml"), "admin": ("GET", "/readyz")}


class Unhealthy(Exception):
    """The listener answered wrongly, or not at all."""


def _probe_host(addr: BindAddress) -> str:
    """Where to reach a listener from this machine (a wildcard bind is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr.host, addr.host)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < MAX_HTTP_ANSWER:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _greeting(lst: ListenerConfig, sock: socket.socket, config: Config) -> str:
    expected, goodbye = GREETINGS[lst.protocol]
    greeting = sock.recv(512)
    if not greeting:
        raise Unhealthy("closed without a greeting" + (
            " (is this address in trusted_proxies?)" if lst.proxy_protocol else ""))
    if lst.protocol == "relay" and greeting.startswith(b"554"):
        # The connector answers, and refuses this machine: not in its `clients`.
        return "answers (this address is not in its clients)"
    if not greeting.startswith(expected):
        raise Unhealthy(f"unexpected greeting {greeting[:60]!r}")
    sock.sendall(goodbye)
    return ""


def _http(lst: ListenerConfig, sock: socket.socket, config: Config) -> str:
    method, path = HTTP_PROBES[lst.protocol]
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {config.hostname}\r\n"
                 "Connection: close\r\n\r\n".encode())
    answer = _read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200"):
        reasons = body.decode("utf-8", "replace").strip().replace("\n", "; ")
        raise Unhealthy(f"{status.decode('latin-1', 'replace') or 'no answer'}"
                        + (f": {reasons}" if reasons else ""))
    return "ready" if lst.protocol == "admin" else ""


PROBES: dict[str, Callable[[ListenerConfig, socket.socket, Config], str]] = {
    **dict.fromkeys(GREETINGS, _greeting), **dict.fromkeys(HTTP_PROBES, _http)}


def probe(config: Config, lst: ListenerConfig, addr: BindAddress,
          context: ssl.SSLContext) -> str:
    """A note on success ("" for none); Unhealthy or OSError on failure."""
    with socket.create_connection((_probe_host(addr), addr.port),
                                  timeout=PROBE_TIMEOUT) as raw:
        if lst.proxy_protocol:
            raw.sendall(PROXY_LOCAL)
        sock: socket.socket = raw
        if lst.tls == "implicit":
            sock = context.wrap_socket(raw, server_hostname=config.hostname)
        return PROBES[lst.protocol](lst, sock, config)


def cmd_health(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a health probe checks liveness, not identity
    failed = 0
    for lst in config.listeners:
        for addr in lst.bind:
            try:
                note = probe(config, lst, addr, context)
            except (OSError, Unhealthy) as exc:
                print(f"FAIL {lst.name} {addr}: {exc}")
                failed += 1
                continue
            print(f"ok {lst.name} {addr}" + (f": {note}" if note else ""))
    return 1 if failed else 0
