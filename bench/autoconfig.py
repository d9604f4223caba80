#!/usr/bin/env python3
"""Benchmark of the autoconfig listener: Thunderbird documents over HTTP and HTTPS.

    .venv/bin/python bench/autoconfig.py            # about 20 seconds
    .venv/bin/python bench/autoconfig.py --seconds 2

It writes a throw-away config with `mailkeep init` (every listener on 127.0.0.1, ephemeral
ports), adds a plain-HTTP and an HTTPS autoconfig listener, starts `mailkeep serve` as a
subprocess and fetches /mail/config-v1.1.xml with --clients asyncio clients.

Figures, one line each (nothing is asserted about time):

  autoconfig.keepalive  requests/s, each client on one kept-alive connection (the daemon
                        closes it after 100 requests; the client reconnects)
  autoconfig.http       requests/s, a new connection per request (Connection: close)
  autoconfig.https      requests/s, a new TLS connection per request

Each level is bounded by --seconds and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REQUEST = b"GET /mail/config-v1.1.xml HTTP/1.1\r\nHost: autoconfig.example.test\r\n"


async def _response(reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    return b"connection: close" in head.lower()


async def keepalive(port: int, deadline: float) -> int:
    done = 0
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        closed = False
        while not closed and time.monotonic() < deadline:
            writer.write(REQUEST + b"\r\n")
            closed = await _response(reader)
            done += 1
        writer.close()
    return done


async def one_per_connection(port: int, deadline: float, tls: ssl.SSLContext | None) -> int:
    done = 0
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="mail.example.test" if tls else None)
        writer.write(REQUEST + b"Connection: close\r\n\r\n")
        await _response(reader)
        writer.close()
        done += 1
    return done


async def level(name: str, clients: int, seconds: float, make) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    counts = await asyncio.gather(*(make(deadline) for _ in range(clients)))
    elapsed = time.monotonic() - start
    print(f"{name:22s} clients={clients:<3d} {sum(counts) / elapsed:9.0f} requests/s "
          f"({sum(counts)} in {elapsed:.1f} s)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "mailkeep", "init", str(site), "--hostname",
                        "mail.example.test", "--ports", "unprivileged", "--bind-host",
                        "127.0.0.1", "--no-demo-user"], check=True, stdout=subprocess.DEVNULL)
        config = site / "mailkeep.toml"
        text = config.read_text()
        for port in ("10587", "10465", "10995", "10993"):
            text = text.replace(f"127.0.0.1:{port}", "127.0.0.1:0")
        text += ('\n[listeners.autoconfig]\nprotocol = "autoconfig"\ntls = "none"\n'
                 'bind = ["127.0.0.1:0"]\n[listeners.autoconfigs]\nprotocol = "autoconfig"\n'
                 'tls = "implicit"\nbind = ["127.0.0.1:0"]\n')
        # Every client comes from 127.0.0.1: lift the per-address cap (20) for the bench.
        text = text.replace("# max_connections_per_ip = 20", "max_connections_per_ip = 1000")
        config.write_text(text)
        ready = site / "ready.json"
        proc = subprocess.Popen([sys.executable, "-m", "mailkeep", "serve", "--config",
                                 str(config), "--ready-file", str(ready), "--log-level",
                                 "warning"], stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                if ready.exists():
                    break
                time.sleep(0.05)
            bound = json.loads(ready.read_text())["listeners"]
            http = int(bound["autoconfig"][0].rsplit(":", 1)[1])
            https = int(bound["autoconfigs"][0].rsplit(":", 1)[1])
            tls = ssl.create_default_context(cafile=str(site / "certs" / "mailkeep.crt"))
            n, s = args.clients, args.seconds
            asyncio.run(level("autoconfig.keepalive", n, s,
                              lambda d: keepalive(http, d)))
            asyncio.run(level("autoconfig.http", n, s,
                              lambda d: one_per_connection(http, d, None)))
            asyncio.run(level("autoconfig.https", n, s,
                              lambda d: one_per_connection(https, d, tls)))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
