"""Let's Encrypt's ACME test server (Debian package `pebble`) on loopback, for the ACME tests.

    with Pebble(tmp_path, ca, names=["mail.example.test"], tls_port=p) as pebble:
        pebble.directory   # https://127.0.0.1:PORT/dir, served with a certificate from `ca`
        pebble.root_pem()  # the root that signs what it issues (new at every start)

Its validation authority resolves names through a DnsZoneServer of ours (every name given
resolves to 127.0.0.1) and connects for TLS-ALPN-01 to `tls_port`, for HTTP-01 to
`http_port`, on loopback only. No sleeps before validation (PEBBLE_VA_NOSLEEP), no nonces
rejected at random, no authorizations reused (so a renewal is validated again).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import trustme

from tests.support.dns_zone_server import DnsZoneServer

PEBBLE = shutil.which("pebble")
START_TIMEOUT = 20.0


def free_port() -> int:
    """A port free on 127.0.0.1 now (pebble must be told ports before things listen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pebble:
    def __init__(self, root: Path, ca: trustme.CA, *, names: Sequence[str], tls_port: int,
                 http_port: int | None = None) -> None:
        self.root = root
        self.ca = ca
        self.port = free_port()
        self.management_port = free_port()
        self.tls_port = tls_port
        self.http_port = http_port or free_port()
        self.dns = DnsZoneServer({n: {"A": ["127.0.0.1"]} for n in names})
        self.ca_file = root / "pebble-https-ca.pem"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "pebble.log"

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        assert PEBBLE is not None, "pebble is not installed"
        self.root.mkdir(parents=True, exist_ok=True)
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self.root / "pebble.key"))
        leaf.cert_chain_pems[0].write_to_path(str(self.root / "pebble.crt"))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.root / "pebble.crt"),
            "privateKey": str(self.root / "pebble.key"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        (self.root / "pebble.json").write_text(json.dumps(config))
        self.dns.start()
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0", "PEBBLE_VA_ALWAYS_VALID": "0"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PEBBLE, "-config", str(self.root / "pebble.json"), "-strict=false",
                 "-dnsserver", f"127.0.0.1:{self.dns.port}"],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._get(self.directory)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("pebble did not start: " + self.log.read_text()) \
                        from None
                time.sleep(0.1)

    def _get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(url, context=ctx, timeout=5) as response:
            return bytes(response.read())

    def root_pem(self) -> bytes:
        """The root certificate of this run (RFC 8555 does not say; pebble's /roots/0)."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.dns.stop()

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
