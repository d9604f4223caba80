"""tls/acme.py and tls/renewal.py without a CA: challenge types, HTTP-01 answers, when a
certificate falls due, the placeholder, and what `cert show` says of an ACME certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwk import JWKEC

from mailkeep.config import load_config
from mailkeep.config.model import AcmeConfig, Config
from mailkeep.tls import acme as acme_module
from mailkeep.tls.acme import (
    TLSALPN01,
    Http01Responder,
    TLSALPN01Response,
    acme_http01_response,
    load_account_key,
)
from mailkeep.tls.certs import generate_selfsigned
from mailkeep.tls.context import TlsContexts
from mailkeep.tls.inventory import describe, inventory
from mailkeep.tls.renewal import AcmeManager, renewal_reason
from tests.unit.test_config import MINIMAL, write
from tests.unit.test_tls import write_cert, write_key

HOST = "mail.example.test"
TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"  # RFC 8555 §8.3's example token


def acme_config(tmp_path: Path, days: int = 30, names: tuple[str, ...] = (HOST,)) -> AcmeConfig:
    state = tmp_path / "acme"
    return AcmeConfig(directory="https://ca.invalid/dir", names=names, state_dir=state,
                      account_key=state / "account.key", renew_before_days=days)


def ca_issued(cfg: AcmeConfig, *, days_left: float, lifetime: int = 90,
              names: tuple[str, ...] = (HOST,)) -> None:
    """A certificate with an issuer other than its subject (as a CA's is)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days_left)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_after - dt.timedelta(days=lifetime)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(cfg.key, key)


# -- the challenge types ------------------------------------------------------------------------


def test_tls_alpn_01_challenge_parses_and_answers_with_an_empty_object() -> None:
    chall = challenges.Challenge.from_json({"type": "tls-alpn-01", "token": TOKEN})
    assert isinstance(chall, TLSALPN01)
    account = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    response = chall.response(account)
    assert isinstance(response, TLSALPN01Response)
    assert response.to_partial_json() == {}  # RFC 8737 §3 / RFC 8555 §7.5.1
    digest = chall.validation(account)
    assert isinstance(digest, bytes) and len(digest) == 32
    assert chall.key_authorization(account).startswith(TOKEN + ".")


def test_http01_answers_only_pending_tokens() -> None:
    chall = challenges.Challenge.from_json({"type": "http-01", "token": TOKEN})
    assert isinstance(chall, challenges.HTTP01)
    account = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    path = f"/.well-known/acme-challenge/{TOKEN}"
    assert acme_http01_response(path) is None
    responder = Http01Responder()
    responder.present(HOST, chall, account)
    try:
        assert acme_http01_response(path) == chall.key_authorization(account).encode()
        for other in (f"/.well-known/acme-challenge/{TOKEN}x", "/.well-known/acme-challenge/",
                      f"/{TOKEN}", f"/.well-known/acme-challenge/../{TOKEN}", "", "/"):
            assert acme_http01_response(other) is None, other
    finally:
        responder.cleanup(HOST, chall)
    assert acme_http01_response(path) is None
    assert acme_module._http01_tokens == {}


def test_account_key_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "account.key"
    first = load_account_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert load_account_key(path).thumbprint() == first.thumbprint()
    write_key(path, ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(acme_module.AcmeProblem, match="P-256"):
        load_account_key(path)


# -- when a certificate is due ------------------------------------------------------------------


def test_renewal_reason(tmp_path: Path) -> None:
    cfg = acme_config(tmp_path, days=30)
    reason, _ = renewal_reason(cfg)
    assert reason is not None and "no usable certificate" in reason
    generate_selfsigned(cfg.cert, cfg.key, [HOST])
    assert "placeholder" in (renewal_reason(cfg)[0] or "")
    ca_issued(cfg, days_left=60)
    reason, due = renewal_reason(cfg)
    assert reason is None and due is not None
    assert abs((due - dt.datetime.now(dt.UTC)) - dt.timedelta(days=30)) < dt.timedelta(hours=1)
    ca_issued(cfg, days_left=29.5)
    assert "expires on" in (renewal_reason(cfg)[0] or "")
    ca_issued(cfg, days_left=60)
    wider = acme_config(tmp_path, names=(HOST, "mx.example.test"))
    assert "mx.example.test not covered" in (renewal_reason(wider)[0] or "")


def test_placeholder_only_when_nothing_usable(tmp_path: Path) -> None:
    cfg = acme_config(tmp_path)
    manager = AcmeManager(cfg, TlsContexts(HOST))
    manager.ensure_placeholder(HOST)
    first = cfg.cert.read_bytes()
    assert cfg.key.stat().st_mode & 0o777 == 0o600
    manager.ensure_placeholder(HOST)
    assert cfg.cert.read_bytes() == first  # a usable one is kept
    ca_issued(cfg, days_left=60)
    issued = cfg.cert.read_bytes()
    manager.ensure_placeholder(HOST)
    assert cfg.cert.read_bytes() == issued
    # expired, or the default without the hostname: replaced so the daemon can start
    k = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    write_cert(cfg.cert, k, not_before=now - dt.timedelta(days=90),
               not_after=now - dt.timedelta(days=1))
    write_key(cfg.key, k)
    manager.ensure_placeholder(HOST)
    assert cfg.cert.read_bytes() != issued
    ca_issued(cfg, days_left=60, names=("other.example.test",))
    other = cfg.cert.read_bytes()
    manager.ensure_placeholder(None)  # not the default certificate: kept
    assert cfg.cert.read_bytes() == other
    manager.ensure_placeholder(HOST)
    assert cfg.cert.read_bytes() != other
    assert "placeholder" in (renewal_reason(cfg)[0] or "")


# -- cert show ----------------------------------------------------------------------------------


def acme_only_config(tmp_path: Path) -> Config:
    text = MINIMAL.replace('cert = "certs/mailkeep.crt"\nkey = "certs/mailkeep.key"\n',
                           '[tls.acme]\ndirectory = "https://ca.invalid/dir"\n')
    text += '[listeners.subs]\nprotocol = "submission"\ntls = "implicit"\n' \
            'bind = ["127.0.0.1:465"]\n'
    return load_config(write(tmp_path, text))


def test_cert_show_before_and_after_the_first_certificate(tmp_path: Path) -> None:
    config = acme_only_config(tmp_path)
    assert config.tls.acme is not None
    (use,) = inventory(config)
    assert use.problem is None and use.note is not None and "not obtained yet" in use.note
    text = "\n".join(describe(use, config.hostname))
    assert "managed by:  ACME https://ca.invalid/dir (tls-alpn-01, for mail.example.test" in text
    assert "default for: sub (submission, starttls TLS, 127.0.0.1:587)" in text
    generate_selfsigned(config.tls.acme.cert, config.tls.acme.key, [HOST])
    (use,) = inventory(config)
    assert use.note is not None and "placeholder" in use.note
    ca_issued(config.tls.acme, days_left=45)
    (use,) = inventory(config)
    assert (use.problem, use.note) == (None, None)
    text = "\n".join(describe(use, config.hostname))
    assert "(44 days left)" in text or "(45 days left)" in text
    assert "next renewal from" in text and "status:      OK for mail.example.test" in text
