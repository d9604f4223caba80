"""Login limits from the attacker's side (issue 7 items 15 and 17), over real TLS sockets.

Item 15: the auth throttle counts attempts in flight. Twenty connections from one address
send one wrong password each at the same moment; before the fix every one of them was
checked (the block threshold only counted failures already recorded). Now at most
`auth_failures_before_block` passwords are checked and the rest are refused as blocked
without being verified, on every door.

Item 17: IMAP sessions are counted per user and client address (Dovecot's
mail_max_userip_connections) with a per-user backstop, refused with NO [LIMIT].

Bounded by socket timeouts, thread joins and counts; nothing is timed.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.daemon import HOSTNAME, USERS, RunningDaemon, start_thread_daemon, write_config
from tests.support.imap import RawImap, password, session
from tests.support.imap import close_all as close_imap_clients
from tests.support.rawsmtp import close_all as close_smtp_clients
from tests.support.rawsmtp import plain_blob, ready_session
from tests.support.wait import eventually

PARALLEL = 20
BLOCK_AFTER = 10
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_smtp_clients()
    close_imap_clients()


def _daemon(tmp_path: Path, ca: trustme.CA, loop_kind: str,
            **kwargs: object) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True,
                          **kwargs)  # type: ignore[arg-type]
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        close_smtp_clients()
        close_imap_clients()
        running.stop()


# -- one client per door, each answering "checked" / "blocked" for a password -------------

CHECKED = "checked"   # the password was verified and found wrong
BLOCKED = "blocked"   # refused without a check: the address is throttled
ACCEPTED = "accepted"


class LineTls:
    """A POP3 client over implicit TLS from a chosen source address, one line at a time."""

    def __init__(self, d: RunningDaemon, port: int, source: str) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                       source_address=(source, 0))
        self.sock = d.client_context().wrap_socket(raw, server_hostname=HOSTNAME)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Door:
    """How one protocol is prepared up to the password, and how its answer is read."""

    prepare: Callable[[RunningDaemon, str], Any]
    attempt: Callable[[Any, str], str]
    close: Callable[[Any], None]


def _smtp_prepare(d: RunningDaemon, source: str) -> Any:
    return ready_session(d.submission_port, d.client_context(), user=None, source=source,
                         timeout=TIMEOUT)


def _smtp_attempt(c: Any, pw: str) -> str:
    r = c.cmd(f"AUTH PLAIN {plain_blob('bob', pw)}")
    if (r.code, r.enhanced) == (535, "5.7.8"):
        return CHECKED
    if (r.code, r.enhanced) == (454, "4.7.0"):
        return BLOCKED
    if r.code == 235:
        return ACCEPTED
    return f"unexpected: {r}"


def _imap_prepare(d: RunningDaemon, source: str) -> Any:
    c = RawImap.tls(d, source=source, timeout=TIMEOUT)
    c.greeting()
    return c


def _imap_attempt(c: Any, pw: str) -> str:
    r = c.command(f'LOGIN bob "{pw}"')
    if r.status == "NO" and r.text.startswith(b"[AUTHENTICATIONFAILED]"):
        return CHECKED
    if r.status == "NO" and r.text.startswith(b"[UNAVAILABLE]"):
        return BLOCKED
    if r.status == "OK":
        return ACCEPTED
    return f"unexpected: {r.status} {r.text!r}"


def _pop3_prepare(d: RunningDaemon, source: str) -> Any:
    c = LineTls(d, d.pop3s_port, source)
    assert c.line().startswith(b"+OK")
    assert c.cmd("USER bob").startswith(b"+OK")
    return c


def _pop3_attempt(c: Any, pw: str) -> str:
    line = c.cmd(f"PASS {pw}")
    if line.startswith(b"-ERR [AUTH]"):
        return CHECKED
    if line.startswith(b"-ERR [SYS/TEMP]"):
        return BLOCKED
    if line.startswith(b"+OK"):
        return ACCEPTED
    return f"unexpected: {line!r}"


DOORS = {
    "submission": Door(_smtp_prepare, _smtp_attempt, lambda c: c.close()),
    "imap": Door(_imap_prepare, _imap_attempt, lambda c: c.close()),
    "pop3": Door(_pop3_prepare, _pop3_attempt, lambda c: c.close()),
}


def _all_at_once(clients: list[Any], attempt: Callable[[Any, str], str]) -> list[str]:
    """Each client sends one wrong password, released together by a barrier."""
    barrier = threading.Barrier(len(clients), timeout=TIMEOUT)
    results: list[str] = ["no answer"] * len(clients)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = attempt(clients[i], f"wrong-guess-{i}")
        except Exception as exc:  # reported through the results, never swallowed
            results[i] = f"error: {exc!r}"

    threads = [threading.Thread(target=run, args=(i,), daemon=True)
               for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a client hung"
    return results


# -- item 15 ------------------------------------------------------------------------------


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("door", sorted(DOORS))
def test_parallel_guesses_check_no_more_passwords_than_the_block_threshold(
        tmp_path: Path, ca: trustme.CA, loop_kind: str, door: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Outside testing saw 29 passwords checked from one address where the limit was 10.
    Attempts in flight now count: at most 10 are verified, the others are refused as
    blocked, and the address stays blocked even for the right password; another address
    is not affected."""
    caplog.set_level(logging.INFO, logger="mailkeep")
    gen = _daemon(tmp_path, ca, loop_kind, security={
        "auth_failures_before_delay": 1000, "auth_failures_before_block": BLOCK_AFTER,
        "auth_block_seconds": 600, "max_connections_per_ip": 4 * PARALLEL})
    d = next(gen)
    try:
        spec = DOORS[door]
        clients = [spec.prepare(d, "127.0.0.1") for _ in range(PARALLEL)]
        results = _all_at_once(clients, spec.attempt)
        checked = results.count(CHECKED)
        blocked = results.count(BLOCKED)
        assert checked + blocked == PARALLEL, results
        assert 1 <= checked <= BLOCK_AFTER, results
        # The daemon's side agrees: one "auth failed" line per password actually verified.
        verified = [r for r in caplog.records if "auth failed" in r.getMessage()]
        assert len(verified) == checked, [r.getMessage() for r in verified]
        for c in clients:
            spec.close(c)

        # The address is blocked now: even bob's real password is not checked from it.
        again = spec.prepare(d, "127.0.0.1")
        assert spec.attempt(again, USERS["bob"][0]) == BLOCKED
        spec.close(again)
        # The real user elsewhere is never locked out.
        other = spec.prepare(d, "127.0.0.2")
        assert spec.attempt(other, USERS["bob"][0]) == ACCEPTED
        spec.close(other)
    finally:
        gen.close()


