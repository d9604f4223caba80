"""tls/: certificates (certs.py), server contexts and their hot reload (context.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import threading
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailkeep.tls.certs import (
    CertificateProblem,
    check_serving,
    generate_selfsigned,
    inspect_certificate,
    name_matches,
)
from mailkeep.tls.context import TlsContexts, build_server_context

HOST = "mail.example.test"


# -- helpers --------------------------------------------------------------------------------------


def gen(directory: Path, stem: str, names: list[str] | None = None,
        key_type: str = "ecdsa") -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    generate_selfsigned(cert, key, names or [HOST], key_type=key_type)  # type: ignore[arg-type]
    return cert, key


def fingerprint(cert: Path) -> str:
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def write_cert(path: Path, key: ec.EllipticCurvePrivateKey, *, not_before: dt.datetime,
               not_after: dt.datetime, names: tuple[str, ...] = (HOST,)) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def client_context(version: ssl.TLSVersion | None = None,
                   ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


class HandshakeFailed(Exception):
    pass


def handshake(server: ssl.SSLContext, client: ssl.SSLContext | None = None,
              sni: str | None = HOST) -> tuple[str, str]:
    """A real TLS handshake over a loopback socket pair, the server in a thread.

    Returns (sha256 of the certificate the client saw, negotiated version)."""
    client = client or client_context()
    srv_sock, cli_sock = socket.socketpair()
    srv_sock.settimeout(10)
    cli_sock.settimeout(10)
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(srv_sock, server_side=True) as tls:
                tls.recv(1)  # wait for the client to finish and close
        except (OSError, ssl.SSLError) as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client.wrap_socket(cli_sock, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
    except (OSError, ssl.SSLError) as exc:
        raise HandshakeFailed(f"client: {exc}; server: {server_error}") from exc
    finally:
        cli_sock.close()
        thread.join(10)
        srv_sock.close()
    assert der is not None and version is not None
    return hashlib.sha256(der).hexdigest(), version


# -- generate_selfsigned --------------------------------------------------------------------------


def test_generate_ecdsa(tmp_path: Path) -> None:
    cert, key = gen(tmp_path, "ec")
    info = inspect_certificate(cert)
    assert info.key_type == "ECDSA secp256r1"
    assert info.names == (HOST,)
    assert info.subject == f"CN={HOST}" == info.issuer
    assert info.sha256.replace(":", "").lower() == fingerprint(cert)
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert check_serving(cert, key, HOST).sha256 == info.sha256


def test_generate_rsa_2048(tmp_path: Path) -> None:
    cert, key = gen(tmp_path, "rsa", key_type="rsa")
    info = check_serving(cert, key, HOST)
    assert info.key_type == "RSA 2048"


def test_generate_rsa_refuses_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RSA key size"):
        generate_selfsigned(tmp_path / "c", tmp_path / "k", [HOST], key_type="rsa", rsa_bits=1024)
    assert not (tmp_path / "k").exists()


def test_san_covers_hostname_extra_names_and_ips(tmp_path: Path) -> None:
    names = [HOST, "smtp.example.test", "127.0.0.1", "::1", "*.users.example.test"]
    cert, key = gen(tmp_path, "multi", names)
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST, "smtp.example.test",
                                                    "*.users.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                      ipaddress.ip_address("::1")]
    info = check_serving(cert, key, HOST)
    for name in ("smtp.example.test", "127.0.0.1", "::1", "alice.users.example.test"):
        assert info.covers(name), name
    assert not info.covers("example.test")
    assert not info.covers("imap.example.test")


def test_generated_validity_and_server_usage(tmp_path: Path) -> None:
    cert_path, _ = gen(tmp_path, "v")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(
        days=825, minutes=5)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_key_file_mode_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _, key = gen(tmp_path / "sub", "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_regenerated_key_over_world_readable_file_is_0600(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_text("old")
    key.chmod(0o644)
    generate_selfsigned(tmp_path / "c.crt", key, [HOST])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


# -- name_matches ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "match"),
    [
        ("mail.example.test", "mail.example.test", True),
        ("MAIL.Example.test", "mail.EXAMPLE.test.", True),
        ("*.example.test", "a.example.test", True),
        ("*.example.test", "A.EXAMPLE.TEST", True),
        ("*.example.test", "example.test", False),
        ("*.example.test", "a.b.example.test", False),
        ("*.example.test", ".example.test", False),
        ("*.example.test", "a.example.test.evil", False),
        ("*.example.test", "aexample.test", False),
        ("a.*.example.test", "a.b.example.test", False),
        ("*", "localhost", False),
        ("mail.example.test", "other.example.test", False),
        ("127.0.0.1", "127.0.0.1", True),
    ],
)
def test_name_matches_rfc6125(pattern: str, host: str, match: bool) -> None:
    assert name_matches(pattern, host) is match


# -- check_serving --------------------------------------------------------------------------------


def test_check_serving_wrong_hostname(tmp_path: Path) -> None:
    cert, key = gen(tmp_path, "a", ["other.example.test"])
    with pytest.raises(CertificateProblem, match=r"does not cover hostname 'mail\.example\.test'"):
        check_serving(cert, key, HOST)


def test_check_serving_key_mismatch(tmp_path: Path) -> None:
    cert, _ = gen(tmp_path, "a")
    _, other_key = gen(tmp_path, "b")
    with pytest.raises(CertificateProblem, match="does not match its key"):
        check_serving(cert, other_key, HOST)


def test_check_serving_expired(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert, key_path = tmp_path / "old.crt", tmp_path / "old.key"
    write_cert(cert, key, not_before=now - dt.timedelta(days=30),
               not_after=now - dt.timedelta(days=1))
    write_key(key_path, key)
    with pytest.raises(CertificateProblem, match="expired on") as info:
        check_serving(cert, key_path, HOST)
    assert "does not cover" not in str(info.value)
    assert "does not match" not in str(info.value)


def test_check_serving_not_yet_valid(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert, key_path = tmp_path / "future.crt", tmp_path / "future.key"
    write_cert(cert, key, not_before=now + dt.timedelta(days=1),
               not_after=now + dt.timedelta(days=90))
    write_key(key_path, key)
    with pytest.raises(CertificateProblem, match="not valid before"):
        check_serving(cert, key_path, HOST)


def test_check_serving_reports_every_problem_at_once(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = tmp_path / "bad.crt"
    write_cert(cert, key, not_before=now - dt.timedelta(days=30),
               not_after=now - dt.timedelta(days=1), names=("other.example.test",))
    _, other_key = gen(tmp_path, "b")
    with pytest.raises(CertificateProblem) as info:
        check_serving(cert, other_key, HOST)
    text = str(info.value)
    assert "expired" in text and "does not cover" in text and "does not match" in text


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nxx\n"])
def test_check_serving_bad_key_file(tmp_path: Path, content: bytes) -> None:
    cert, key = gen(tmp_path, "a")
    key.write_bytes(content)
    with pytest.raises(CertificateProblem, match="not an unencrypted PEM private key"):
        check_serving(cert, key, HOST)


def test_check_serving_encrypted_or_missing_key(tmp_path: Path) -> None:
    cert, key = gen(tmp_path, "a")
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(CertificateProblem, match="not an unencrypted PEM private key"):
        check_serving(cert, key, HOST)
    with pytest.raises(CertificateProblem, match="cannot read key"):
        check_serving(cert, tmp_path / "missing.key", HOST)


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"
                                     b"-----END CERTIFICATE-----\n"])
def test_check_serving_bad_cert_file(tmp_path: Path, content: bytes) -> None:
    cert, key = gen(tmp_path, "a")
    cert.write_bytes(content)
    with pytest.raises(CertificateProblem):
        check_serving(cert, key, HOST)
    with pytest.raises(CertificateProblem, match="cannot read certificate"):
        check_serving(tmp_path / "missing.crt", key, HOST)


# -- build_server_context -------------------------------------------------------------------------


def test_server_context_settings(tmp_path: Path) -> None:
    ctx = build_server_context(*gen(tmp_path, "a"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_modern_clients_connect(tmp_path: Path, key_type: str, version: ssl.TLSVersion) -> None:
    cert, key = gen(tmp_path, "a", key_type=key_type)
    seen, negotiated = handshake(build_server_context(cert, key), client_context(version))
    assert seen == fingerprint(cert)
    assert negotiated == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[
        version]


def _permissive_server(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def test_tls_1_1_client_is_refused(tmp_path: Path) -> None:
    cert, key = gen(tmp_path, "a", key_type="rsa")
    old_client = client_context(ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0")
    # Control: this client really can speak TLS 1.1 here, or the refusal below proves nothing.
    try:
        _, version = handshake(_permissive_server(cert, key), old_client)
    except HandshakeFailed:
        pytest.skip("this OpenSSL cannot do TLS 1.1 at all")
    assert version == "TLSv1.1"
    with pytest.raises(HandshakeFailed):
        handshake(build_server_context(cert, key), old_client)


def test_static_rsa_key_exchange_is_refused(tmp_path: Path) -> None:
    cert, key = gen(tmp_path, "a", key_type="rsa")
    client = client_context(ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256:AES256-SHA")
    try:
        handshake(_permissive_server(cert, key), client)
    except HandshakeFailed:
        pytest.skip("this OpenSSL refuses static RSA key exchange by itself")
    with pytest.raises(HandshakeFailed):
        handshake(build_server_context(cert, key), client)


# -- TlsContexts and reload -----------------------------------------------------------------------


def renew(directory: Path, cert: Path, key: Path, *, only: str | None = None,
          names: list[str] | None = None) -> Path:
    """Generate a new pair beside and rename it over the old one, as certbot deploy hooks do."""
    new_cert, new_key = gen(directory, f"new-{os.urandom(4).hex()}", names)
    if only != "key":
        os.replace(new_cert, cert)
    if only != "cert":
        os.replace(new_key, key)
    return cert if only != "key" else new_cert


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return gen(tmp_path, "live")


@pytest.mark.parametrize("sni", [HOST, None])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_reload_valid_renewal_reaches_new_handshakes(
    tmp_path: Path, pair: tuple[Path, Path], sni: str | None, version: ssl.TLSVersion
) -> None:
    cert, key = pair
    contexts = TlsContexts(HOST)
    front = contexts.add(cert, key)
    old = fingerprint(cert)
    assert handshake(front, client_context(version), sni)[0] == old
    assert contexts.reload() == []  # nothing changed

    renew(tmp_path, cert, key)
    new = fingerprint(cert)
    assert new != old
    messages = contexts.reload()
    assert len(messages) == 1 and "reloaded" in messages[0]
    assert contexts.info(cert, key).sha256.replace(":", "").lower() == new
    assert handshake(front, client_context(version), sni)[0] == new
    assert contexts.reload() == []


def _corrupt_cert(tmp_path: Path, cert: Path, key: Path) -> None:
    tmp = tmp_path / "garbage"
    tmp.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    os.replace(tmp, cert)


def _mismatched_cert(tmp_path: Path, cert: Path, key: Path) -> None:
    renew(tmp_path, cert, key, only="cert")


def _garbage_key(tmp_path: Path, cert: Path, key: Path) -> None:
    tmp = tmp_path / "garbage.key"
    tmp.write_bytes(b"garbage")
    os.replace(tmp, key)


def _wrong_name(tmp_path: Path, cert: Path, key: Path) -> None:
    renew(tmp_path, cert, key, names=["other.example.test"])


def _expired(tmp_path: Path, cert: Path, key: Path) -> None:
    k = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    write_cert(tmp_path / "exp.crt", k, not_before=now - dt.timedelta(days=9),
               not_after=now - dt.timedelta(days=1))
    write_key(tmp_path / "exp.key", k)
    os.replace(tmp_path / "exp.crt", cert)
    os.replace(tmp_path / "exp.key", key)


def _deleted(tmp_path: Path, cert: Path, key: Path) -> None:
    cert.unlink()


@pytest.mark.parametrize(
    "breakage", [_corrupt_cert, _mismatched_cert, _garbage_key, _wrong_name, _expired, _deleted]
)
def test_broken_renewal_refused_and_old_certificate_keeps_serving(
    tmp_path: Path, pair: tuple[Path, Path], breakage: object
) -> None:
    cert, key = pair
    contexts = TlsContexts(HOST)
    front = contexts.add(cert, key)
    old = fingerprint(cert)
    old_info = contexts.info(cert, key)

    breakage(tmp_path, cert, key)  # type: ignore[operator]
    messages = contexts.reload()
    assert len(messages) == 1 and "refused" in messages[0]
    assert "keeping the old certificate" in messages[0]
    assert contexts.info(cert, key) == old_info
    for sni in (HOST, None):
        assert handshake(front, sni=sni)[0] == old

    # the same broken files are not reported again at every interval
    if breakage is not _deleted:
        assert contexts.reload() == []

    # and a valid renewal afterwards is taken up
    renew(tmp_path, cert, key)
    new = fingerprint(cert)
    messages = contexts.reload()
    assert len(messages) == 1 and "reloaded" in messages[0]
    assert handshake(front)[0] == new != old


def test_forced_reload_without_change(pair: tuple[Path, Path]) -> None:
    contexts = TlsContexts(HOST)
    front = contexts.add(*pair)
    messages = contexts.reload(force=True)
    assert len(messages) == 1 and "reloaded" in messages[0]
    assert handshake(front)[0] == fingerprint(pair[0])


def test_add_refuses_a_broken_pair_and_reuses_fronts(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    contexts = TlsContexts(HOST)
    assert contexts.add(*pair) is contexts.add(*pair)
    cert_b, _ = gen(tmp_path, "b")
    with pytest.raises(CertificateProblem):
        contexts.add(cert_b, pair[1])
    with pytest.raises(CertificateProblem, match="cannot read"):
        contexts.add(tmp_path / "missing.crt", pair[1])
    other = TlsContexts("other.example.test")
    with pytest.raises(CertificateProblem, match="does not cover"):
        other.add(*pair)


def test_two_pairs_reload_independently(tmp_path: Path) -> None:
    a = gen(tmp_path, "a")
    b = gen(tmp_path, "b")
    contexts = TlsContexts(HOST)
    front_a, front_b = contexts.add(*a), contexts.add(*b)
    old_b = fingerprint(b[0])
    renew(tmp_path, *a)
    _corrupt_cert(tmp_path, *b)
    messages = contexts.reload()
    assert sorted("reloaded" in m for m in messages) == [False, True]
    assert handshake(front_a)[0] == fingerprint(a[0])
    assert handshake(front_b)[0] == old_b
