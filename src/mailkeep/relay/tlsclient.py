"""Client SSLContexts for outbound SMTP and MTA-STS fetches, one per (checking, CA file).

`verify` checks the chain and the host name (RFC 6125 via OpenSSL); `may` and `encrypt` encrypt
without checking, as opportunistic TLS does (RFC 7435 §3: most MX certificates would fail a
check, and an unchecked channel still beats plaintext against passive listeners).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from mailkeep.tls.context import TLS12_CIPHERS


def build_client_context(*, verify: bool, ca_file: Path | None = None) -> ssl.SSLContext:
    """RFC 8996 / RFC 9325: TLS 1.2 or later, forward-secret AEAD suites for TLS 1.2."""
    if verify:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


class ClientContexts:
    """Contexts built once, off the event loop (loading a CA store reads files)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[bool, Path | None], ssl.SSLContext] = {}
        self._lock = asyncio.Lock()

    async def get(self, *, verify: bool, ca_file: Path | None = None) -> ssl.SSLContext:
        key = (verify, ca_file if verify else None)
        ctx = self._cache.get(key)
        if ctx is None:
            async with self._lock:
                ctx = self._cache.get(key)
                if ctx is None:
                    ctx = await asyncio.to_thread(build_client_context, verify=verify,
                                                  ca_file=key[1])
                    self._cache[key] = ctx
        return ctx
