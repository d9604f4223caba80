"""An administrator's first hour, as found by trying it: init without a demo account, the
configuration from MAILKEEP_CONFIG, hints that run as printed, a read-only config volume,
every configuration problem in one run, damaged password hashes. Each runs the real
`mailkeep` command."""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
import trustme

from mailkeep.cli import build_parser, main
from mailkeep.config.hints import CONFIG_ENV, DEFAULT_CONFIG
from mailkeep.directory.file import read_users_file
from mailkeep.directory.passwords import verify_password
from tests.support.daemon import start_process_daemon, write_config

MAILKEEP = [sys.executable, "-m", "mailkeep"]
# Damaged copies of hashes, as a hand edit or a truncated export leaves them: no checksum
# (passlib "repairs" the rounds with a warning), too low rounds, a cut checksum, a cut
# bcrypt hash, and a scheme nobody verifies.
DAMAGED_HASHES = [
    "$6$rounds=10$abc",
    "{SHA512-CRYPT}$6$rounds=10$saltsalt$" + "x" * 86,
    "$6$saltsaltsaltsaltsalt",
    "$6$abc$short",
    "$2b$12$tooshort",
    "{MD5-CRYPT}$1$abc$def",
]


def mk(*args: str, stdin: str | None = None, env: dict[str, str] | None = None,
       cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if args[:1] == ("serve",) and os.geteuid() == 0:
        args = (*args, "--allow-root")
    full_env = {k: v for k, v in os.environ.items() if k not in (CONFIG_ENV,
                                                                 "MAILKEEP_DEMO_USER")}
    full_env.update(env or {})
    return subprocess.run([*MAILKEEP, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env=full_env, cwd=cwd)


def hints(text: str) -> list[str]:
    """Every `mailkeep ...` command quoted in backticks in some output."""
    return re.findall(r"`(mailkeep [^`]+)`", text)


def run_hint(hint: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a printed hint as an administrator would paste it (from another folder)."""
    words = shlex.split(hint)
    assert words[0] == "mailkeep"
    return mk(*words[1:], stdin=stdin, cwd=Path("/"))


def init(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Path:
    r = mk("init", str(tmp_path / "site"), "--hostname", "mail.example.test", "--domain",
           "example.test", "--ports", "unprivileged", "--bind-host", "127.0.0.1", *extra,
           env=env)
    assert r.returncode == 0, r.stderr
    return tmp_path / "site" / "mailkeep.toml"


# -- init: no demo account unless asked --------------------------------------------------------

def test_init_makes_no_account_and_prints_the_command_that_adds_one(tmp_path: Path) -> None:
    r = mk("init", "site", "--hostname", "mail.example.test", "--ports", "unprivileged",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    site = tmp_path / "site"
    assert read_users_file(site / "users.toml") == {}
    assert "demo account" not in r.stdout
    # Printed with the absolute path: it runs from anywhere, as shown.
    add = f"mailkeep user add postmaster --config {site / 'mailkeep.toml'}"
    assert f"  {add}\n" in r.stdout
    assert run_hint(add, stdin="postmaster-pw-1\n").returncode == 0
    rec = read_users_file(site / "users.toml")["postmaster"]
    assert rec.account.addresses == ("postmaster@example.test",)
    assert verify_password("postmaster-pw-1", rec.password_hash)
    assert f"mailkeep serve --config {site / 'mailkeep.toml'}" in r.stdout
    # The config's own comment names the command with the same path.
    assert f"mailkeep check-config --config {site / 'mailkeep.toml'}" in \
        (site / "mailkeep.toml").read_text()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_demo_account_on_request(tmp_path: Path, how: str) -> None:
    cfg = init(tmp_path, *(["--demo-user"] if how == "flag" else []),
               env={"MAILKEEP_DEMO_USER": "1"} if how == "env" else None)
    r_users = read_users_file(cfg.parent / "users.toml")
    assert list(r_users) == ["demo"]


def test_demo_account_hint_runs_as_shown(tmp_path: Path) -> None:
    r = mk("init", str(tmp_path / "s"), "--hostname", "mail.example.test", "--ports",
           "unprivileged", "--demo-user")
    assert r.returncode == 0, r.stderr
    (passwd,) = hints(r.stdout)
    assert passwd == f"mailkeep user passwd demo --config {tmp_path / 's' / 'mailkeep.toml'}"
    assert run_hint(passwd, stdin="a-new-demo-pw\n").returncode == 0
    rec = read_users_file(tmp_path / "s" / "users.toml")["demo"]
    assert verify_password("a-new-demo-pw", rec.password_hash)


def test_demo_user_env_must_be_clear(tmp_path: Path) -> None:
    r = mk("init", str(tmp_path / "s"), "--hostname", "mail.example.test",
           env={"MAILKEEP_DEMO_USER": "maybe"})
    assert r.returncode == 2
    assert "MAILKEEP_DEMO_USER='maybe'" in r.stderr
    assert not (tmp_path / "s").exists()
    # --no-demo-user (the old opt-out) still works, and wins over the variable.
    init(tmp_path, "--no-demo-user", env={"MAILKEEP_DEMO_USER": "yes"})
    assert read_users_file(tmp_path / "site" / "users.toml") == {}


# -- MAILKEEP_CONFIG: the default --config of every command ------------------------------------

def _commands_with_config() -> list[tuple[list[str], bool]]:
    """(argv without --config, whether --config is required) for every (sub)command that
    takes --config, with placeholder values for its positional arguments."""
    found: list[tuple[list[str], bool]] = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            for name, sub in subs[0].choices.items():
                walk(sub, [*words, name])
            return
        if not any("--config" in a.option_strings for a in parser._actions):
            return
        positionals = ["x" if a.dest != "domain" else "example.test"
                       for a in parser._actions if not a.option_strings
                       and a.nargs not in ("?", "*")]
        # Required options, and one option of each required group (user import:
        # --dovecot-passwd | --csv).
        options = [w for g in parser._mutually_exclusive_groups if g.required
                   for w in (g._group_actions[0].option_strings[0], "x")]
        options += [w for a in parser._actions if a.required and a.option_strings
                    for w in (a.option_strings[0], "imap")]
        found.append(([*words, *positionals, *options],
                      bool(parser.get_default("config_required"))))

    walk(build_parser(), [])
    return found


COMMANDS = _commands_with_config()


def test_every_config_option_is_found() -> None:
    names = {" ".join(itertools.takewhile(lambda w: w not in ("x", "example.test")
                                          and not w.startswith("--"), argv)): required
             for argv, required in COMMANDS}
    assert {"serve", "check-config", "dns", "health", "user add", "user list",
            "user app-password add", "cert show", "queue list", "queue flush",
            "dkim show", "reload"} <= {n for n, required in names.items() if required}
    assert {n for n, required in names.items() if not required} == {"cert selfsigned",
                                                                    "dkim keygen"}


@pytest.mark.parametrize(("argv", "required"), COMMANDS, ids=[" ".join(a) for a, _ in COMMANDS])
def test_mailkeep_config_is_the_default(argv: list[str], required: bool, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Every command that takes --config reads $MAILKEEP_CONFIG without it: pointed at a
    file that is not there, each says so, naming that file."""
    missing = tmp_path / "elsewhere" / "from-env.toml"
    monkeypatch.setenv(CONFIG_ENV, str(missing))
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert str(missing) in err and "Traceback" not in err, err


def test_without_any_config_a_clear_usage_error(tmp_path: Path) -> None:
    if DEFAULT_CONFIG.exists():
        pytest.skip(f"{DEFAULT_CONFIG} exists on this machine")
    r = mk("user", "list")
    assert r.returncode == 2
    assert "no configuration: give --config FILE or set MAILKEEP_CONFIG=FILE" in r.stderr
    assert "Traceback" not in r.stderr


def test_mailkeep_config_end_to_end(tmp_path: Path) -> None:
    cfg = init(tmp_path)
    env = {CONFIG_ENV: str(cfg)}
    assert mk("user", "add", "carol", stdin="carol-password-1\n", env=env).returncode == 0
    assert "carol: carol@example.test" in mk("user", "list", env=env).stdout
    assert mk("check-config", env=env).returncode == 0
    r = mk("dkim", "keygen", "example.test", env=env)
    assert r.returncode == 0, r.stderr
    assert (cfg.parent / "dkim" / "example.test.mailkeep.key").is_file()  # beside the config
    # An explicit --config still wins.
    other = init(tmp_path / "b")
    assert "carol" not in mk("user", "list", "--config", str(other), env=env).stdout


# -- hints run as printed --------------------------------------------------------------------

def test_user_hints_run_as_printed(tmp_path: Path) -> None:
    cfg = str(init(tmp_path))
    assert mk("user", "add", "carol", "--config", cfg, stdin="carol-password-1\n").returncode == 0
    r = mk("user", "add", "carol", "--config", cfg, stdin="carol-password-2\n")
    (passwd,) = hints(r.stderr)
    assert passwd == f"mailkeep user passwd carol --config {cfg}"
    assert run_hint(passwd, stdin="carol-password-3\n").returncode == 0
    r = mk("user", "app-password", "add", "carol", "phone", "--services", "imap",
           "--config", cfg)
    (revoke,) = hints(r.stdout)
    assert revoke == f"mailkeep user app-password revoke carol phone --config {cfg}"
    assert run_hint(revoke).returncode == 0
    assert "phone" not in mk("user", "app-password", "list", "carol", "--config", cfg).stdout


def test_queue_and_dkim_hints_name_the_config(tmp_path: Path) -> None:
    cfg = str(init(tmp_path))
    r = mk("queue", "show", "0000nosuchid", "--config", cfg)
    (listing,) = hints(r.stderr)
    assert listing == f"mailkeep queue list --config {cfg}"
    assert run_hint(listing).returncode == 0
    r = mk("dkim", "show", "--config", cfg)
    (keygen,) = hints(r.stdout)
    assert keygen == f"mailkeep dkim keygen example.test --config {cfg}"
    assert run_hint(keygen).returncode == 0


def test_certificate_hint_replaces_the_right_files(tmp_path: Path) -> None:
    cfg = init(tmp_path)
    text = cfg.read_text().replace('hostname = "mail.example.test"',
                                   'hostname = "smtp.example.test"')
    cfg.write_text(text)
    r = mk("check-config", "--config", str(cfg))
    assert r.returncode == 78
    (fix,) = hints(r.stderr)
    site = cfg.parent
    assert fix == (f"mailkeep cert selfsigned --hostname smtp.example.test --cert "
                   f"{site / 'certs' / 'mailkeep.crt'} --key {site / 'certs' / 'mailkeep.key'} "
                   "--force")
    assert run_hint(fix).returncode == 0
    assert mk("check-config", "--config", str(cfg)).returncode == 0


# -- a read-only config volume ---------------------------------------------------------------

def _can_mount_readonly() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "sh", "-c", "mount --bind -o ro / /"],
                       capture_output=True, timeout=30)
    return r.returncode == 0


@pytest.fixture
def readonly_mk() -> Iterator[object]:
    """Run mailkeep with one folder read-only: as root a private read-only bind mount
    (EROFS, what a `:ro` container volume gives); otherwise the folder's files and
    subfolders without write permission (EACCES)."""
    restore: list[tuple[Path, int]] = []

    def run(folder: Path, *args: str, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            if not _can_mount_readonly():
                pytest.skip("root without mount namespaces (unshare --mount)")
            script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
            return subprocess.run(["unshare", "--mount", "sh", "-c", script, str(folder),
                                   *MAILKEEP, *args], input=stdin, capture_output=True,
                                  text=True, timeout=60)
        for path in [folder, *folder.rglob("*")]:
            mode = path.stat().st_mode & 0o7777
            restore.append((path, mode))
            path.chmod(mode & ~0o222)
        try:
            return mk(*args, stdin=stdin)
        finally:
            for path, mode in reversed(restore):
                path.chmod(mode)
            restore.clear()

    yield run


WRITING_COMMANDS = [
    ("user", "add", "bob"),
    ("user", "passwd", "carol"),
    ("user", "del", "carol"),
    ("user", "groups", "carol", "staff"),
    ("user", "app-password", "add", "carol", "laptop", "--services", "imap"),
    ("user", "app-password", "revoke", "carol", "phone"),
    ("user", "import", "--csv", "CSV"),
    ("cert", "selfsigned", "--force"),
    ("dkim", "keygen", "example.test"),
]


@pytest.mark.parametrize("argv", WRITING_COMMANDS, ids=[" ".join(a[:3]) for a in
                                                       WRITING_COMMANDS])
def test_read_only_config_gives_a_clear_error(tmp_path: Path, argv: tuple[str, ...],
                                              readonly_mk: object) -> None:
    cfg = init(tmp_path)
    site = cfg.parent
    assert mk("user", "add", "carol", "--config", str(cfg), stdin="carol-pw-1\n").returncode == 0
    assert mk("user", "app-password", "add", "carol", "phone", "--services", "imap",
              "--config", str(cfg)).returncode == 0
    csv = tmp_path / "accounts.csv"
    csv.write_text("name,password\nzed,{PLAIN}zed-password-1\n")
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    args = [str(csv) if a == "CSV" else a for a in argv]
    r = readonly_mk(site, *args, "--config", str(cfg), stdin="new-password-1\n")  # type: ignore[operator]
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("mailkeep: cannot write "), r.stderr
    expected_fix = "mount it read-write" if os.geteuid() == 0 else "run this as the user"
    assert expected_fix in r.stderr
    if argv[0] == "user":
        assert f"the users file {site / 'users.toml'}" in r.stderr
        assert 'or keep the accounts in SQL or LDAP' in r.stderr
    assert {p: p.read_bytes() for p in site.rglob("*") if p.is_file()} == before


def test_read_only_sqlite_gives_a_clear_error(tmp_path: Path, ca: trustme.CA,
                                              readonly_mk: object) -> None:
    cfg = write_config(tmp_path, ca)
    cfg.write_text(cfg.read_text().replace('backend = "file"\npath = "users.toml"',
                                           'backend = "sql"\ndatabase = "db/users.sqlite3"'))
    (tmp_path / "db").mkdir()
    assert mk("user", "create-schema", "--config", str(cfg)).returncode == 0
    assert mk("user", "add", "carol", "--config", str(cfg), stdin="carol-pw-1\n").returncode == 0
    r = readonly_mk(tmp_path / "db", "user", "add", "bob", "--config", str(cfg),  # type: ignore[operator]
                    stdin="bob-password-1\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"mailkeep: cannot write {tmp_path / 'db' / 'users.sqlite3'}: "
                               "attempt to write a readonly database"), r.stderr
    assert "mount it read-write" in r.stderr
    assert "carol" in mk("user", "list", "--config", str(cfg)).stdout
    assert "bob" not in mk("user", "list", "--config", str(cfg)).stdout


def test_read_only_init_gives_a_clear_error(tmp_path: Path, readonly_mk: object) -> None:
    tmp_path.joinpath("etc").mkdir()
    r = readonly_mk(tmp_path / "etc", "init", str(tmp_path / "etc" / "mailkeep"),  # type: ignore[operator]
                    "--hostname", "mail.example.test")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"cannot write {tmp_path / 'etc' / 'mailkeep'}" in r.stderr


# -- check-config: every problem in one run --------------------------------------------------

@pytest.mark.parametrize("damage", ["missing", "directory"])
def test_check_config_reports_certificate_with_other_problems(tmp_path: Path,
                                                              damage: str) -> None:
    cfg = init(tmp_path)
    cert = cfg.parent / "certs" / "mailkeep.crt"
    cert.unlink()
    if damage == "directory":
        cert.mkdir()
    cfg.write_text(cfg.read_text().replace("# max_recipients = 100", "max_recipients = 0"))
    r = mk("check-config", "--config", str(cfg))
    assert r.returncode == 78
    assert "submission.max_recipients: must be greater than 0" in r.stderr
    assert f"tls.cert: {cert}: cannot read certificate" in r.stderr
    assert "2 problem(s)" in r.stderr
    # With the other problem fixed, the certificate is still reported (once, in depth).
    cfg.write_text(cfg.read_text().replace("max_recipients = 0", "# max_recipients = 100"))
    r = mk("check-config", "--config", str(cfg))
    assert r.returncode == 78 and r.stderr.count("tls.cert:") == 1, r.stderr


# -- damaged password hashes -----------------------------------------------------------------

def test_damaged_hashes_in_users_file(tmp_path: Path) -> None:
    """Each damaged hash is reported in one run, naming its account, without passlib's raw
    warning or the hash itself; the printed repair mends the file."""
    cfg = init(tmp_path)
    users = cfg.parent / "users.toml"
    names = [f"user{i}" for i in range(len(DAMAGED_HASHES))]
    users.write_text("".join(f'[users.{name}]\npassword = "{damaged}"\n\n'
                             for name, damaged in zip(names, DAMAGED_HASHES, strict=True)))
    for argv in (["check-config"], ["serve"], ["user", "list"]):
        r = mk(*argv, "--config", str(cfg))
        assert r.returncode == 78, (argv, r.stderr)
        assert "Warning" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        for name in names:
            assert f"users.{name}.password: " in r.stderr, (argv, r.stderr)
        for damaged in DAMAGED_HASHES:
            assert damaged not in r.stderr  # hashes are secrets too
    r = mk("check-config", "--config", str(cfg))
    repairs = hints(r.stderr)
    assert repairs == [f"mailkeep user passwd {name} --config {cfg}" for name in names]
    # A printed repair works on the damaged file and mends that account.
    fixed = run_hint(repairs[0], stdin="repaired-pw-1\n")
    assert fixed.returncode == 0, fixed.stderr
    r = mk("check-config", "--config", str(cfg))
    assert "users.user0.password" not in r.stderr and "users.user1.password" in r.stderr
    doc = tomllib.loads(users.read_text())
    doc["users"] = {"user0": doc["users"]["user0"]}  # the others removed: all is well
    users.write_text(tomli_w.dumps(doc))
    assert verify_password("repaired-pw-1", read_users_file(users)["user0"].password_hash)
    assert mk("check-config", "--config", str(cfg)).returncode == 0


def test_passwd_works_beside_damaged_accounts(tmp_path: Path) -> None:
    """Another account's damaged hash does not stop a password change (it is kept, and
    still reported); an unknown account is still refused."""
    cfg = init(tmp_path, "--demo-user")
    assert mk("user", "add", "carol", "--config", str(cfg), stdin="carol-pw-1\n").returncode == 0
    users = cfg.parent / "users.toml"
    users.write_text(re.sub(r'(\[users\.demo\]\npassword = )"[^"]*"', r'\1"$6$abc$short"',
                            users.read_text()))
    assert mk("check-config", "--config", str(cfg)).returncode == 78
    r = mk("user", "passwd", "carol", "--config", str(cfg), stdin="carol-pw-2\n")
    assert r.returncode == 0, r.stderr
    assert verify_password("carol-pw-2", read_users_file(users, repairing=True)["carol"]
                           .password_hash)
    r = mk("check-config", "--config", str(cfg))
    assert r.returncode == 78 and "users.demo.password" in r.stderr
    assert "users.carol" not in r.stderr
    r = mk("user", "passwd", "nobody", "--config", str(cfg), stdin="nobody-pw-1\n")
    assert r.returncode != 0 and "no account nobody" in r.stderr, r.stderr


def test_damaged_hash_in_sql_fails_the_login_and_is_logged_once(tmp_path: Path,
                                                                ca: trustme.CA) -> None:
    cfg = write_config(tmp_path, ca)
    text = cfg.read_text().replace('backend = "file"\npath = "users.toml"',
                                   'backend = "sql"\ndatabase = "users.sqlite3"')
    cfg.write_text(text)
    assert mk("user", "create-schema", "--config", str(cfg)).returncode == 0
    for name in ("carol", "dave"):
        r = mk("user", "add", name, "--config", str(cfg), stdin=f"{name}-password-1\n")
        assert r.returncode == 0, r.stderr
    with sqlite3.connect(tmp_path / "users.sqlite3") as db:
        db.execute("UPDATE users SET password = ? WHERE name = 'carol'", (DAMAGED_HASHES[0],))
    daemon = start_process_daemon(cfg, ca)
    try:
        for _ in range(3):
            with daemon.smtps() as s, pytest.raises(smtplib.SMTPAuthenticationError) as info:
                s.login("carol@example.test", "carol-password-1")
            assert info.value.smtp_code == 535
        with daemon.smtps() as s:  # the daemon is fine, and so are the others
            assert s.login("dave@example.test", "dave-password-1")[0] == 235
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop()
    log = (tmp_path / "daemon.log").read_text()
    deadline = time.monotonic() + 10  # the log is complete once the process has exited
    while "stopped" not in log and time.monotonic() < deadline:
        time.sleep(0.1)
        log = (tmp_path / "daemon.log").read_text()
    reports = [line for line in log.splitlines() if "account carol: unusable password hash"
               in line]
    assert len(reports) == 1, log
    assert "SHA512-CRYPT" in reports[0]
    assert f"mailkeep user passwd carol --config {cfg}" in reports[0]
    assert "Warning" not in log and "Traceback" not in log
    assert DAMAGED_HASHES[0] not in log
