"""ACME issuance (RFC 8555) with certbot's `acme` library: account, order, challenge, chain.

Everything here blocks (the library speaks HTTPS through requests): it runs in a worker
thread (tls/renewal.py schedules it), never on the event loop.

Challenges:
- TLS-ALPN-01 (RFC 8737), the default: the CA connects to the name on port 443 with ALPN
  acme-tls/1, and our implicit-TLS listeners answer with a self-signed certificate carrying
  the key authorization's digest (tls/context.py `set_challenge`). The acme library no longer
  ships this challenge type, so it is defined here (the JSON is the generic key-authorization
  challenge; the response body is `{}`, RFC 8555 §7.5.1).
- HTTP-01 (RFC 8555 §8.3): the CA fetches http://NAME/.well-known/acme-challenge/TOKEN on
  port 80. mailkeep has no port-80 listener of its own yet; an HTTP listener answers with
  `acme_http01_response(path)` (see its docstring for the wiring).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from mailkeep import __version__
from mailkeep.fsmodes import PRIVATE_FILE, make_private_dirs, write_file
from mailkeep.tls.context import TlsContexts

log = logging.getLogger("mailkeep.acme")

# RFC 8737 §3 / §6.1: id-pe-acmeIdentifier, the critical extension of the challenge
# certificate, holding the SHA-256 digest of the key authorization as a DER OCTET STRING.
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# Seconds one HTTPS request to the CA may take (the acme library's default is 45).
NETWORK_TIMEOUT = 30
# How long the CA may take to validate every name and then to issue, in total. Let's
# Encrypt validates in seconds; a CA that takes longer is retried later (tls/renewal.py).
ORDER_DEADLINE = dt.timedelta(minutes=3)
# RFC 8555 §8.3: the path under which HTTP-01 key authorizations are served.
HTTP01_PREFIX = "/.well-known/acme-challenge/"
# A challenge certificate only has to live through one validation.
CHALLENGE_CERT_LIFETIME = dt.timedelta(days=7)


class AcmeProblem(Exception):
    """Issuance failed: the CA's or the network's reason, fit for the log."""


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """RFC 8737 §3: the client answers with an empty object once the certificate is up."""

    typ = "tls-alpn-01"


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """RFC 8737 §3: {"type": "tls-alpn-01", "token": ...}."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused_kwargs: Any) -> bytes:
        """The acmeIdentifier value: SHA-256 of the key authorization (RFC 8737 §3)."""
        return hashlib.sha256(self.key_authorization(account_key).encode()).digest()


if TLSALPN01.typ not in challenges.Challenge.TYPES:
    challenges.Challenge.register(TLSALPN01)
if TLSALPN01Response.typ not in challenges.ChallengeResponse.TYPES:
    challenges.ChallengeResponse.register(TLSALPN01Response)


def tls_alpn_certificate(name: str, digest: bytes) -> tuple[bytes, bytes]:
    """RFC 8737 §3: a self-signed certificate whose only SAN is `name`, with a critical
    acmeIdentifier extension holding `digest`. Returns (cert PEM, key PEM)."""
    if len(digest) != 32:
        raise ValueError("the acmeIdentifier is a SHA-256 digest (32 octets)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME TLS-ALPN-01")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CHALLENGE_CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # Authorization ::= OCTET STRING (SIZE (32)): tag 0x04, length 0x20, the digest.
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# -- HTTP-01 ---------------------------------------------------------------------------------

_http01_lock = threading.Lock()
_http01_tokens: dict[str, bytes] = {}


def acme_http01_response(path: str) -> bytes | None:
    """The body for an HTTP GET of `path` during an HTTP-01 validation, or None (answer 404).

    Wiring (an HTTP listener on port 80, e.g. the autoconfig one): before any other routing,
    for a GET or HEAD whose path starts with /.well-known/acme-challenge/, call this with the
    request path (without query); if it returns bytes, answer `200` with
    `Content-Type: application/octet-stream` and those bytes as the body, else `404`. It is
    thread-safe and cheap (one dictionary look-up), so the event loop may call it directly.
    RFC 8555 §8.3: the CA follows no more than the plain http:// URL on port 80, so the
    listener must serve it without TLS and without redirecting to https first.
    """
    if not path.startswith(HTTP01_PREFIX):
        return None
    token = path[len(HTTP01_PREFIX):]
    with _http01_lock:
        return _http01_tokens.get(token)


# -- challenge responders --------------------------------------------------------------------

class ChallengeResponder(Protocol):
    typ: str

    def present(self, name: str, chall: challenges.KeyAuthorizationChallenge,
                account_key: JWK) -> None: ...

    def cleanup(self, name: str, chall: challenges.KeyAuthorizationChallenge) -> None: ...


