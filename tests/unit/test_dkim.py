"""relay/dkim.py: sign with our code, verify with dkimpy against the TXT record we print."""

from __future__ import annotations

import base64
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mailkeep.relay.dkim import (
    OVERSIGNED,
    RSA_KEY_BITS,
    TXT_STRING_MAX,
    DkimError,
    DkimKey,
    KeyType,
    key_file_problem,
    keygen,
    record_name,
    sign,
    sign_async,
    signed_header_list,
    txt_record,
    txt_value,
    write_key,
)

DOMAIN = "example.com"
SELECTOR = "s2026"
MESSAGE = (b"From: Alice <alice@example.com>\r\n"
           b"To: Bob <bob@example.net>\r\n"
           b"Subject: lunch\r\n"
           b"Date: Sun, 01 Mar 2026 12:00:00 +0000\r\n"
           b"Message-ID: <m1@example.com>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=us-ascii\r\n"
           b"Received: from client by mail.example.com; Sun, 01 Mar 2026 12:00:01 +0000\r\n"
           b"\r\n"
           b"Noon at the usual place?\r\n")


@pytest.fixture(scope="module")
def rsa_pair() -> tuple[bytes, str]:
    return keygen(DOMAIN, SELECTOR)


@pytest.fixture(scope="module")
def ed_pair() -> tuple[bytes, str]:
    return keygen(DOMAIN, "ed", KeyType.ED25519)


def record_text(line: str) -> tuple[str, str]:
    """(owner name, TXT value) from the zone-file line keygen printed, as a DNS server would."""
    owner, rest = line.split(" IN TXT ", 1)
    strings = re.findall(r'"([^"]*)"', rest)
    assert all(len(s) <= TXT_STRING_MAX for s in strings)
    return owner, "".join(strings)


def dns_from(line: str) -> Callable[..., bytes | None]:
    owner, value = record_text(line)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return value.encode() if name.decode().rstrip(".") == owner.rstrip(".") else None
    return dnsfunc


def verifies(message: bytes, line: str) -> bool:
    return bool(dkim.verify(message, dnsfunc=dns_from(line)))


def signature_tags(signed: bytes) -> dict[str, str]:
    first = signed.split(b"\r\n\r\n", 1)[0].decode()
    field = re.match(r"DKIM-Signature:(.*?)\r\n(?=\S)", first, re.S)
    assert field is not None
    value = re.sub(r"\s+", "", field.group(1))
    return dict(t.split("=", 1) for t in value.split(";") if t)


# -- keys and records -----------------------------------------------------------------------------

def test_keygen_rsa(rsa_pair: tuple[bytes, str]) -> None:
    pem, line = rsa_pair
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == RSA_KEY_BITS == 2048
    owner, value = record_text(line)
    assert owner == f"{SELECTOR}._domainkey.{DOMAIN}."
    assert value.startswith("v=DKIM1; k=rsa; p=")
    assert value == txt_value(pem)
    assert len(record_text(line)[1]) > TXT_STRING_MAX  # so the line really was split
    spki = base64.b64decode(value.split("p=", 1)[1])
    public = serialization.load_der_public_key(spki)
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == key.public_key().public_numbers()


def test_keygen_ed25519(ed_pair: tuple[bytes, str]) -> None:
    pem, line = ed_pair
    owner, value = record_text(line)
    assert owner == f"ed._domainkey.{DOMAIN}."
    assert value.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(value.split("p=", 1)[1])) == 32  # RFC 8463 §4
    assert DkimKey.from_pem(DOMAIN, "ed", pem).key_type is KeyType.ED25519


def test_record_names() -> None:
    assert record_name("Example.COM.", "sel") == "sel._domainkey.example.com"
    assert record_name("b\u00fccher.example", "a.b") == "a.b._domainkey.xn--bcher-kva.example"
    for bad_selector in ["", "-x", "a_b", "a b", "x" * 64, "a..b"]:
        with pytest.raises(DkimError):
            record_name(DOMAIN, bad_selector)
    for bad_domain in ["", "a b.com", "-x.com", "x" * 64 + ".com"]:
        with pytest.raises(DkimError):
            record_name(bad_domain, "sel")


def test_bad_keys_are_configuration_errors() -> None:
    with pytest.raises(DkimError):
        DkimKey.from_pem(DOMAIN, SELECTOR, b"not a key")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(DkimError, match="RSA or Ed25519"):
        DkimKey.from_pem(DOMAIN, SELECTOR, ec_pem)
    with pytest.raises(DkimError):
        sign(MESSAGE, DOMAIN, SELECTOR, ec_pem)


def test_key_never_shows_in_repr(rsa_pair: tuple[bytes, str]) -> None:
    pem, _ = rsa_pair
    key = DkimKey.from_pem(DOMAIN, SELECTOR, pem)
    body = pem.decode().splitlines()[1]
    assert body not in repr(key) and "PRIVATE" not in repr(key)
    assert body not in str(key)


# -- signing, then verifying with dkimpy ---------------------------------------------------------

def test_rsa_signature_verifies(rsa_pair: tuple[bytes, str]) -> None:
    pem, line = rsa_pair
    signed = sign(MESSAGE, DOMAIN, SELECTOR, pem)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(MESSAGE)
    assert verifies(signed, line)
    tags = signature_tags(signed)
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert tags["d"] == DOMAIN and tags["s"] == SELECTOR
    assert "l" not in tags  # RFC 6376 §8.2: a body length limit invites appended content


