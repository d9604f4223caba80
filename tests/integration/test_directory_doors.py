"""The directory backends from the client's side: the real daemon over real TLS sockets,
pointed at SQLite, PostgreSQL (real server) and LDAP (real slapd), driven by Python's
imaplib, poplib and smtplib and by raw protocol lines where the exact reply matters.

- users log in with the passwords they already have, on all three doors;
- an app password opens only its doors;
- a directory that does not answer gives the documented temporary failure promptly
  (454 4.7.0, NO [UNAVAILABLE], -ERR [SYS/TEMP]), never "wrong password";
- a connector's auth_groups admits members only.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import poplib
import smtplib
import socket
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.blackhole import blackhole
from tests.support.daemon import HOSTNAME, RunningDaemon, start_thread_daemon, write_config
from tests.support.directory_backends import BackendSetup, make_backend

DOORS_KINDS = ("file", "sqlite", "postgresql", "ldap")
TIMEOUT = 20.0


def _setup(request: pytest.FixtureRequest, kind: str, root: Path) -> BackendSetup:
    slapd = request.getfixturevalue("slapd_server") if kind == "ldap" else None
    pg = request.getfixturevalue("pg_server") if kind == "postgresql" else None
    root.mkdir(parents=True, exist_ok=True)
    return asyncio.run(make_backend(kind, root, slapd=slapd, pg=pg))


def _start(root: Path, ca: trustme.CA, setup: BackendSetup, *, extra: str = "",
           loop_kind: str = "asyncio") -> RunningDaemon:
    config = write_config(root, ca, pop3_listeners=True, imap_listeners=True)
    text = config.read_text()
    old = '[directory]\nbackend = "file"\npath = "users.toml"\n'
    assert old in text
    config.write_text(text.replace(old, setup.directory_toml()) + extra)
    return start_thread_daemon(config, ca, loop_kind)


@pytest.fixture(params=DOORS_KINDS)
def served(request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA
           ) -> Iterator[tuple[BackendSetup, RunningDaemon]]:
    setup = _setup(request, str(request.param), tmp_path)
    running = _start(tmp_path, ca, setup)
    try:
        yield setup, running
    finally:
        running.stop()


# -- raw lines, for the exact replies -----------------------------------------------------------


class Line:
    """One TLS connection speaking lines (implicit TLS)."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock = ctx.wrap_socket(raw, server_hostname=HOSTNAME)
        self.file = self.sock.makefile("rb")

    def read(self) -> str:
        line = self.file.readline()
        assert line, "connection closed"
        return line.decode().rstrip("\r\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def imap_login(d: RunningDaemon, login: str, password: str) -> str:
    c = Line(d.imaps_port, d.client_context())
    try:
        c.read()
        c.send(f'a1 LOGIN "{login}" "{password}"')
        while True:
            line = c.read()
            if line.startswith("a1 "):
                return line
    finally:
        c.close()


def pop3_login(d: RunningDaemon, login: str, password: str) -> str:
    c = Line(d.pop3s_port, d.client_context())
    try:
        c.read()
        c.send(f"USER {login}")
        assert c.read().startswith("+OK")
        c.send(f"PASS {password}")
        return c.read()
    finally:
        c.close()


def smtp_login(d: RunningDaemon, login: str, password: str, port: int | None = None) -> str:
    c = Line(port or d.submissions_port, d.client_context())
    try:
        assert c.read().startswith("220")
        c.send("EHLO client.example.test")
        while not c.read().startswith("250 "):
            pass
        token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        c.send(f"AUTH PLAIN {token}")
        return c.read()
    finally:
        c.close()


# -- logins with existing passwords -------------------------------------------------------------


def test_existing_passwords_work_on_all_three_doors(
    served: tuple[BackendSetup, RunningDaemon],
) -> None:
    _, d = served
    imap = d.imaps(timeout=TIMEOUT)
    try:
        typ, _ = imap.login("alice@example.test", "alice-pw-1")
        assert typ == "OK"
        assert imap.select("INBOX")[0] == "OK"
    finally:
        imap.logout()
    pop = d.pop3s(timeout=TIMEOUT)
    try:
        pop.user("carol")  # a migrated {SHA512-CRYPT} / {CRYPT}$6$ hash
        assert pop.pass_("carol-pw-3").startswith(b"+OK")
    finally:
        pop.quit()
    with d.smtps(timeout=TIMEOUT) as smtp:
        code, _ = smtp.login("bob", "bob-pw-2")
        assert code == 235
        refused = smtp.sendmail("bob@example.test", ["alice@example.test"],
                                b"From: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n")
        assert refused == {}


def test_wrong_passwords_are_refused_as_such(served: tuple[BackendSetup, RunningDaemon]) -> None:
    _, d = served
    assert imap_login(d, "alice", "wrong-pw").startswith("a1 NO [AUTHENTICATIONFAILED]")
    assert pop3_login(d, "alice", "wrong-pw").startswith("-ERR [AUTH]")
    assert smtp_login(d, "alice", "wrong-pw").startswith("535 5.7.8")


def test_app_password_works_per_protocol(served: tuple[BackendSetup, RunningDaemon]) -> None:
    setup, d = served
    secret = setup.app_secret  # alice's "phone": imap and submission
    assert imap_login(d, "alice", secret).startswith("a1 OK")
    assert smtp_login(d, "alice@example.test", secret).startswith("235")
    assert pop3_login(d, "alice", secret).startswith("-ERR [AUTH]")
    imap = d.imaps(timeout=TIMEOUT)
    try:
        assert imap.login("alice", secret)[0] == "OK"
    finally:
        imap.logout()
    pop = d.pop3s(timeout=TIMEOUT)
    try:
        pop.user("alice")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            pop.pass_(secret)
    finally:
        pop.close()


# -- a directory that is down ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "ldap"])
def test_directory_down_is_a_temporary_failure_on_every_door(
    request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA, kind: str,
) -> None:
    setup = _setup(request, kind, tmp_path)
    holder: sqlite3.Connection | None = None
    with blackhole() as port:
        if kind == "sqlite":
            setup.options["timeout"] = 0.5
            holder = sqlite3.connect(tmp_path / "users.sqlite3", isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
        elif kind == "postgresql":
            host = setup.options["dsn"].split("@")[1].split("/")[0]
            setup.options["dsn"] = setup.options["dsn"].replace(host, f"127.0.0.1:{port}")
            setup.options["timeout"] = 1.0
        else:
            setup.options["uri"] = [f"ldaps://127.0.0.1:{port}"]
            setup.options["timeout"] = 1.0
        d = _start(tmp_path, ca, setup)
        try:
            # RFC 5530 UNAVAILABLE; RFC 3206 SYS/TEMP; RFC 4954 §6 454 4.7.0.
            assert imap_login(d, "alice", "alice-pw-1").startswith("a1 NO [UNAVAILABLE]")
            assert pop3_login(d, "alice", "alice-pw-1").startswith("-ERR [SYS/TEMP]")
            assert smtp_login(d, "alice", "alice-pw-1").startswith("454 4.7.0")
            # The app password too (never "wrong password" while the directory is down).
            assert imap_login(d, "alice", setup.app_secret).startswith("a1 NO [UNAVAILABLE]")
        finally:
            d.stop()
            if holder is not None:
                holder.execute("ROLLBACK")
                holder.close()


def test_failures_while_down_do_not_block_the_client(
    request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA,
) -> None:
    """Temporary failures are ours, not the client's: they never count towards a block."""
    setup = _setup(request, "ldap", tmp_path)
    setup.options["uri"] = ["ldaps://127.0.0.1:1"]  # refused at once
    setup.options["timeout"] = 1.0
    d = _start(tmp_path, ca, setup)
    try:
        for _ in range(12):  # more than auth_failures_before_block (10)
            assert imap_login(d, "alice", "alice-pw-1").startswith("a1 NO [UNAVAILABLE]")
    finally:
        d.stop()


# -- groups in policy ----------------------------------------------------------------------------


RELAY = """
[listeners.apps]
protocol = "relay"
tls = "implicit"
bind = ["127.0.0.1:0"]
clients = ["127.0.0.0/8"]
auth = "required"
auth_groups = ["HelpDesk"]
may_relay = false
"""


@pytest.mark.parametrize("kind", ["file", "ldap"])
def test_connector_auth_groups_admit_members_only(
    request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA, kind: str,
) -> None:
    setup = _setup(request, kind, tmp_path)
    d = _start(tmp_path, ca, setup, extra=RELAY)
    try:
        port = d.ports["apps"]
        assert smtp_login(d, "alice", "alice-pw-1", port).startswith("235")  # helpdesk
        assert smtp_login(d, "bob", "bob-pw-2", port).startswith("535 5.7.8")  # staff only
        # Submission has no auth_groups here: bob is welcome there.
        assert smtp_login(d, "bob", "bob-pw-2").startswith("235")
    finally:
        d.stop()


def test_send_as_groups_let_members_put_others_in_from(
    request: pytest.FixtureRequest, tmp_path: Path, ca: trustme.CA,
) -> None:
    setup = _setup(request, "sqlite", tmp_path)
    setup.options["send_as_groups"] = ["helpdesk"]
    d = _start(tmp_path, ca, setup)
    message = (b"From: Support <support@example.test>\r\nTo: bob@example.test\r\n"
               b"Subject: ticket\r\n\r\nhello\r\n")
    try:
        with d.smtps(timeout=TIMEOUT) as smtp:
            smtp.login("alice", "alice-pw-1")  # in helpdesk
            assert smtp.sendmail("alice@example.test", ["bob@example.test"], message) == {}
        with d.smtps(timeout=TIMEOUT) as smtp:
            smtp.login("bob", "bob-pw-2")  # not in helpdesk
            with pytest.raises(smtplib.SMTPDataError):
                smtp.sendmail("bob@example.test", ["alice@example.test"], message)
    finally:
        d.stop()


def test_imaplib_sees_unavailable_as_a_no(tmp_path: Path, ca: trustme.CA,
                                          request: pytest.FixtureRequest) -> None:
    """What a real client library does with the temporary failure: a NO, not a crash."""
    setup = _setup(request, "ldap", tmp_path)
    setup.options["uri"] = ["ldaps://127.0.0.1:1"]
    d = _start(tmp_path, ca, setup)
    try:
        imap = d.imaps(timeout=TIMEOUT)
        try:
            with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
                imap.login("alice", "alice-pw-1")
        finally:
            imap.shutdown()
    finally:
        d.stop()


