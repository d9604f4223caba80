"""Live reload against a real `mailkeep serve` process: SIGHUP and `mailkeep reload` re-read
the whole configuration; listeners come and go, limits change, sessions stay; a broken
configuration is refused with every problem and the running one keeps serving."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.daemon import (
    HOSTNAME,
    USERS,
    RunningDaemon,
    start_process_daemon,
    write_config,
)
from tests.support.wait import eventually

# Every wait below is a bound, never a measurement.
WAIT = 30.0


def mk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def status(d: RunningDaemon) -> dict[str, Any]:
    try:
        data = json.loads((d.data_dir / "reload-status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    assert isinstance(data, dict)
    return data


def ready_ports(d: RunningDaemon) -> dict[str, int]:
    bound = json.loads((d.root / "ready.json").read_text())["listeners"]
    return {name: int(addrs[0].rsplit(":", 1)[1]) for name, addrs in bound.items()}


def pid_file(d: RunningDaemon) -> Path:
    return d.data_dir / "mailkeep.pid"


def reloadable(d: RunningDaemon, pid_path: Path | None = None) -> None:
    """The ready file comes first; SIGHUP is handled once the pid file is there."""
    path = pid_path or pid_file(d)
    assert d.proc is not None
    assert eventually(lambda: path.exists() and path.read_text().strip() == str(d.proc.pid),
                      WAIT), "no pid file"


def sighup(d: RunningDaemon) -> dict[str, Any]:
    """Signal the daemon and wait for the outcome of the reload that follows."""
    assert d.proc is not None
    before = status(d).get("generation", 0)
    d.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: status(d).get("generation", 0) > before, WAIT), status(d)
    return status(d)


def connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def smtp_line(sock: socket.socket) -> bytes:
    """One reply line (the tests' replies are single lines)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def raw_smtp(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, smtp_line(sock)


@pytest.fixture
def running(tmp_path: Path, ca: trustme.CA) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca, imap_listeners=True,
                          security={"max_connections_per_ip": 3})
    d = start_process_daemon(config, ca)
    try:
        reloadable(d)
        yield d
    finally:
        d.stop()


def test_reload_adds_a_listener_that_serves(tmp_path: Path, ca: trustme.CA) -> None:
    d = start_process_daemon(write_config(tmp_path, ca), ca)
    try:
        reloadable(d)
        assert status(d)["generation"] == 0
        write_config(tmp_path, ca, imap_listeners=True)
        outcome = sighup(d)
        assert outcome["status"] == "applied", outcome
        assert any(c.startswith("listener imaps added") for c in outcome["changes"])
        ports = ready_ports(d)
        assert ports["submission"] == d.submission_port  # kept its socket
        d.ports.update(ports)
        with d.imaps() as imap:
            imap.login("alice", USERS["alice"][0])
            assert imap.select("INBOX")[0] == "OK"
            imap.logout()
        with d.smtp() as smtp:
            smtp.login("bob", USERS["bob"][0])
    finally:
        d.stop()


def test_removed_listener_closes_its_port_but_its_session_goes_on(
        running: RunningDaemon, tmp_path: Path, ca: trustme.CA) -> None:
    d = running
    imap = d.imaps()
    try:
        imap.login("alice", USERS["alice"][0])
        assert imap.select("INBOX")[0] == "OK"
        write_config(tmp_path, ca, security={"max_connections_per_ip": 3})  # no IMAP
        outcome = sighup(d)
        assert outcome["status"] == "applied", outcome
        assert any(c.startswith("listener imaps removed") for c in outcome["changes"])
        assert "imaps" not in ready_ports(d)
        assert connect_refused(d.imaps_port)
        assert connect_refused(d.imap_port)
        # The session accepted before the reload works to the end.
        assert imap.noop()[0] == "OK"
        assert imap.select("INBOX")[0] == "OK"
        assert imap.status("INBOX", "(MESSAGES)")[0] == "OK"
        assert imap.logout()[0] == "BYE"
    finally:
        with contextlib.suppress(OSError):  # after LOGOUT it is closed already
            imap.shutdown()
    with d.smtp() as smtp:  # the doors kept are still open
        smtp.login("alice", USERS["alice"][0])


