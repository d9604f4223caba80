"""Certificate generation and inspection (cryptography)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailkeep.config.hints import command
from mailkeep.fsmodes import PRIVATE_FILE, PUBLIC_FILE, make_private_dirs, write_file

KeyType = Literal["ecdsa", "rsa"]
# 825 days is the longest lifetime clients accepted for server certificates (CA/B Forum, 2018);
# a self-signed one is replaced by a real one long before.
DEFAULT_DAYS = 825
RSA_SIZES = (2048, 3072, 4096)


class CertificateProblem(Exception):
    """A certificate that cannot serve: unreadable, expired, wrong name, key mismatch."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    path: Path
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    key_type: str

    def covers(self, hostname: str) -> bool:
        return any(name_matches(n, hostname) for n in self.names)


def name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 §6.4.3: a wildcard only stands for the whole left-most label."""
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower().rstrip(".")
    if pattern == hostname:
        return True
    if pattern.startswith("*."):
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def generate_selfsigned(
    cert_path: Path, key_path: Path, hostnames: list[str], *, key_type: KeyType = "ecdsa",
    rsa_bits: int = 2048, days: int = DEFAULT_DAYS,
) -> CertificateInfo:
    """Write a self-signed server certificate whose SAN covers every name given."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        if rsa_bits not in RSA_SIZES:
            raise ValueError(f"RSA key size must be one of {RSA_SIZES}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Directories we create are 0700 whatever the umask (an existing one is left alone).
    make_private_dirs(cert_path.parent)
    make_private_dirs(key_path.parent)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key is created 0600 from the start: never world-readable, not even for a moment;
    # an existing file keeps its mode through O_CREAT, so it is forced (fchmod).
    write_file(key_path, key_bytes, PRIVATE_FILE)
    # The certificate is public, but nobody else may replace it (umask 000: 0666).
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), PUBLIC_FILE)
    return inspect_certificate(cert_path)


def _load_first_cert(cert_path: Path) -> x509.Certificate:
    try:
        data = cert_path.read_bytes()
    except OSError as exc:
        raise CertificateProblem(f"{cert_path}: cannot read certificate: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateProblem(f"{cert_path}: not a PEM certificate") from None
    return certs[0]


def inspect_certificate(cert_path: Path) -> CertificateInfo:
    cert = _load_first_cert(cert_path)
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    pub = cert.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        key_type = f"ECDSA {pub.curve.name}"
    elif isinstance(pub, rsa.RSAPublicKey):
        key_type = f"RSA {pub.key_size}"
    else:
        key_type = type(pub).__name__
    return CertificateInfo(
        path=cert_path,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=tuple(names),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        key_type=key_type,
    )


def check_serving(cert_path: Path, key_path: Path, hostname: str | None,
                  names: Sequence[str] = ()) -> CertificateInfo:
    """Everything that stops a certificate from serving `hostname` (None: any name) and each
    of `names` (the names that select it by SNI), as one CertificateProblem."""
    info = inspect_certificate(cert_path)
    problems: list[str] = []
    now = dt.datetime.now(dt.UTC)
    if info.not_after <= now:
        problems.append(f"expired on {info.not_after:%Y-%m-%d %H:%M} UTC")
    if info.not_before > now:
        problems.append(f"not valid before {info.not_before:%Y-%m-%d %H:%M} UTC")
    # RFC 6125 §6.4.4: clients match SAN names only; the CN is not consulted when a SAN exists.
    if hostname is not None and not info.covers(hostname):
        selfsigned = command("cert", "selfsigned", "--hostname", hostname, "--cert",
                             str(cert_path), "--key", str(key_path), "--force")
        problems.append(
            f"does not cover hostname {hostname!r} (SAN: {', '.join(info.names) or 'none'}); "
            f"issue one for it, or replace it with a self-signed one: `{selfsigned}`"
        )
    uncovered = [n for n in names if not info.covers(n)]
    if uncovered:
        problems.append(f"does not cover {', '.join(map(repr, uncovered))}, which select it "
                        f"(SAN: {', '.join(info.names) or 'none'})")
    try:
        key_data = key_path.read_bytes()
    except OSError as exc:
        problems.append(f"cannot read key {key_path}: {exc.strerror}")
    else:
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except (ValueError, TypeError):
            problems.append(f"{key_path} is not an unencrypted PEM private key")
        else:
            cert = _load_first_cert(cert_path)
            if key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ) != cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ):
                problems.append(f"does not match its key {key_path}")
    if problems:
        raise CertificateProblem(f"{cert_path}: " + "; ".join(problems))
    return info
