"""Latency of a command whose client writes its data in two pieces after a go-ahead.

Python's imaplib sends an APPEND literal and the CRLF after it in two writes; some SMTP
clients send the message and the final "." in two writes. With Nagle's algorithm on the
client, the second write waits for the server's ACK of the first, and Linux delays that ACK
up to 40 ms unless the server asks for a quick one (server/quickack.py). Prints p50 and min
of N such APPENDs (imaplib, --imap-port) and N such DATA transactions (smtplib plus a raw
final dot, --smtp-port; port 0 skips either). Loopback only; stops by itself; asserts
nothing.

    python bench/go_ahead_latency.py --imap-port 20993 --smtp-port 20587 \\
        --user user0044@mail.test
"""

from __future__ import annotations

import argparse
import imaplib
import smtplib
import ssl
import statistics
import time


def message(sender: str) -> bytes:
    """~2 KB, From: the user (a submission server refuses another sender's address)."""
    return (f"From: {sender}\r\nTo: someone@mail.test\r\nSubject: go-ahead\r\n\r\n".encode()
            + (b"y" * 76 + b"\r\n") * 25)


def context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def summary(name: str, seconds: list[float]) -> str:
    return (f"{name}: p50 {1000 * statistics.median(seconds):.1f} ms, "
            f"min {1000 * min(seconds):.1f} ms ({len(seconds)} runs)")


def imap_appends(a: argparse.Namespace) -> list[float]:
    client = imaplib.IMAP4_SSL(a.host, a.imap_port, ssl_context=context())
    client.login(a.user, a.password)
    client.select("INBOX")
    times = []
    for _ in range(a.n):
        start = time.perf_counter()
        client.append("INBOX", None, None, message(a.user))  # literal, then CRLF: two writes
        times.append(time.perf_counter() - start)
    client.logout()
    return times


def smtp_datas(a: argparse.Namespace) -> list[float]:
    client = smtplib.SMTP(a.host, a.smtp_port)
    client.ehlo("bench.test")
    client.starttls(context=context())
    client.ehlo("bench.test")
    client.login(a.user, a.password)
    times = []
    for _ in range(a.n):
        start = time.perf_counter()
        client.mail(a.user)
        client.rcpt(a.user)
        code, _ = client.docmd("DATA")
        if code != 354:
            raise RuntimeError(f"DATA answered {code}")
        assert client.sock is not None
        client.sock.sendall(message(a.user))
        client.sock.sendall(b".\r\n")  # the end of data in a write of its own
        code, reply = client.getreply()
        if code != 250:
            raise RuntimeError(f"end of data answered {code} {reply!r}")
        times.append(time.perf_counter() - start)
    client.quit()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--imap-port", type=int, default=993, help="IMAPS; 0 skips")
    p.add_argument("--smtp-port", type=int, default=587, help="submission; 0 skips")
    p.add_argument("--user", default="user0044@mail.test")
    p.add_argument("--password", default="secret")
    p.add_argument("-n", type=int, default=30)
    a = p.parse_args()
    if a.imap_port:
        print(summary(f"IMAP APPEND, imaplib (port {a.imap_port})", imap_appends(a)))
    if a.smtp_port:
        print(summary(f"SMTP DATA, final dot apart (port {a.smtp_port})", smtp_datas(a)))


if __name__ == "__main__":
    main()
