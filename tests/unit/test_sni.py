"""SNI selection (tls/sni.py) and several certificates in TlsContexts, over real handshakes."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mailkeep.tls.acme import ACME_IDENTIFIER_OID, tls_alpn_certificate
from mailkeep.tls.certs import CertificateProblem
from mailkeep.tls.context import ACME_TLS_ALPN, TlsContexts
from mailkeep.tls.sni import SniTable, is_selectable_name
from tests.unit.test_tls import HOST, client_context, fingerprint, gen, handshake

# -- the table ------------------------------------------------------------------------------


def table() -> SniTable[str]:
    built, shadowed = SniTable.build([
        ("net", ["mail.example.net", "*.example.net"]),
        ("org", ["MAIL.Example.ORG.", "imap.example.org"]),
        ("late", ["mail.example.net", "*.example.net", "pop.example.net", "192.0.2.1"]),
    ])
    assert shadowed == ["mail.example.net (kept by net)", "*.example.net (kept by net)"]
    return built


@pytest.mark.parametrize(("name", "chosen"), [
    ("mail.example.net", "net"),          # exact
    ("MAIL.EXAMPLE.NET", "net"),          # case-insensitive (RFC 6125 §6.4.1)
    ("mail.example.net.", "net"),         # a trailing dot is the same name
    ("pop.example.net", "late"),          # exact beats wildcard, even from a later entry
    ("smtp.example.net", "net"),          # wildcard: one label
    ("a.b.example.net", None),            # RFC 6125 §6.4.3: never two labels
    ("example.net", None),                # nor none
    ("mail.example.org", "org"),
    ("www.example.org", None),            # no wildcard for example.org
    ("unknown.test", None),
    ("", None),
    (None, None),                         # no SNI: the listener's default
    ("192.0.2.1", None),                  # IP addresses are never in SNI (RFC 6066 §3)
])
def test_selection_exact_then_wildcard_then_default(name: str | None,
                                                    chosen: str | None) -> None:
    assert table().select(name) == chosen


def test_names_of() -> None:
    t = table()
    assert t.names_of("net") == ["mail.example.net", "*.example.net"]
    assert t.names_of("late") == ["pop.example.net"]
    assert t.names_of("none") == []


@pytest.mark.parametrize(("pattern", "ok"), [
    ("mail.example.org", True), ("*.example.org", True), ("*.org", False), ("*", False),
    ("m*.example.org", False), ("*.*.example.org", False), ("localhost", False),
    ("-bad.example.org", False), ("xn--bcher-kva.example", True), ("a..b", False),
])
def test_selectable_names(pattern: str, ok: bool) -> None:
    assert is_selectable_name(pattern) is ok


# -- several certificates behind one front ------------------------------------------------------


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[TlsContexts, ssl.SSLContext, dict[str, Path]]:
    default = gen(tmp_path, "default")
    net = gen(tmp_path, "net", ["mail.example.net", "*.example.net"])
    org = gen(tmp_path, "org", ["mail.example.org", "smtp.example.org"])
    c = TlsContexts(HOST)
    c.add_sni("net", *net)                        # names from its SANs
    c.add_sni("org", *org, ["mail.example.org"])  # an explicit subset
    front = c.add(*default)
    return c, front, {"default": default[0], "net": net[0], "org": org[0]}


@pytest.mark.parametrize(("sni", "which"), [
    ("mail.example.net", "net"), ("imap.example.net", "net"), ("mail.example.org", "org"),
    ("smtp.example.org", "default"),  # in org's SAN, but not among the names it serves
    (HOST, "default"), ("unknown.example", "default"), (None, "default"),
])
def test_handshake_gets_the_selected_certificate(
        contexts: tuple[TlsContexts, ssl.SSLContext, dict[str, Path]], sni: str | None,
        which: str) -> None:
    _, front, files = contexts
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert handshake(front, client_context(version), sni)[0] == fingerprint(files[which])


def test_sni_certificate_renewal_and_broken_renewal(
        tmp_path: Path, contexts: tuple[TlsContexts, ssl.SSLContext, dict[str, Path]]) -> None:
    c, front, files = contexts
    net_key = tmp_path / "net.key"
    # A renewal that adds a name: the new SAN selects it at once.
    new = gen(tmp_path, "net2", ["mail.example.net", "*.example.net", "mx.example.com"])
    os.replace(new[0], files["net"])
    os.replace(new[1], net_key)
    assert any("reloaded" in m for m in c.reload())
    assert handshake(front, sni="mx.example.com")[0] == fingerprint(files["net"])
    assert c.sni_names(files["net"], net_key) == ["mail.example.net", "mx.example.com",
                                                  "*.example.net"]
    # A broken one (certificate without its key) is refused; the old one keeps serving.
    good = fingerprint(files["net"])
    broken = gen(tmp_path, "net3", ["mail.example.net"])
    os.replace(broken[0], files["net"])
    assert any("refused" in m for m in c.reload())
    assert handshake(front, sni="mail.example.net")[0] == good


def test_explicit_names_must_be_covered(tmp_path: Path) -> None:
    pair = gen(tmp_path, "org", ["mail.example.org"])
    c = TlsContexts(HOST)
    with pytest.raises(CertificateProblem, match=r"does not cover 'imap.example.org'"):
        c.add_sni("org", *pair, ["mail.example.org", "imap.example.org"])
    # The failed attempt left nothing behind: the same pair loads with names it covers.
    assert c.add_sni("org", *pair, ["mail.example.org"]).names == ("mail.example.org",)
    # An SNI certificate need not cover the hostname, but a listener default must.
    with pytest.raises(CertificateProblem, match="does not cover hostname"):
        c.add(*pair)


# -- TLS-ALPN-01 (RFC 8737) --------------------------------------------------------------------


def _alpn_client() -> ssl.SSLContext:
    ctx = client_context()
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    return ctx


def test_challenge_certificate_is_served_only_on_challenge_fronts(tmp_path: Path) -> None:
    default = gen(tmp_path, "default")
    c = TlsContexts(HOST)
    implicit = c.add(*default, acme_challenges=True)
    starttls = c.add(*default)
    assert implicit is not starttls
    digest = bytes(range(32))
    cert_pem, key_pem = tls_alpn_certificate(HOST, digest)
    c.set_challenge(HOST, cert_pem, key_pem)
    challenge_fp = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()
    assert handshake(implicit, _alpn_client(), HOST)[0] == challenge_fp
    # Another name, and the STARTTLS doors, keep the real certificate.
    assert handshake(implicit, _alpn_client(), "other.example.test")[0] == fingerprint(default[0])
    assert handshake(starttls, _alpn_client(), HOST)[0] == fingerprint(default[0])
    c.clear_challenge(HOST)
    assert handshake(implicit, _alpn_client(), HOST)[0] == fingerprint(default[0])


def test_tls_alpn_certificate_shape() -> None:
    digest = b"\x01" * 32
    cert = x509.load_pem_x509_certificate(tls_alpn_certificate("mail.example.org", digest)[0])
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.public_bytes() == b"\x04\x20" + digest  # DER OCTET STRING (SIZE (32))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.org"]
    with pytest.raises(ValueError):
        tls_alpn_certificate("mail.example.org", b"short")
