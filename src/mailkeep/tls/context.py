"""Server SSLContexts, built in one place, and their hot reload.

Each listener gets a stable *front* context. Its SNI callback, which OpenSSL calls on every
handshake (with or without SNI), swaps in a current *serving* context: the certificate that the
client's server name selects (tls/sni.py), else the listener's default. A renewed certificate
thus reaches new connections without touching open ones or re-creating servers, on every
door: implicit TLS and STARTTLS use the same front context.

On implicit-TLS fronts the callback also answers ACME TLS-ALPN-01 validations (RFC 8737):
while a challenge for a name is pending, that name gets the challenge certificate, whose
context negotiates only the acme-tls/1 protocol.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailkeep.fsmodes import PRIVATE_FILE, write_file
from mailkeep.tls.certs import CertificateInfo, CertificateProblem, check_serving
from mailkeep.tls.sni import SniTable, normalize_name

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


# RFC 8737 §6.2: the ALPN protocol ID of TLS-ALPN-01 validation.
ACME_TLS_ALPN = "acme-tls/1"

Pair = tuple[Path, Path]
SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]


@dataclass
class _Slot:
    cert: Path
    key: Path
    serving: ssl.SSLContext
    info: CertificateInfo
    stamp: tuple[float, float, int, int]


@dataclass
class _Need:
    """What a pair must satisfy: cover the hostname (a listener's default), and the names
    that select it by SNI (None: its own DNS SANs; not selectable at all: `sni` False)."""

    hostname: bool = False
    sni: bool = False
    label: str = ""
    names: tuple[str, ...] | None = None


def _stamp(cert: Path, key: Path) -> tuple[float, float, int, int]:
    c, k = cert.stat(), key.stat()
    return (c.st_mtime, k.st_mtime, c.st_ino, k.st_ino)


class TlsContexts:
    """Front contexts per listener default, the serving context per (cert, key) pair, the
    SNI table, and pending TLS-ALPN-01 challenges."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._slots: dict[Pair, _Slot] = {}
        self._needs: dict[Pair, _Need] = {}
        self._fronts: dict[tuple[Pair, bool], ssl.SSLContext] = {}
        self._table: SniTable[Pair] = SniTable()
        self._challenges: dict[str, ssl.SSLContext] = {}
        # Held while certificate files are replaced (ACME) and while they are re-read, so a
        # reload never sees a new key beside the old certificate.
        self.files_lock = threading.Lock()

    def successor(self, hostname: str) -> TlsContexts:
        """Empty contexts for a reloaded configuration, sharing with these the pending ACME
        challenges and the files lock (an ACME renewal may be under way across the swap)."""
        new = TlsContexts(hostname)
        new._challenges = self._challenges
        new.files_lock = self.files_lock
        return new

    # -- configuration -----------------------------------------------------------------------

    def add(self, cert: Path, key: Path, *, acme_challenges: bool = False) -> ssl.SSLContext:
        """A listener's default pair: validate and load it (it must cover the hostname);
        return its front context. Raises CertificateProblem."""
        pair = (cert, key)
        need = self._needs.setdefault(pair, _Need())
        if not need.hostname:
            need.hostname = True
            self._install(pair, need, "hostname")
        front_key = (pair, acme_challenges)
        if front_key not in self._fronts:
            front = build_server_context(cert, key)
            front.sni_callback = self._make_callback(pair, acme_challenges)
            self._fronts[front_key] = front
        return self._fronts[front_key]

    def add_sni(self, label: str, cert: Path, key: Path,
                names: Sequence[str] | None = None) -> CertificateInfo:
        """A certificate chosen by server name on every listener: `names` (each must be
        covered by its SANs), or None for its own DNS SANs. Earlier ones win a name that two
        certificates' SANs share. Raises CertificateProblem."""
        pair = (cert, key)
        need = self._needs.setdefault(pair, _Need())
        if not need.sni:
            need.sni, need.label = True, label
            need.names = None if names is None else tuple(normalize_name(n) for n in names)
            self._install(pair, need, "sni")
        for message in self._rebuild_table():
            log.warning("TLS: %s", message)
        return self._slots[pair].info

    def _install(self, pair: Pair, need: _Need, flag: str) -> None:
        """Load a pair under its widened needs; on failure the needs are put back."""
        try:
            self._slots[pair] = self._load(pair)
        except CertificateProblem:
            setattr(need, flag, False)
            if flag == "sni":
                need.names = None
            if pair not in self._slots:
                del self._needs[pair]
            raise

    def info(self, cert: Path, key: Path) -> CertificateInfo:
        return self._slots[(cert, key)].info

    def served(self) -> list[tuple[str, dt.datetime]]:
        """(certificate file, notAfter) of every certificate loaded now, renewals included:
        from memory, no file read (the metrics ask on the event loop at each scrape)."""
        slots = self._slots.copy()  # one step under the GIL: a reload thread may replace
        return sorted((str(slot.cert), slot.info.not_after) for slot in slots.values())

    def sni_names(self, cert: Path, key: Path) -> list[str]:
        """The server names that select this pair now."""
        return self._table.names_of((cert, key))

    def _rebuild_table(self) -> list[str]:
        entries: list[tuple[Pair, Sequence[str]]] = []
        for pair, need in self._needs.items():
            if need.sni and pair in self._slots:
                names = need.names if need.names is not None else self._slots[pair].info.names
                entries.append((pair, names))
        table, shadowed = SniTable.build(entries)
        self._table = table
        return [f"{name} is in two certificates' names; the first configured one serves it"
                for name in shadowed]

    def _load(self, pair: Pair) -> _Slot:
        cert, key = pair
        need = self._needs[pair]
        try:
            stamp = _stamp(cert, key)
        except OSError as exc:
            raise CertificateProblem(f"cannot read {exc.filename}: {exc.strerror}") from None
        info = check_serving(cert, key, self.hostname if need.hostname else None,
                             need.names or ())
        try:
            ctx = build_server_context(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise CertificateProblem(f"{cert}: OpenSSL refused the pair: {exc}") from None
        return _Slot(cert, key, ctx, info, stamp)

    # -- the handshake -----------------------------------------------------------------------

    def _make_callback(self, pair: Pair, acme_challenges: bool) -> SniCallback:
        def callback(sslobj: ssl.SSLObject, server_name: str | None,
                     _ctx: ssl.SSLContext) -> None:
            # Runs inside OpenSSL's handshake on the event loop: dictionary look-ups only,
            # and nothing that can raise (an exception here fails the handshake).
            if acme_challenges and server_name and self._challenges:
                challenge = self._challenges.get(server_name.lower())
                if challenge is not None:
                    sslobj.context = challenge
                    return
            chosen = self._table.select(server_name)
            slot = self._slots.get(chosen) if chosen is not None else None
            sslobj.context = (slot or self._slots[pair]).serving

        return callback

    # -- ACME TLS-ALPN-01 --------------------------------------------------------------------

    def set_challenge(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve this challenge certificate to `name` on implicit-TLS listeners, with ALPN
        acme-tls/1 (RFC 8737 §3), until clear_challenge(name)."""
        with tempfile.TemporaryDirectory(prefix="mailkeep-acme-") as tmp:
            cert, key = Path(tmp) / "challenge.crt", Path(tmp) / "challenge.key"
            write_file(cert, cert_pem, PRIVATE_FILE)
            write_file(key, key_pem, PRIVATE_FILE)
            ctx = build_server_context(cert, key)
        ctx.set_alpn_protocols([ACME_TLS_ALPN])
        self._challenges[normalize_name(name)] = ctx

    def clear_challenge(self, name: str) -> None:
        self._challenges.pop(normalize_name(name), None)

    # -- reload ------------------------------------------------------------------------------

    def reload(self, *, force: bool = False) -> list[str]:
        """Re-read changed pairs. A broken new pair is refused and the old one keeps serving.

        Returns one message per pair that changed (loaded or refused)."""
        with self.files_lock:
            messages = self._reload(force)
            if messages:
                for message in self._rebuild_table():
                    log.warning("TLS: %s", message)
        return messages

    def _reload(self, force: bool) -> list[str]:
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
                new = self._load(pair)
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