@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_burst_of_good_logins_from_one_address_is_never_refused(
        tmp_path: Path, ca: trustme.CA, door: str) -> None:
    """Bounding attempts in flight must not punish honest clients: an office behind one NAT
    address logging in 20 times at once (default throttle settings) gets 20 logins, none
    delayed into a refusal, none counted as a failure."""
    gen = _daemon(tmp_path, ca, "asyncio", security={"max_connections_per_ip": 4 * PARALLEL},
                  imap={"max_connections_per_user_ip": 4 * PARALLEL})
    d = next(gen)
    try:
        spec = DOORS[door]
        clients = [spec.prepare(d, "127.0.0.1") for _ in range(PARALLEL)]
        barrier = threading.Barrier(len(clients), timeout=TIMEOUT)
        results: list[str] = ["no answer"] * len(clients)

        def run(i: int) -> None:
            try:
                barrier.wait()
                results[i] = spec.attempt(clients[i], USERS["bob"][0])
            except Exception as exc:
                results[i] = f"error: {exc!r}"

        threads = [threading.Thread(target=run, args=(i,), daemon=True)
                   for i in range(len(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(3 * TIMEOUT)
        if door == "pop3":  # one maildrop: the others are told it is in use, not blocked
            assert results.count(ACCEPTED) == 1 and BLOCKED not in results, results
        else:
            assert results == [ACCEPTED] * PARALLEL, results
        assert d.daemon is not None and d.daemon.services is not None
        assert d.daemon.services.throttle.check("127.0.0.1")[1] == 0.0  # no failures
        for c in clients:
            spec.close(c)
    finally:
        gen.close()


# -- item 17 ------------------------------------------------------------------------------


def _login(c: RawImap, user: str = "bob") -> tuple[str, bytes]:
    r = c.command(f'LOGIN {user} "{password(user)}"')
    return r.status, r.text


def _fresh(d: RunningDaemon, source: str) -> RawImap:
    c = RawImap.tls(d, source=source, timeout=TIMEOUT)
    c.greeting()
    return c


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_imap_sessions_are_limited_per_user_and_client_address(
        tmp_path: Path, ca: trustme.CA, loop_kind: str) -> None:
    gen = _daemon(tmp_path, ca, loop_kind, imap={"max_connections_per_user_ip": 2,
                                                 "max_connections_per_user": 3})
    d = next(gen)
    try:
        first = session(d, select=None, source="127.0.0.1")
        second = session(d, select="INBOX", source="127.0.0.1")

        # A third session of bob from the same address: refused with [LIMIT] (RFC 5530)...
        third = _fresh(d, "127.0.0.1")
        status, text = _login(third)
        assert status == "NO" and text.startswith(b"[LIMIT]"), text
        # ...and the connection stays usable, still not logged in.
        assert third.command("SELECT INBOX").status == "BAD"
        assert third.command("NOOP").status == "OK"

        # From another address bob may log in (2 + 1 of an overall 3).
        elsewhere = session(d, select="INBOX", source="127.0.0.2")
        # A fourth session overall, from yet another address: the per-user backstop.
        fourth = _fresh(d, "127.0.0.3")
        status, text = _login(fourth)
        assert status == "NO" and text.startswith(b"[LIMIT]"), text
        assert d.daemon is not None and d.daemon.services is not None
        counter = d.daemon.services.imap_sessions
        assert counter.count("bob") == 3
        assert counter.count("bob", "127.0.0.1") == 2

        # Other users are counted on their own, from the crowded address too.
        alice = session(d, "alice", select="INBOX", source="127.0.0.1")

        # LOGOUT frees a slot: the waiting connection from 127.0.0.1 now gets in.
        assert first.command("LOGOUT").status == "OK"
        first.close()
        assert eventually(lambda: counter.count("bob", "127.0.0.1") == 1)
        status, text = _login(third)
        assert status == "OK", text
        assert third.command("SELECT INBOX").status == "OK"
        # Three again in all: 127.0.0.3 is still over the per-user cap.
        status, text = _login(fourth)
        assert status == "NO" and text.startswith(b"[LIMIT]"), text

        for c in (second, third, elsewhere, fourth, alice):
            c.close()
        assert eventually(lambda: counter.count("bob") == 0 and counter.count("alice") == 0)
    finally:
        gen.close()