class TlsAlpnResponder:
    """TLS-ALPN-01 answered by the daemon's own implicit-TLS listeners."""

    typ = TLSALPN01.typ

    def __init__(self, contexts: TlsContexts) -> None:
        self.contexts = contexts

    def present(self, name: str, chall: challenges.KeyAuthorizationChallenge,
                account_key: JWK) -> None:
        digest = hashlib.sha256(chall.key_authorization(account_key).encode()).digest()
        cert_pem, key_pem = tls_alpn_certificate(name, digest)
        self.contexts.set_challenge(name, cert_pem, key_pem)

    def cleanup(self, name: str, chall: challenges.KeyAuthorizationChallenge) -> None:
        self.contexts.clear_challenge(name)


class Http01Responder:
    """HTTP-01 answered through acme_http01_response()."""

    typ = challenges.HTTP01.typ

    def present(self, name: str, chall: challenges.KeyAuthorizationChallenge,
                account_key: JWK) -> None:
        with _http01_lock:
            _http01_tokens[chall.encode("token")] = \
                chall.key_authorization(account_key).encode()

    def cleanup(self, name: str, chall: challenges.KeyAuthorizationChallenge) -> None:
        with _http01_lock:
            _http01_tokens.pop(chall.encode("token"), None)


# -- issuance --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Issued:
    fullchain_pem: bytes
    key_pem: bytes


def load_account_key(path: Path) -> JWKEC:
    """The account key (ECDSA P-256, ES256), created on first use with mode 0600."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = ec.generate_private_key(ec.SECP256R1())
        make_private_dirs(path.parent)
        write_file(path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), PRIVATE_FILE)
        log.info("ACME: created account key %s", path)
        return JWKEC(key=key)
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.curve.name != "secp256r1":
        raise AcmeProblem(f"{path}: the account key must be an unencrypted ECDSA P-256 key")
    return JWKEC(key=loaded)


def _describe(exc: BaseException) -> str:
    """A one-line reason from the library's exceptions (problem documents, RFC 8555 §6.7)."""
    if isinstance(exc, errors.ValidationError):
        reasons = []
        for authzr in exc.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    reasons.append(f"{authzr.body.identifier.value}: {challb.error}")
        return "validation failed: " + "; ".join(reasons or ["no reason given"])
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish in time"
    text = str(exc).replace("\n", "; ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AcmeIssuer:
    """Obtains one certificate for a set of names from one ACME directory."""

    def __init__(self, directory: str, account_key: Path, responder: ChallengeResponder, *,
                 email: str | None = None, ca_file: Path | None = None) -> None:
        self.directory = directory
        self.account_key_path = account_key
        self.responder = responder
        self.email = email
        self.ca_file = ca_file

    def issue(self, names: Sequence[str], stop: threading.Event | None = None) -> Issued:
        """Register (or find) the account, order, answer, finalize. Raises AcmeProblem."""
        try:
            return self._issue(list(names), stop or threading.Event())
        except AcmeProblem:
            raise
        except Exception as exc:  # the library's, requests' and josepy's errors alike
            raise AcmeProblem(_describe(exc)) from exc

    def _client(self) -> client.ClientV2:
        key = load_account_key(self.account_key_path)
        net = client.ClientNetwork(key, alg=ES256, timeout=NETWORK_TIMEOUT,
                                   user_agent=f"mailkeep/{__version__} acme-python")
        if self.ca_file is not None:
            # requests takes a CA bundle path for `verify` (a private or test CA, e.g. pebble).
            net.verify_ssl = str(self.ca_file)  # type: ignore[assignment]
        acme = client.ClientV2(client.ClientV2.get_directory(self.directory, net), net)
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:
            # RFC 8555 §7.3.1: the key already has an account; its URL is in Location.
            net.account = messages.RegistrationResource(uri=exc.location,
                                                        body=messages.Registration())
        return acme

    def _issue(self, names: list[str], stop: threading.Event) -> Issued:
        acme = self._client()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        account_key = acme.net.key
        assert account_key is not None
        presented: list[tuple[str, challenges.KeyAuthorizationChallenge]] = []
        deadline = dt.datetime.now() + ORDER_DEADLINE
        try:
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # RFC 8555 §7.1.4: an authorization still valid from before
                name = authzr.body.identifier.value
                challb = next((c for c in authzr.body.challenges
                               if c.chall.typ == self.responder.typ), None)
                if challb is None or not isinstance(challb.chall,
                                                    challenges.KeyAuthorizationChallenge):
                    offered = ", ".join(c.chall.typ for c in authzr.body.challenges)
                    raise AcmeProblem(f"{name}: the CA offers no {self.responder.typ} "
                                      f"challenge (offered: {offered or 'none'})")
                self.responder.present(name, challb.chall, account_key)
                presented.append((name, challb.chall))
                log.info("ACME: answering %s for %s", self.responder.typ, name)
                acme.answer_challenge(challb, challb.chall.response(account_key))
            if stop.is_set():
                raise AcmeProblem("stopped")
            order = acme.poll_authorizations(order, deadline)
        finally:
            for name, chall in presented:
                self.responder.cleanup(name, chall)
        if stop.is_set():
            raise AcmeProblem("stopped")
        order = acme.finalize_order(order, deadline)
        if not order.fullchain_pem:
            raise AcmeProblem("the CA returned no certificate")
        return Issued(order.fullchain_pem.encode(), key_pem)
