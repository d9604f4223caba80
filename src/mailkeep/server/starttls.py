"""The single STARTTLS/STLS upgrade path for every door (RFC 3207 §4.2, RFC 2595 §3.1).

Bytes the client pipelined behind the upgrade command arrived in plaintext: they are never
executed. If any are waiting before or after the handshake, the upgrade is refused and the
connection closed, so an injected "STARTTLS\\r\\nAUTH ..." can never run inside TLS.
"""

from __future__ import annotations

import asyncio
import ssl


class PipelinedPlaintext(Exception):
    """The client sent bytes behind STARTTLS: a command injection attempt or a broken client."""


class HandshakeFailed(Exception):
    """The TLS handshake failed or timed out."""


def buffered_bytes(reader: asyncio.StreamReader) -> int:
    # StreamReader has no public view of its buffer; _buffer is stable since Python 3.4.
    return len(reader._buffer)  # type: ignore[attr-defined]


def refuse_if_pipelined(reader: asyncio.StreamReader) -> None:
    if buffered_bytes(reader):
        raise PipelinedPlaintext


async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  context: ssl.SSLContext, timeout: float) -> asyncio.BaseTransport:
    """Run the server side of the TLS handshake on an established stream.

    Call after refuse_if_pipelined() and after the "go ahead" reply was written.
    Returns the new (TLS) transport; the writer and its protocol already use it."""
    try:
        await writer.start_tls(context, ssl_handshake_timeout=timeout)
    except (TimeoutError, ssl.SSLError, OSError, ConnectionError) as exc:
        raise HandshakeFailed(str(exc) or type(exc).__name__) from exc
    # Bytes that raced in between our check and the switch were read as plaintext.
    refuse_if_pipelined(reader)
    return writer.transport
