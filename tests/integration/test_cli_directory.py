"""`mailkeep user ...` on every backend it can change: the same commands, the same results,
on the users file, SQLite and PostgreSQL; app passwords on LDAP too; imports from a Dovecot
passwd-file and from CSV. Each result is checked by logging in through the backend."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from passlib.hash import md5_crypt, sha512_crypt

from mailkeep.config import load_config
from mailkeep.directory.base import load_directory
from tests.support.directory_data import BASE_DN, SERVICE_DN, SERVICE_PASSWORD


def mk(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def _site(tmp_path: Path, directory: dict[str, Any] | None) -> str:
    r = mk("init", str(tmp_path / "site"), "--hostname", "mail.example.test",
           "--domain", "example.test", "--ports", "unprivileged", "--bind-host", "127.0.0.1",
           "--no-demo-user")
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "site" / "mailkeep.toml"
    if directory is not None:
        text = cfg.read_text()
        old = 'backend = "file"\npath = "users.toml"\n'
        assert old in text
        new = "".join(f"{k} = {json.dumps(v)}\n" for k, v in directory.items())
        cfg.write_text(text.replace(old, new))
    return str(cfg)


def _login(cfg: str, login: str, password: str, service: str = "imap") -> str | None:
    config = load_config(cfg)

    async def run() -> str | None:
        d = load_directory(config.directory.backend, config.directory.options,
                           config.directory.base_dir)
        try:
            account = await d.authenticate(login, password, service)
            return None if account is None else account.name
        finally:
            await d.close()

    return asyncio.run(run())


@pytest.fixture
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = str(request.param)
    if kind == "file":
        return _site(tmp_path, None)
    if kind == "sqlite":
        cfg = _site(tmp_path, {"backend": "sql", "database": "users.sqlite3"})
    else:
        pg = request.getfixturevalue("pg_server")
        schema = f"cli_{secrets.token_hex(5)}"

        async def create() -> None:
            conn = await asyncpg.connect(pg.dsn(), password=pg.password)
            try:
                await conn.execute(f"CREATE SCHEMA {schema}")
            finally:
                await conn.close()

        asyncio.run(create())
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "pg.secret").write_text(pg.password)
        cfg = _site(tmp_path, {"backend": "sql", "dsn": pg.dsn(schema=schema),
                               "password_file": "pg.secret"})
    r = mk("user", "create-schema", "--config", cfg)
    assert r.returncode == 0, r.stderr
    return cfg


# Each command runs as a real process (about a second each): the account commands run on all
# three backends, the others on one backend each (the contract suite covers the rest).
@pytest.mark.parametrize("cfg", ["file", "sqlite", "postgresql"], indirect=True)
def test_user_commands_on_every_backend(cfg: str) -> None:
    r = mk("user", "add", "carol", "--config", cfg, "--address", "c@example.test",
           "--group", "Staff", stdin="carol-password-1\n")
    assert r.returncode == 0, r.stderr
    assert "exists" in mk("user", "add", "carol", "--config", cfg, stdin="x" * 10).stderr
    r = mk("user", "add", "dave", "--config", cfg, "--address", "c@example.test",
           stdin="dave-password-1\n")
    assert r.returncode != 0 and "already belongs to carol" in r.stderr
    assert _login(cfg, "c@example.test", "carol-password-1") == "carol"
    listing = mk("user", "list", "--config", cfg).stdout
    assert "carol: " in listing and "c@example.test" in listing and "[groups: staff]" in listing
    r = mk("user", "passwd", "carol", "--config", cfg, stdin="carol-password-2\n")
    assert r.returncode == 0, r.stderr
    assert _login(cfg, "carol", "carol-password-2") == "carol"
    assert _login(cfg, "carol", "carol-password-1") is None
    assert mk("user", "groups", "carol", "helpdesk", "--config", cfg).returncode == 0
    assert "[groups: helpdesk]" in mk("user", "list", "--config", cfg).stdout
    assert mk("user", "passwd", "nobody", "--config", cfg, stdin="x" * 10).returncode != 0
    assert mk("user", "del", "carol", "--config", cfg).returncode == 0
    assert "carol" not in mk("user", "list", "--config", cfg).stdout
    assert _login(cfg, "carol", "carol-password-2") is None
    assert mk("user", "del", "carol", "--config", cfg).returncode != 0


@pytest.mark.parametrize("cfg", ["sqlite"], indirect=True)
def test_app_password_commands(cfg: str) -> None:
    assert mk("user", "add", "erin", "--config", cfg, stdin="erin-password-1\n").returncode == 0
    r = mk("user", "app-password", "add", "erin", "Phone", "--services", "imap,submission",
           "--config", cfg)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.splitlines()[1].strip()
    assert len(secret) == 29 and secret.count("-") == 5
    assert _login(cfg, "erin", secret, "imap") == "erin"
    assert _login(cfg, "erin", secret, "pop3") is None
    listed = mk("user", "app-password", "list", "erin", "--config", cfg).stdout
    assert listed.startswith("phone: imap, submission; created ") and "last used" in listed
    assert secret not in listed
    r = mk("user", "app-password", "add", "erin", "phone", "--services", "pop3",
           "--config", cfg)
    assert r.returncode != 0 and "already has" in r.stderr
    r = mk("user", "app-password", "add", "erin", "x", "--services", "imap,fax",
           "--config", cfg)
    assert r.returncode != 0 and "fax" in r.stderr
    assert mk("user", "app-password", "revoke", "erin", "phone",
              "--config", cfg).returncode == 0
    assert _login(cfg, "erin", secret, "imap") is None
    assert mk("user", "app-password", "revoke", "erin", "phone",
              "--config", cfg).returncode != 0


@pytest.mark.parametrize("cfg", ["file", "postgresql"], indirect=True)
def test_import_dovecot_passwd_and_csv(cfg: str, tmp_path: Path) -> None:
    sha512 = sha512_crypt.using(rounds=5000).hash("frank-pw-1")
    passwd = tmp_path / "passwd"
    passwd.write_text("\n".join([
        "# Dovecot passwd-file",
        f"frank@example.test:{{SHA512-CRYPT}}{sha512}:1000:1000::/home/frank::",
        "grace:{PLAIN}grace-pw-1::::::userdb_quota_rule=*:storage=1G",
        f"heidi@example.test:{{MD5-CRYPT}}{md5_crypt.hash('x')}::",
        "ivan@elsewhere.test:{PLAIN}ivan-pw-1",
    ]) + "\n")
    r = mk("user", "import", "--dovecot-passwd", str(passwd), "--config", cfg)
    assert r.returncode != 0
    assert "nothing imported, 2 problem(s)" in r.stderr
    assert "line 4" in r.stderr and "line 5" in r.stderr and sha512 not in r.stderr
    assert _login(cfg, "frank", "frank-pw-1") is None  # all or nothing
    r = mk("user", "import", "--dovecot-passwd", str(passwd), "--skip-invalid", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert "imported 2 account(s)" in r.stdout
    assert _login(cfg, "frank@example.test", "frank-pw-1") == "frank"
    assert _login(cfg, "grace@example.test", "grace-pw-1") == "grace"
    users_file = Path(cfg).parent / "users.toml"
    if "sql" not in Path(cfg).read_text():
        assert "grace-pw-1" not in users_file.read_text()
    # Importing the same accounts again is refused, naming them.
    r = mk("user", "import", "--dovecot-passwd", str(passwd), "--skip-invalid", "--config", cfg)
    assert r.returncode != 0 and "frank exists" in r.stderr
    table = tmp_path / "users.csv"
    table.write_text("name,password,addresses,groups,send_as_others\n"
                     f"judy,{{SHA512-CRYPT}}{sha512},judy@example.test j@example.test,"
                     "printers;staff,yes\n")
    r = mk("user", "import", "--csv", str(table), "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert _login(cfg, "j@example.test", "frank-pw-1") == "judy"
    listing = mk("user", "list", "--config", cfg).stdout
    assert "judy: " in listing and "(send_as_others) [groups: printers, staff]" in listing


def test_ldap_accounts_are_read_only_but_app_passwords_work(slapd_server: Any,
                                                            tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "ldap.secret").write_text(SERVICE_PASSWORD)
    cfg = _site(tmp_path, {"backend": "ldap", "uri": [slapd_server.starttls_uri],
                           "base_dn": BASE_DN, "bind_dn": SERVICE_DN,
                           "bind_password_file": "ldap.secret",
                           "ca_file": str(slapd_server.ca_file)})
    r = mk("user", "add", "zed", "--config", cfg, stdin="zed-password-1\n")
    assert r.returncode != 0 and "accounts live in LDAP" in r.stderr
    assert mk("check-config", "--config", cfg).returncode == 0
    r = mk("user", "app-password", "add", "nobody", "phone", "--services", "imap",
           "--config", cfg)
    assert r.returncode != 0 and "no account nobody in LDAP" in r.stderr
    r = mk("user", "app-password", "add", "bob", "phone", "--services", "imap",
           "--config", cfg)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.splitlines()[1].strip()
    assert _login(cfg, "bob@example.test", secret, "imap") == "bob"
    assert _login(cfg, "bob@example.test", secret, "submission") is None
    assert _login(cfg, "bob", "bob-pw-2", "pop3") == "bob"
    assert "phone: imap" in mk("user", "app-password", "list", "bob", "--config", cfg).stdout
