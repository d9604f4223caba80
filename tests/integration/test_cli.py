"""The CLI contract: init, check-config, user, cert, serve refusing bad setups, health."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailkeep.directory.file import read_users_file
from mailkeep.directory.passwords import verify_password


def mk(*args: str, stdin: str | None = None,
       cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if args[:1] == ("serve",) and os.geteuid() == 0:
        args = (*args, "--allow-root")  # CI runs as root; run_as has its own test
    return subprocess.run([sys.executable, "-m", "mailkeep", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    r = mk("init", str(tmp_path / "site"), "--hostname", "mail.example.test",
           "--domain", "example.test", "--domain", "example.org", "--ports", "unprivileged",
           "--bind-host", "127.0.0.1", "--demo-user")
    assert r.returncode == 0, r.stderr
    return tmp_path / "site"


def test_init_writes_config_users_and_certificate(site: Path) -> None:
    assert (site / "mailkeep.toml").is_file()
    key = site / "certs" / "mailkeep.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (site / "users.toml").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((site / "certs" / "mailkeep.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    users = read_users_file(site / "users.toml")
    assert users["demo"].account.addresses == ("demo@example.test",)
    r = mk("check-config", "--config", str(site / "mailkeep.toml"))
    assert r.returncode == 0, r.stderr


def test_init_prints_demo_password_that_verifies(tmp_path: Path) -> None:
    r = mk("init", str(tmp_path / "s"), "--hostname", "mail.example.test", "--ports",
           "unprivileged", "--demo-user")
    line = next(x for x in r.stdout.splitlines() if x.startswith("demo account:"))
    password = line.split()[-1]
    rec = read_users_file(tmp_path / "s" / "users.toml")["demo"]
    assert verify_password(password, rec.password_hash)
    assert password not in (tmp_path / "s" / "users.toml").read_text()


def test_init_refuses_to_overwrite_without_force(site: Path) -> None:
    before = (site / "certs" / "mailkeep.crt").read_bytes()
    r = mk("init", str(site), "--hostname", "mail.example.test")
    assert r.returncode != 0
    assert "--force" in r.stderr
    assert (site / "certs" / "mailkeep.crt").read_bytes() == before
    r = mk("init", str(site), "--hostname", "mail.example.test", "--force", "--key-type", "rsa",
           "--rsa-bits", "3072")
    assert r.returncode == 0, r.stderr
    assert "RSA 3072" in r.stdout


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'hostname = "not a host"\n'
        "domains = []\n"
        "colour = 1\n"
        "[tls]\ncert = 1\n"
        "[submission]\nmax_recipients = 0\n"
        "[listeners.sub]\nprotocol = \"gopher\"\ntls = \"maybe\"\n"
        "bind = [\"0.0.0.0:99999\", \"x\"]\n"
    )
    r = mk("check-config", "--config", str(cfg))
    assert r.returncode == 78
    for key in ("hostname:", "domains:", "colour:", "tls.cert:", "tls.key:",
                "submission.max_recipients:", "listeners.sub.protocol:", "listeners.sub.tls:",
                "listeners.sub.bind[0]:", "listeners.sub.bind[1]:"):
        assert key in r.stderr, key


def test_user_add_passwd_del_list(site: Path) -> None:
    cfg = str(site / "mailkeep.toml")
    r = mk("user", "add", "carol", "--config", cfg, "--address", "c@example.org",
           stdin="carol-password-1\n")
    assert r.returncode == 0, r.stderr
    assert "carol-password-1" not in (site / "users.toml").read_text()
    rec = read_users_file(site / "users.toml")["carol"]
    assert rec.account.addresses == ("carol@example.test", "c@example.org")
    assert rec.password_hash.startswith("$argon2id$")
    assert verify_password("carol-password-1", rec.password_hash)
    # duplicates, foreign domains, short passwords: refused with a reason
    assert "exists" in mk("user", "add", "carol", "--config", cfg, stdin="x" * 10).stderr
    r = mk("user", "add", "dave", "--config", cfg, "--address", "d@elsewhere.test",
           stdin="long-enough-pw\n")
    assert r.returncode != 0 and "not in a local domain" in r.stderr
    assert "too short" in mk("user", "add", "erin", "--config", cfg, stdin="short\n").stderr
    r = mk("user", "passwd", "carol", "--config", cfg, stdin="carol-password-2\n")
    assert r.returncode == 0, r.stderr
    rec = read_users_file(site / "users.toml")["carol"]
    assert verify_password("carol-password-2", rec.password_hash)
    assert not verify_password("carol-password-1", rec.password_hash)
    listing = mk("user", "list", "--config", cfg).stdout
    assert "carol: carol@example.test, c@example.org" in listing
    assert mk("user", "del", "carol", "--config", cfg).returncode == 0
    assert "carol" not in mk("user", "list", "--config", cfg).stdout
    assert mk("user", "del", "carol", "--config", cfg).returncode != 0


def test_cert_show_names_listeners(site: Path) -> None:
    r = mk("cert", "show", "--config", str(site / "mailkeep.toml"))
    assert r.returncode == 0, r.stderr
    assert "names (SAN): mail.example.test" in r.stdout
    assert "sha256:" in r.stdout
    assert "submission (submission, starttls TLS, 127.0.0.1:10587)" in r.stdout
    assert "submissions (submission, implicit TLS, 127.0.0.1:10465)" in r.stdout
    assert "OK for mail.example.test" in r.stdout


def test_cert_selfsigned_regenerates(site: Path) -> None:
    cfg = str(site / "mailkeep.toml")
    before = (site / "certs" / "mailkeep.crt").read_bytes()
    assert mk("cert", "selfsigned", "--config", cfg).returncode != 0  # no --force
    r = mk("cert", "selfsigned", "--config", cfg, "--force", "--san", "smtp.example.test")
    assert r.returncode == 0, r.stderr
    after = (site / "certs" / "mailkeep.crt").read_bytes()
    assert after != before
    assert "smtp.example.test" in mk("cert", "show", "--config", cfg).stdout


def _write_cert(path: Path, key_path: Path, name: str, *, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=400))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


@pytest.mark.parametrize("problem", ["wrong-name", "expired", "key-mismatch"])
def test_serve_refuses_unusable_certificate(site: Path, problem: str) -> None:
    cert, key = site / "certs" / "mailkeep.crt", site / "certs" / "mailkeep.key"
    if problem == "wrong-name":
        _write_cert(cert, key, "other.example.test", days=30)
        expected = "does not cover hostname"
    elif problem == "expired":
        _write_cert(cert, key, "mail.example.test", days=-1)
        expected = "expired on"
    else:
        other = site / "certs" / "other.key"
        _write_cert(cert, other, "mail.example.test", days=30)
        expected = "does not match its key"
    r = mk("serve", "--config", str(site / "mailkeep.toml"))
    assert r.returncode == 78
    assert "tls.cert:" in r.stderr and expected in r.stderr
    r = mk("check-config", "--config", str(site / "mailkeep.toml"))
    assert r.returncode == 78 and expected in r.stderr


def test_serve_refuses_busy_port_naming_the_key(site: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = (site / "mailkeep.toml").read_text().replace("127.0.0.1:10465",
                                                            f"127.0.0.1:{port}")
        (site / "mailkeep.toml").write_text(text.replace("10587", "0"))
        r = mk("serve", "--config", str(site / "mailkeep.toml"))
    assert r.returncode == 78
    assert f"listeners.submissions.bind[0]: 127.0.0.1:{port}: address already in use" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind low ports")
def test_serve_explains_privileged_port(site: Path) -> None:
    text = (site / "mailkeep.toml").read_text().replace("10587", "587")
    (site / "mailkeep.toml").write_text(text)
    r = mk("serve", "--config", str(site / "mailkeep.toml"))
    assert "CAP_NET_BIND_SERVICE" in r.stderr
