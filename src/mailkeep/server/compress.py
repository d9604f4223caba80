"""RFC 4978 COMPRESS=DEFLATE for one IMAP connection: raw DEFLATE (RFC 1951, no zlib or
gzip header: zlib with wbits = -15) in both directions, inside TLS.

    deflate = Deflate()
    wire = deflate.compress(response_bytes)      # buffered in the compressor ...
    wire += deflate.flush()                      # ... until a flush: Z_SYNC_FLUSH, so the
                                                 # client can read everything sent so far
    data = deflate.inflate(from_socket)          # at most INFLATE_CHUNK octets out
    while deflate.pending:                       # the rest of a large inflation
        data = deflate.inflate(b"")

Memory: a few hundred octets of compressed input can inflate to gigabytes (a decompression
bomb). inflate() never returns more than INFLATE_CHUNK octets; what it has not inflated yet
stays compressed (`pending`) until the driver has fed what it got to the machine and asks
again. The machine's own limits (line length, literal size, the shared input budget) then
apply to the inflated stream exactly as to an uncompressed one.
"""

from __future__ import annotations

import zlib

# RFC 4978 §3: raw DEFLATE (RFC 1951) -- zlib's negative window bits mean "no header".
WBITS = -15
# Our choice: Dovecot's imap_zlib uses level 6 (zlib's default); compression costs CPU on
# the event loop, and 6 is zlib's own balance between time and size.
LEVEL = 6
# Octets inflated per step: the same as the driver's socket read size, so a compressed
# connection never holds more inflated input at once than an uncompressed one reads.
INFLATE_CHUNK = 64 * 1024


class CompressionError(Exception):
    """The peer's DEFLATE stream is corrupt: the connection cannot go on."""


class Deflate:
    def __init__(self, *, level: int = LEVEL, chunk: int = INFLATE_CHUNK) -> None:
        self._out = zlib.compressobj(level, zlib.DEFLATED, WBITS)
        self._in = zlib.decompressobj(WBITS)
        self._chunk = chunk
        self._unflushed = False
        self._tail = b""
        self._full = False    # the last inflate() stopped at `chunk`: more may be waiting
        self.octets_in = 0    # compressed octets received
        self.octets_out = 0   # compressed octets sent

    # -- responses ------------------------------------------------------------------------

    def compress(self, data: bytes | memoryview) -> bytes:
        """Compressed octets to send now (often none: zlib keeps a window until flush)."""
        if not data:
            return b""
        self._unflushed = True
        out = self._out.compress(data)
        self.octets_out += len(out)
        return out

    def flush(self) -> bytes:
        """Everything compressed so far, ready for the client to inflate (Z_SYNC_FLUSH: the
        stream goes on). Nothing when nothing was written since the last flush."""
        if not self._unflushed:
            return b""
        self._unflushed = False
        out = self._out.flush(zlib.Z_SYNC_FLUSH)
        self.octets_out += len(out)
        return out

    # -- commands -------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Compressed input is waiting to be inflated (call inflate(b""))."""
        return bool(self._tail) or self._full

    def inflate(self, data: bytes) -> bytes:
        """Inflate what arrived (after anything still pending): at most `chunk` octets."""
        self.octets_in += len(data)
        source = self._tail + data if self._tail else data
        try:
            out = self._in.decompress(source, self._chunk)
        except zlib.error as exc:
            raise CompressionError(str(exc)) from None
        self._tail = self._in.unconsumed_tail
        self._full = len(out) >= self._chunk
        if self._in.eof:
            # RFC 4978 has no end of the compressed stream short of the connection's end.
            raise CompressionError("the client ended its DEFLATE stream")
        return out
