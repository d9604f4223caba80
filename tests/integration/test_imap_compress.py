"""RFC 4978 COMPRESS=DEFLATE over real TLS, with a raw zlib client (wbits -15, Z_SYNC_FLUSH
after every command, as RFC 4978 §3 describes): both directions compressed from the octet
after the tagged OK; responses readable at every flush (IDLE updates included); refused
before login; a decompression bomb meets the ordinary line limit instead of the process's
memory; a corrupt stream ends the connection."""

from __future__ import annotations

import ssl
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon
from tests.support.imap import RawImap, append, message, running_imap_daemon, session


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_imap_daemon(tmp_path, ca, loop_kind)


class DeflateImap(RawImap):
    """RawImap that compresses what it sends and inflates what it reads once compress()
    was called; counts the octets on the wire both ways."""

    deflate: zlib._Compress | None = None  # type: ignore[name-defined]
    inflate: zlib._Decompress | None = None  # type: ignore[name-defined]
    wire_in = 0
    wire_out = 0

    def compress(self) -> None:
        r = self.command("COMPRESS DEFLATE")
        assert r.status == "OK", r
        assert not self.buf, "the server sent uncompressed data after its OK"
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
            self.wire_out += len(data)
        self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.inflate is None:
            return super()._fill()
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.wire_in += len(chunk)
        self.buf += self.inflate.decompress(chunk)
        return True


def compressed_session(d: RunningDaemon) -> DeflateImap:
    c = DeflateImap.tls(d)
    c.greeting()
    c.login()
    c.compress()
    return c


def test_compressed_session_round_trip(imapd: RunningDaemon) -> None:
    setup = session(imapd, select=None)
    # 1.3 MB: several whole DEFLATE_SLICEs (compressed in a worker thread) and a remainder
    body = b"".join(b"line %d of a rather repetitive message body\r\n" % i for i in range(30000))
    append(setup, "INBOX", message("big", body))
    setup.ok("LOGOUT")
    c = compressed_session(imapd)
    assert b"COMPRESS=DEFLATE" in b" ".join(c.ok("CAPABILITY").untagged)
    assert c.ok("SELECT INBOX").number("EXISTS") == 1
    fetched = c.ok("FETCH 1 BODY.PEEK[TEXT]").fetches()[1]["BODY[TEXT]"]
    assert fetched == body
    assert c.wire_in < len(body) // 4  # it really was compressed
    r = c.command("COMPRESS DEFLATE")
    assert (r.status, r.code) == ("NO", "COMPRESSIONACTIVE")
    # a literal sent compressed (APPEND), then LOGOUT's BYE comes compressed too
    tag = c.next_tag()
    c.send(f"{tag} APPEND INBOX {{{len(message('x'))}}}\r\n".encode())
    c.continuation()
    c.send(message("x") + b"\r\n")
    assert c.until_tagged(tag).status == "OK"
    r = c.ok("LOGOUT")
    assert r.untagged_named("BYE")


def test_idle_updates_arrive_compressed(imapd: RunningDaemon) -> None:
    c = compressed_session(imapd)
    c.ok("SELECT INBOX")
    tag = c.next_tag()
    c.send(f"{tag} IDLE\r\n".encode())
    c.continuation()
    other = session(imapd, select=None)
    append(other, "INBOX", message("while idling"))
    line = c.read_response()
    assert line == b"* 1 EXISTS\r\n"  # readable at once: the server flushed its DEFLATE
    c.send(b"DONE\r\n")
    assert c.until_tagged(tag).status == "OK"
    c.ok("LOGOUT")
    other.ok("LOGOUT")


def test_refused_before_login(imapd: RunningDaemon) -> None:
    c = DeflateImap.tls(imapd)
    greeting = c.greeting()
    assert b"COMPRESS=DEFLATE" not in greeting
    r = c.command("COMPRESS DEFLATE")
    assert r.status == "NO"
    c.login()  # still uncompressed
    c.ok("LOGOUT")


def test_decompression_bomb_meets_the_line_limit(imapd: RunningDaemon) -> None:
    """64 MiB of one command line compress to about 64 KiB: the server inflates it a chunk
    at a time and its receiver drains the over-long line (BAD), as it would uncompressed."""
    c = compressed_session(imapd)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    tag = c.next_tag()
    wire = bomb.compress(tag.encode() + b" NOOP ")
    chunk = b"A" * (1024 * 1024)
    for _ in range(64):
        wire += bomb.compress(chunk)
    wire += bomb.compress(b"\r\n") + bomb.flush(zlib.Z_SYNC_FLUSH)
    assert len(wire) < 128 * 1024
    tracemalloc.start()  # the daemon runs in this process (a thread): its memory counts
    try:
        c.send_raw(wire)
        c.deflate = bomb  # go on in the same stream
        r = c.until_tagged(tag)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status == "BAD" and b"too long" in r.text
    # Inflated a chunk at a time and drained: never the 64 MiB at once (a bound on memory,
    # with room for everything else the process does meanwhile).
    assert peak < 16 * 1024 * 1024, peak
    c.ok("NOOP")  # the session goes on
    c.ok("LOGOUT")


def test_corrupt_stream_ends_the_session(imapd: RunningDaemon) -> None:
    c = compressed_session(imapd)
    c.send_raw(b"\xff\xff\xff\xff not deflate at all")
    assert c.closed()
