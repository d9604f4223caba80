"""Server SSLContexts, built in one place, and their hot reload.

Each listener gets a stable *front* context. Its SNI callback, which OpenSSL calls on every
handshake (with or without SNI), swaps in the listener's current *serving* context, so a renewed
certificate reaches new connections without touching open ones or re-creating servers.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from mailkeep.tls.certs import CertificateInfo, CertificateProblem, check_serving

log = logging.getLogger("mailkeep.tls")

# Forward-secret AEAD suites only (Mozilla "intermediate" for TLS 1.2); TLS 1.3 suites are all
# AEAD and forward secret and are not affected by this string.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def build_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """RFC 8996 / RFC 9325: TLS 1.2 minimum, AEAD + ECDHE only, no compression or renegotiation."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (
        ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_SINGLE_ECDH_USE
    )
    ctx.verify_mode = ssl.CERT_NONE  # no client certificates are asked for
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


@dataclass
class _Slot:
    cert: Path
    key: Path
    serving: ssl.SSLContext
    info: CertificateInfo
    stamp: tuple[float, float, int, int]


def _stamp(cert: Path, key: Path) -> tuple[float, float, int, int]:
    c, k = cert.stat(), key.stat()
    return (c.st_mtime, k.st_mtime, c.st_ino, k.st_ino)


class TlsContexts:
    """Front contexts per listener and the serving context per (cert, key) pair."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._slots: dict[tuple[Path, Path], _Slot] = {}
        self._fronts: dict[tuple[Path, Path], ssl.SSLContext] = {}

    def add(self, cert: Path, key: Path) -> ssl.SSLContext:
        """Validate and load a pair; return its front context. Raises CertificateProblem."""
        pair = (cert, key)
        if pair not in self._fronts:
            slot = self._load(cert, key)
            self._slots[pair] = slot
            front = build_server_context(cert, key)
            front.sni_callback = self._make_callback(pair)
            self._fronts[pair] = front
        return self._fronts[pair]

    def info(self, cert: Path, key: Path) -> CertificateInfo:
        return self._slots[(cert, key)].info

    def _load(self, cert: Path, key: Path) -> _Slot:
        try:
            stamp = _stamp(cert, key)
        except OSError as exc:
            raise CertificateProblem(f"cannot read {exc.filename}: {exc.strerror}") from None
        info = check_serving(cert, key, self.hostname)
        try:
            ctx = build_server_context(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise CertificateProblem(f"{cert}: OpenSSL refused the pair: {exc}") from None
        return _Slot(cert, key, ctx, info, stamp)

    def _make_callback(self, pair: tuple[Path, Path]):  # type: ignore[no-untyped-def]
        def callback(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            sslobj.context = self._slots[pair].serving

        return callback

    def reload(self, *, force: bool = False) -> list[str]:
        """Re-read changed pairs. A broken new pair is refused and the old one keeps serving.

        Returns one message per pair that changed (loaded or refused)."""
        messages: list[str] = []
        for pair, slot in list(self._slots.items()):
            try:
                stamp = _stamp(*pair)
            except OSError as exc:
                msg = (f"TLS reload refused for {pair[0]}: {exc.strerror}; "
                       "keeping the old certificate")
                log.error(msg)
                messages.append(msg)
                continue
            if stamp == slot.stamp and not force:
                continue
            try:
                new = self._load(*pair)
            except CertificateProblem as exc:
                msg = f"TLS reload refused: {exc}; keeping the old certificate"
                log.error(msg)
                messages.append(msg)
                slot.stamp = stamp  # do not log the same broken file every interval
                continue
            self._slots[pair] = new
            msg = (f"TLS certificate reloaded: {pair[0]} (sha256 {new.info.sha256[:23]}..., "
                   f"expires {new.info.not_after:%Y-%m-%d})")
            log.info(msg)
            messages.append(msg)
        return messages
