"""POP3 security promises over real sockets: TLS before credentials, STLS injection, limits."""

from __future__ import annotations

import logging
import poplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailkeep.proto.sasl import encode_plain
from tests.support.daemon import RunningDaemon
from tests.support.pop3 import RawPop3, message, running_pop3_daemon, submit

BASE_CAPS = {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "IMPLEMENTATION"}


@pytest.fixture
def pop3d(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    yield from running_pop3_daemon(tmp_path, ca, loop_kind)


def test_capa_before_and_after_stls(pop3d: RunningDaemon) -> None:
    p = pop3d.pop3()
    before = p.capa()
    assert set(before) == BASE_CAPS | {"STLS"}  # no USER, no SASL before TLS
    p.stls(pop3d.client_context())
    after = p.capa()
    assert set(after) == BASE_CAPS | {"USER", "SASL"}
    assert after["SASL"] == ["PLAIN", "LOGIN"]
    p.user("bob")
    assert p.pass_("bob-secret-pw-2").startswith(b"+OK")
    p.quit()


def test_capa_on_implicit_tls(pop3d: RunningDaemon) -> None:
    p = pop3d.pop3s()
    assert set(p.capa()) == BASE_CAPS | {"USER", "SASL"}
    with pytest.raises(poplib.error_proto, match="already active"):
        p._shortcmd("STLS")
    p.quit()


@pytest.mark.parametrize("command", ["USER bob", "PASS bob-secret-pw-2",
                                     "AUTH PLAIN " + encode_plain("bob", "bob-secret-pw-2"),
                                     "AUTH LOGIN", "AUTH"])
def test_credentials_refused_before_tls(pop3d: RunningDaemon, command: str) -> None:
    p = pop3d.pop3()
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\] Plaintext"):
        p._shortcmd(command)
    p.quit()


def test_stls_injection_never_authenticates(pop3d: RunningDaemon) -> None:
    submit(pop3d, message("secret"))
    raw = RawPop3(pop3d, tls=False)
    raw.line()
    raw.send(b"STLS\r\nUSER bob\r\nPASS bob-secret-pw-2\r\nDELE 1\r\nQUIT\r\n")
    reply = raw.line()
    assert reply.startswith(b"-ERR")
    assert raw.closed()
    assert b"+OK" not in raw.buf
    assert len(pop3d.maildir_files("bob")) == 1
    p = pop3d.pop3s()  # the maildrop was never locked
    p.user("bob")
    p.pass_("bob-secret-pw-2")
    assert p.stat()[0] == 1
    p.quit()


def test_plaintext_racing_the_handshake_is_not_executed(pop3d: RunningDaemon) -> None:
    raw = RawPop3(pop3d, tls=False)
    raw.line()
    raw.send(b"STLS\r\n")
    assert raw.line() == b"+OK Begin TLS negotiation."
    raw.send(b"USER bob\r\nPASS bob-secret-pw-2\r\n")  # plaintext where TLS must start
    assert raw.closed()
    assert b"+OK" not in raw.buf


def test_wrong_password_gets_auth_code_and_is_logged_without_password(
        pop3d: RunningDaemon, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailkeep")
    p = pop3d.pop3s()
    p.user("bob")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong-password-xyz")
    p.user("bob")
    p.pass_("bob-secret-pw-2")
    p.quit()
    time.sleep(0.2)
    text = caplog.text
    assert "wrong-password-xyz" not in text and "bob-secret-pw-2" not in text
    closes = [r for r in caplog.records if "pop3 close" in r.getMessage()]
    assert len(closes) == 1 and "user=bob" in closes[0].getMessage()
    assert "conn=" in closes[0].getMessage()


def test_connection_budget_per_ip(tmp_path: Path, ca: trustme.CA) -> None:
    gen = running_pop3_daemon(tmp_path, ca, security={"max_connections_per_ip": 2})
    d = next(gen)
    try:
        a, b = d.pop3s(), d.pop3s()
        # Counted at accept, before TLS: over budget on the implicit-TLS door, the
        # connection is closed without a handshake (no TLS work for a flood)...
        with pytest.raises((ssl.SSLError, OSError)):
            d.pop3s()
        # ...and on a plaintext door the refusal says why.
        raw = RawPop3(d, tls=False)
        assert raw.line().startswith(b"-ERR [SYS/TEMP] too many connections")
        a.quit()
        b.quit()
    finally:
        gen.close()


def test_auth_failures_are_throttled(tmp_path: Path, ca: trustme.CA) -> None:
    gen = running_pop3_daemon(tmp_path, ca, security={
        "auth_failures_before_delay": 100, "auth_failures_before_block": 2})
    d = next(gen)
    try:
        p = d.pop3s()
        for _ in range(2):
            p.user("bob")
            with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
                p.pass_("nope")
        p.user("bob")
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Too many failed"):
            p.pass_("bob-secret-pw-2")  # blocked even with the right password
        p.quit()
    finally:
        gen.close()


def test_idle_timeout_logs_out_without_update(tmp_path: Path, ca: trustme.CA) -> None:
    gen = running_pop3_daemon(tmp_path, ca, pop3={"idle_timeout": 0.5})
    d = next(gen)
    try:
        submit(d, message("kept"))
        raw = RawPop3(d, tls=True)
        raw.line()
        raw.send(b"USER bob\r\nPASS bob-secret-pw-2\r\nDELE 1\r\n")
        raw.line(), raw.line(), raw.line()
        assert raw.line() == b"-ERR Disconnected for inactivity."
        assert raw.closed()
        assert len(d.maildir_files("bob")) == 1
    finally:
        gen.close()


def test_shutdown_tells_idle_sessions_and_deletes_nothing(tmp_path: Path, ca: trustme.CA
                                                          ) -> None:
    gen = running_pop3_daemon(tmp_path, ca)
    d = next(gen)
    submit(d, message("kept"))
    raw = RawPop3(d, tls=True)
    raw.line()
    raw.send(b"USER bob\r\nPASS bob-secret-pw-2\r\nDELE 1\r\n")
    raw.line(), raw.line(), raw.line()
    d.stop()
    assert raw.line().startswith(b"-ERR [SYS/TEMP] Server shutting down")
    assert len(d.maildir_files("bob")) == 1
    assert not (d.data_dir / "mail/bob/dovecot-pop3-session.lock").exists()
    gen.close()