def test_connection_limit_per_ip_changes_on_reload(
        running: RunningDaemon, tmp_path: Path, ca: trustme.CA) -> None:
    d = running
    held: list[socket.socket] = []
    try:
        for _ in range(3):
            sock, greeting = raw_smtp(d.submission_port)
            held.append(sock)
            assert greeting.startswith(b"220 "), greeting
        sock, line = raw_smtp(d.submission_port)  # one past the limit of 3
        sock.close()
        assert line.startswith(b"421 "), line

        write_config(tmp_path, ca, imap_listeners=True, security={"max_connections_per_ip": 5})
        outcome = sighup(d)
        assert outcome["status"] == "applied", outcome
        assert "security.max_connections_per_ip: 3 -> 5" in outcome["changes"]
        for _ in range(2):  # at the new limit
            sock, greeting = raw_smtp(d.submission_port)
            held.append(sock)
            assert greeting.startswith(b"220 "), greeting
        sock, line = raw_smtp(d.submission_port)  # one past it
        sock.close()
        assert line.startswith(b"421 "), line

        # Lowered below what is open: nobody is dropped, newcomers are refused.
        write_config(tmp_path, ca, imap_listeners=True, security={"max_connections_per_ip": 1})
        assert sighup(d)["status"] == "applied"
        sock, line = raw_smtp(d.submission_port)
        sock.close()
        assert line.startswith(b"421 "), line
        for sock in held:
            sock.sendall(b"NOOP\r\n")
            assert smtp_line(sock).startswith(b"250"), "an open session was dropped"
    finally:
        for sock in held:
            sock.close()


def test_broken_config_is_refused_with_every_problem_and_old_one_serves(
        running: RunningDaemon) -> None:
    d = running
    config = d.root / "mailkeep.toml"
    good = config.read_text()
    broken = good.replace('data_dir = "data"', 'data_dir = "data"\nshutdown_grace = "soon"',
                          1).replace('protocol = "imap"\ntls = "implicit"',
                                     'protocol = "imap"\ntls = "implicit"\n'
                                     'cert = "certs/missing.crt"\nkey = "certs/missing.key"', 1)
    assert broken.count("missing.crt") == 1 and "soon" in broken
    config.write_text(broken)

    outcome = sighup(d)
    assert outcome["status"] == "refused", outcome
    errors = "\n".join(outcome["errors"])
    assert "shutdown_grace" in errors
    assert "listeners.imaps.cert" in errors and "missing.crt" in errors
    log = (d.root / "daemon.log").read_text()
    assert "reload 1 refused" in log and "missing.crt" in log
    # The running configuration is untouched: every listener still answers.
    assert ready_ports(d) == d.ports
    with d.imaps() as imap:
        imap.login("alice", USERS["alice"][0])
        imap.logout()
    with d.smtp() as smtp:
        smtp.login("alice", USERS["alice"][0])

    # `mailkeep reload` lists the same problems and does not signal the daemon.
    r = mk("reload", "--config", str(config))
    assert r.returncode == 78, r
    assert "shutdown_grace" in r.stderr and "missing.crt" in r.stderr
    assert status(d)["generation"] == 1


def test_reload_refused_by_the_daemon_when_a_port_is_taken(
        running: RunningDaemon, tmp_path: Path, ca: trustme.CA) -> None:
    """A configuration that checks out but cannot be applied (its new address is taken):
    the daemon refuses it, `mailkeep reload` says why, and nothing changed."""
    d = running
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        write_config(tmp_path, ca, imap_listeners=True, security={"max_connections_per_ip": 3},
                     listeners={"extra": {"protocol": "submission", "tls": "implicit",
                                          "bind": [f"127.0.0.1:{taken}"]}})
        r = mk("reload", "--config", str(tmp_path / "mailkeep.toml"))
    assert r.returncode == 1, r
    assert "refused" in r.stderr and f"listeners.extra.bind[0]: 127.0.0.1:{taken}" in r.stderr
    assert "address already in use" in r.stderr
    assert ready_ports(d) == d.ports
    with d.smtps() as smtp:
        smtp.login("bob", USERS["bob"][0])


