"""What mailkeep creates has fixed modes whatever umask it inherits (issue 7, item 19): with
umask 000, `mailkeep init` and a serving daemon used to leave 0777 directories and 0666
files (anyone on the host could read the config and mail, or replace the users file).

Maildirs 0700 and everything in them 0600; the config directory, config and users files,
certs directory and key private; the certificate 0644. Run as real processes with umask 000.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.store.maildir import session_lock
from tests.support.daemon import RunningDaemon, start_process_daemon, write_config


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_init_under_umask_000(tmp_path: Path) -> None:
    site = tmp_path / "etc" / "mailkeep"
    r = subprocess.run([sys.executable, "-m", "mailkeep", "init", str(site), "--hostname",
                        "mail.example.test", "--ports", "unprivileged", "--bind-host",
                        "127.0.0.1"], capture_output=True, text=True, timeout=60, umask=0)
    assert r.returncode == 0, r.stderr
    assert {str(p.relative_to(tmp_path)): oct(mode(p)) for p in (
        site, site / "mailkeep.toml", site / "users.toml", site / "certs",
        site / "certs" / "mailkeep.key", site / "certs" / "mailkeep.crt")} == {
        "etc/mailkeep": "0o700",
        "etc/mailkeep/mailkeep.toml": "0o600",
        "etc/mailkeep/users.toml": "0o600",
        "etc/mailkeep/certs": "0o700",
        "etc/mailkeep/certs/mailkeep.key": "0o600",
        "etc/mailkeep/certs/mailkeep.crt": "0o644",
    }


@pytest.fixture
def daemon_umask_000(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True)
    old = os.umask(0)  # inherited by the daemon process started now
    try:
        running = start_process_daemon(config, ca)
    finally:
        os.umask(old)
    try:
        yield running
    finally:
        running.stop()


def test_maildirs_under_umask_000(daemon_umask_000: RunningDaemon) -> None:
    d = daemon_umask_000
    with d.smtp() as s:
        s.login("alice", "alice-secret-pw")
        s.sendmail("alice@example.test", ["alice@example.test", "bob@example.test"],
                   b"Subject: hello\r\n\r\nbody\r\n")
    c = d.imaps()
    c.login("alice", "alice-secret-pw")
    for folder in ("Archive.2026", "Sent"):
        assert c.create(folder)[0] == "OK"
    assert c.subscribe("Sent")[0] == "OK"
    assert c.append("Archive.2026", "($Label1 \\Seen)", None,
                    b"Subject: appended\r\n\r\nx\r\n")[0] == "OK"
    assert c.select("INBOX")[0] == "OK"
    assert c.copy("1", "Sent")[0] == "OK"
    assert c.store("1", "+FLAGS", "(Junk)")[0] == "OK"
    c.logout()
    p = d.pop3s()
    p.user("bob")
    p.pass_("bob-secret-pw-2")
    held = d.data_dir / "mail" / "bob" / session_lock.SESSION_LOCK_NAME
    assert mode(held) == 0o600
    assert p.stat()[0] == 1
    p.quit()

    mail = d.data_dir / "mail"
    seen: dict[str, int] = {}
    wrong: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(mail):
        for name in [*dirnames, ""]:
            path = Path(dirpath, name) if name else Path(dirpath)
            seen[str(path)] = mode(path)
            if mode(path) != 0o700:
                wrong[str(path.relative_to(d.data_dir))] = oct(mode(path))
        for name in filenames:
            path = Path(dirpath, name)
            seen[str(path)] = mode(path)
            if mode(path) != 0o600:
                wrong[str(path.relative_to(d.data_dir))] = oct(mode(path))
    names = {Path(p).name for p in seen}
    # Every kind of thing the store creates was made (else this test proves nothing).
    assert {"mail", "alice", "bob", ".Archive.2026", ".Sent", "tmp", "new", "cur",
            "dovecot-uidlist", "dovecot-keywords", "subscriptions", "dovecot-uidvalidity",
            "maildirfolder"} <= names
    assert wrong == {}
