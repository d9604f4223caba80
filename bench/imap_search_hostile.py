#!/usr/bin/env python3
"""How long a hostile SEARCH holds the daemon's event loop (issue 7, item 3).

    .venv/bin/python bench/imap_search_hostile.py                 # the issue's figures
    .venv/bin/python bench/imap_search_hostile.py --messages 40   # smaller

Starts `mailkeep serve` as a subprocess on loopback (ephemeral ports, implicit TLS), fills
bob's INBOX with --messages plain-text messages of --size octets (APPEND), warms the parse
cache with one cheap SEARCH BODY, then for each hostile SEARCH below runs it in one session
while a second, already logged-in session sends NOOPs back to back (and a third connects and
logs in once). Printed per search (nothing is asserted; the figures are wall times):

  search_s       send to tagged reply of the hostile SEARCH, and its status
  noop_max_ms    the longest NOOP round trip seen meanwhile: about how long the loop was held
  noops          NOOP round trips completed while the SEARCH ran
  login_ms       connect + TLS + LOGIN of a new session started just after the SEARCH

Searches (every key is true for every message, so none short-circuits): 400 x NOT BODY
"<distinct word>" (the issue's 19 s case); 2500 x NOT OR FROM a TO b on messages 1:20 (the
issue's 4,000 ORs on 20 messages; 10,001 keys, refused now by MAX_SEARCH_KEYS); the same with
240 ORs (961 keys, under the limit); 300 x NOT TEXT.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.daemon import start_process_daemon, write_config
from tests.support.imap import RawImap


def make_message(n: int, size: int) -> bytes:
    head = (f"From: Alice Example <alice{n}@example.test>\r\nTo: bob@example.test\r\n"
            f"Subject: load {n}\r\nDate: Mon, 02 Feb 2026 10:00:00 +0000\r\n"
            f"Message-ID: <load-{n}@example.test>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n"
    body = bytearray()
    while len(head) + len(body) + len(line) <= size:
        body += line
    return head + bytes(body)


def run(d: object, search: str, label: str) -> None:
    hostile = RawImap.tls(d, timeout=600)  # type: ignore[arg-type]
    hostile.greeting()
    hostile.login("bob")
    hostile.ok("SELECT INBOX")
    other = RawImap.tls(d, timeout=600)  # type: ignore[arg-type]
    other.greeting()
    other.login("alice")
    done = threading.Event()
    noops: list[float] = []

    def ping() -> None:
        while not done.is_set():
            t = time.perf_counter()
            other.ok("NOOP")
            noops.append(time.perf_counter() - t)

    pinger = threading.Thread(target=ping)
    login_ms: list[float] = []

    def fresh_login() -> None:
        t = time.perf_counter()
        c = RawImap.tls(d, timeout=600)  # type: ignore[arg-type]
        c.greeting()
        c.login("alice")
        login_ms.append((time.perf_counter() - t) * 1000)
        c.close()

    t0 = time.perf_counter()
    tag = hostile.next_tag()
    hostile.send(tag.encode() + b" " + search.encode() + b"\r\n")
    pinger.start()
    login = threading.Thread(target=fresh_login)
    login.start()
    result = hostile.until_tagged(tag)
    elapsed = time.perf_counter() - t0
    done.set()
    pinger.join()
    login.join()
    print(f"{label:28s} search_s={elapsed:7.2f} status={result.status} "
          f"{result.text[:40].decode(errors='replace')!r} noop_max_ms="
          f"{max(noops, default=0) * 1000:8.1f} noops={len(noops):5d} "
          f"login_ms={login_ms[0] if login_ms else -1:8.1f}", flush=True)
    hostile.close()
    other.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=150)
    ap.add_argument("--size", type=int, default=60_000)
    ap.add_argument("--only", default="", help="run only searches whose label has this text")
    args = ap.parse_args()
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), ca, imap_listeners=True)
        d = start_process_daemon(config, ca)
        try:
            c = RawImap.tls(d, timeout=600)
            c.greeting()
            c.login("bob")
            for n in range(args.messages):
                data = make_message(n, args.size)
                c.ok(b"APPEND INBOX {" + str(len(data)).encode() + b"+}\r\n" + data)
            c.ok("SELECT INBOX")
            c.ok("SEARCH BODY warm-the-cache")
            c.close()
            searches = [
                ("400 NOT BODY", "SEARCH " + " ".join(f"NOT BODY w{i}x" for i in range(400))),
                ("2500 NOT OR FROM TO (1:20)", "SEARCH 1:20 " + " ".join(
                    f"NOT OR FROM a{i} TO b" for i in range(2500))),
                ("240 NOT OR FROM TO (1:20)", "SEARCH 1:20 " + " ".join(
                    f"NOT OR FROM a{i} TO b" for i in range(240))),
                ("300 NOT TEXT", "SEARCH " + " ".join(f"NOT TEXT t{i}y" for i in range(300))),
            ]
            for label, search in searches:
                if args.only in label:
                    run(d, search, label)
        finally:
            d.stop()


if __name__ == "__main__":
    main()