def test_mailkeep_reload_end_to_end_through_the_pid_file(tmp_path: Path,
                                                          ca: trustme.CA) -> None:
    config = write_config(tmp_path, ca, extra_top={"pid_file": "run.pid"})
    r = mk("reload", "--config", str(config))
    assert r.returncode == 69, r  # nothing running
    assert "not running" in r.stderr
    d = start_process_daemon(config, ca)
    try:
        reloadable(d, tmp_path / "run.pid")
        assert not pid_file(d).exists()  # the configured place, not the default
        write_config(tmp_path, ca, extra_top={"pid_file": "run.pid"}, pop3_listeners=True,
                     security={"max_connections_per_ip": 7})
        r = mk("reload", "--config", str(config))
        assert r.returncode == 0, r
        assert "reload 1 applied" in r.stdout
        assert "listener pop3s added" in r.stdout
        assert "security.max_connections_per_ip: 20 -> 7" in r.stdout
        d.ports.update(ready_ports(d))
        pop = d.pop3s()
        pop.user("alice")
        assert pop.pass_(USERS["alice"][0]).startswith(b"+OK")
        pop.quit()
        r = mk("reload", "--config", str(config))  # nothing changed: still a success
        assert r.returncode == 0, r
        assert "reload 2 applied" in r.stdout
    finally:
        d.stop()
    assert not (tmp_path / "run.pid").exists()  # removed at stop
    r = mk("reload", "--config", str(config))
    assert r.returncode == 69, r


def test_stale_pid_file_is_not_signalled(tmp_path: Path, ca: trustme.CA) -> None:
    """A pid file left by a crash may name another process by now (here: a sleeper that does
    not hold the spool lock): `mailkeep reload` refuses to signal it."""
    config = write_config(tmp_path, ca)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    with subprocess.Popen(["sleep", "60"]) as sleeper:
        try:
            (data / "mailkeep.pid").write_text(f"{sleeper.pid}\n")
            r = mk("reload", "--config", str(config))
            assert r.returncode == 69, r
            assert "stale pid file" in r.stderr
            assert sleeper.poll() is None  # SIGHUP would have ended it
        finally:
            sleeper.kill()


def test_listener_certificate_changed_by_reload(running: RunningDaemon, ca: trustme.CA) -> None:
    """A listener's own cert/key set by a reload: new connections get it, a TLS session
    opened before goes on with the old one."""
    d = running
    other = ca.issue_cert(HOSTNAME, "127.0.0.1", "other.example.test")
    other.private_key_pem.write_to_path(str(d.root / "certs" / "other.key"))
    other.cert_chain_pems[0].write_to_path(str(d.root / "certs" / "other.crt"))
    config = d.root / "mailkeep.toml"
    header = '[listeners.submissions]\nprotocol = "submission"\ntls = "implicit"\n'
    text = config.read_text()
    assert text.count(header) == 1
    before = served_names(d, d.submissions_port)
    assert "other.example.test" not in before
    with d.smtps() as smtp:
        config.write_text(text.replace(header, header + 'cert = "certs/other.crt"\n'
                                                        'key = "certs/other.key"\n'))
        outcome = sighup(d)
        assert outcome["status"] == "applied", outcome
        assert "listener submissions: cert, key changed (for new connections)" in \
            outcome["changes"]
        assert "other.example.test" in served_names(d, d.submissions_port)
        assert smtp.login("alice", USERS["alice"][0])[0] == 235  # the open one goes on
    assert "other.example.test" not in served_names(d, d.submission_port)  # only that door


def served_names(d: RunningDaemon, port: int) -> set[str]:
    """The DNS names of the certificate the daemon serves on `port` (after STARTTLS on the
    submission port)."""
    ctx = d.client_context()
    if port == d.submission_port:
        with d.smtp() as smtp:
            cert = smtp.sock.getpeercert()  # type: ignore[union-attr]
    else:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
            cert = tls.getpeercert()
    assert cert is not None
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")
def test_reload_after_run_as_gave_up_root(ca: trustme.CA) -> None:
    """Started as root with run_as: the unprivileged daemon still reloads (a listener added,
    served), though the ready file's folder is root's (a warning, not a refusal), and it
    removes its pid file at stop."""
    root = Path(tempfile.mkdtemp(prefix="mailkeep-reload-", dir="/var/tmp"))
    try:
        root.chmod(0o755)
        config = write_config(root, ca, extra_top={"run_as": "nobody"})
        d = start_process_daemon(config, ca)
        try:
            reloadable(d)
            write_config(root, ca, extra_top={"run_as": "nobody"}, imap_listeners=True)
            r = mk("reload", "--config", str(config))
            assert r.returncode == 0, r
            assert "listener imaps added" in r.stdout
            assert "cannot rewrite the ready file" in r.stderr
            port = int(next(line for line in r.stdout.splitlines()
                            if "listener imaps added" in line).rsplit(":", 1)[1])
            d.ports["imaps"] = port
            with d.imaps() as imap:
                imap.login("alice", USERS["alice"][0])
                imap.logout()
        finally:
            d.stop()
        assert not pid_file(d).exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
