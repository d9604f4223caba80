"""The single STARTTLS/STLS upgrade path for every door (RFC 3207 §4.2, RFC 2595 §3.1).

Bytes the client pipelined behind the upgrade command arrived in plaintext: they are never
executed. If any are waiting before or after the handshake, the upgrade is refused and the
connection closed, so an injected "STARTTLS\\r\\nAUTH ..." can never run inside TLS.

Reading is paused *before* the go-ahead reply is written, right after the check, with no
await in between: whatever the client sent before that is in the reader's buffer (and refused);
whatever it sends after reaches the TLS layer, never the plaintext reader.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailkeep.observe.metrics import Metrics


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
                  context: ssl.SSLContext, timeout: float,
                  go_ahead: bytes, *, metrics: Metrics | None = None,
                  listener: str = "") -> asyncio.BaseTransport:
    """Refuse pipelined plaintext, write the go-ahead reply, run the server-side handshake
    (counted in `metrics` under `listener`, like the implicit-TLS handshakes).

    Raises PipelinedPlaintext (nothing written yet if caught before the reply) or
    HandshakeFailed. Returns the new TLS transport; the writer and protocol already use it."""
    refuse_if_pipelined(reader)
    transport = writer.transport
    transport.pause_reading()  # type: ignore[attr-defined]
    writer.write(go_ahead)
    try:
        await writer.start_tls(context, ssl_handshake_timeout=timeout)
    except (TimeoutError, ssl.SSLError, OSError, ConnectionError) as exc:
        if metrics is not None:
            metrics.tls_handshake_failed(listener)
        raise HandshakeFailed(str(exc) or type(exc).__name__) from exc
    if metrics is not None:
        ssl_object = writer.get_extra_info("ssl_object")
        metrics.tls_handshake(listener, ssl_object.version() if ssl_object else None)
    # No second check here: once reading was paused, every byte goes through TLS, and the
    # client may well have sent its (encrypted) EHLO before this coroutine resumes.
    return writer.transport