def test_ed25519_signature_verifies(ed_pair: tuple[bytes, str]) -> None:
    pem, line = ed_pair
    signed = sign(MESSAGE, DOMAIN, "ed", pem)
    assert signature_tags(signed)["a"] == "ed25519-sha256"
    assert verifies(signed, line)
    assert not verifies(signed.replace(b"usual place", b"other place"), line)


def test_signed_headers_follow_rfc6376(rsa_pair: tuple[bytes, str]) -> None:
    pem, _ = rsa_pair
    h = signature_tags(sign(MESSAGE, DOMAIN, SELECTOR, pem))["h"].lower().split(":")
    for name in ["from", "to", "subject", "date", "message-id", "mime-version",
                 "content-type"]:
        assert name in h
    assert h.count("from") == 2  # oversigned
    assert "received" not in h and "return-path" not in h and "dkim-signature" not in h
    assert "from" in OVERSIGNED


def test_signed_header_list_counts_and_oversigns() -> None:
    names = [n.decode() for n in signed_header_list(
        b"From: a@x\r\nTo: b@y\r\nTo: c@y\r\nReferences: <1@x>\r\nX-Custom: 1\r\n\r\nbody\r\n")]
    assert names.count("from") == 2
    assert names.count("to") == 3          # both present, plus one
    assert names.count("references") == 1  # signed, not oversigned
    assert names.count("reply-to") == 1    # absent, oversigned: none may be added
    assert "x-custom" not in names


@pytest.mark.parametrize("tamper", [
    lambda m: m.replace(b"Noon at", b"Dawn at"),                       # body
    lambda m: m.replace(b"Subject: lunch", b"Subject: lunch!"),        # signed header
    lambda m: m.replace(b"To: Bob", b"To: Eve"),
    lambda m: m.replace(b"From: Alice", b"From: Mallory <m@evil.example>\r\nFrom: Alice"),
    lambda m: m.replace(b"\r\n\r\n", b"\r\nReply-To: m@evil.example\r\n\r\n", 1),
    lambda m: m.replace(b"\r\n\r\n", b"\r\nSubject: second subject\r\n\r\n", 1),
    lambda m: m + b"P.S. appended\r\n",
])
def test_tampered_message_fails(rsa_pair: tuple[bytes, str],
                                tamper: Callable[[bytes], bytes]) -> None:
    pem, line = rsa_pair
    signed = sign(MESSAGE, DOMAIN, SELECTOR, pem)
    assert verifies(signed, line)
    tampered = tamper(signed)
    assert tampered != signed
    assert not verifies(tampered, line)


def test_relaxed_canonicalisation_survives_refolding(rsa_pair: tuple[bytes, str]) -> None:
    pem, line = rsa_pair
    signed = sign(MESSAGE, DOMAIN, SELECTOR, pem)
    refolded = signed.replace(b"Subject: lunch", b"Subject:   lunch").replace(
        b"To: Bob <bob@example.net>", b"To: Bob\r\n  <bob@example.net>")
    assert verifies(refolded, line)
    # Unsigned trace fields added in transit do not matter.
    assert verifies(b"Received: from relay by mx; Sun, 01 Mar 2026 12:00:09 +0000\r\n"
                    + signed, line)


def test_wrong_key_fails(rsa_pair: tuple[bytes, str]) -> None:
    pem, _ = rsa_pair
    _, other_line = keygen(DOMAIN, SELECTOR)
    assert not verifies(sign(MESSAGE, DOMAIN, SELECTOR, pem), other_line)


def test_message_without_from_is_refused(rsa_pair: tuple[bytes, str]) -> None:
    pem, _ = rsa_pair
    with pytest.raises(DkimError, match="From"):
        sign(b"To: b@y\r\nSubject: x\r\n\r\nbody\r\n", DOMAIN, SELECTOR, pem)


async def test_sign_async_off_the_loop(rsa_pair: tuple[bytes, str]) -> None:
    pem, line = rsa_pair
    key = DkimKey.from_pem(DOMAIN, SELECTOR, pem)
    signed = await sign_async(MESSAGE, key)
    assert verifies(signed, line)


def test_key_from_file(tmp_path: Path, rsa_pair: tuple[bytes, str]) -> None:
    pem, line = rsa_pair
    path = tmp_path / "example.com.s2026.pem"
    write_key(path, pem)
    key = DkimKey.load(path, DOMAIN, SELECTOR)
    assert key.record_name == f"{SELECTOR}._domainkey.{DOMAIN}"
    assert key.txt_value() == record_text(line)[1]
    assert txt_record(DOMAIN, SELECTOR, pem) == line
    assert verifies(key.sign(MESSAGE), line)


# -- the key file ---------------------------------------------------------------------------------

def test_write_key_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_key(tmp_path / "k.pem", b"-----BEGIN PRIVATE KEY-----\nx\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "k.pem").stat().st_mode)
    assert mode == 0o600
    assert key_file_problem(tmp_path / "k.pem") is None
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]  # no temporary file left


def test_write_key_refuses_to_replace(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    write_key(path, b"first")
    with pytest.raises(FileExistsError):
        write_key(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]
    write_key(path, b"second", overwrite=True)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_problem_flags_readable_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"x")
    path.chmod(0o644)
    problem = key_file_problem(path)
    assert problem is not None and "0644" in problem
