"""The admin listener on the real daemon: /metrics counts what real clients did (parsed with
prometheus_client's own parser), /readyz follows the Maildir root, the listeners and the user
directory, and everything else is refused. HTTP through urllib, and curl where installed."""

from __future__ import annotations

import datetime as dt
import imaplib
import json
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import (
    DOMAIN,
    USERS,
    RunningDaemon,
    start_process_daemon,
    start_thread_daemon,
    write_config,
)
from tests.support.wait import eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

RELAY_APPS = {"protocol": "relay", "tls": "none", "clients": ["127.0.0.1/32"],
              "senders": [f"@{DOMAIN}"]}
# A connector for a network the tests are not in: every connection is refused at accept.
RELAY_OUTSIDERS = {"protocol": "relay", "tls": "none", "clients": ["192.0.2.0/24"],
                   "senders": [f"@{DOMAIN}"]}


def http_get(d: RunningDaemon, path: str, *, listener: str = "admin",
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) from urllib; HTTP errors are answers too."""
    request = urllib.request.Request(f"http://127.0.0.1:{d.ports[listener]}{path}",
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(d: RunningDaemon) -> Samples:
    status, headers, body = http_get(d, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def one(samples: Samples, name: str, **labels: str) -> float:
    """A sample that must be there (a missing series is not a zero)."""
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of `name` that carry `labels` (whatever else they carry)."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def message(to: str, sender: str = f"alice@{DOMAIN}") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, "metrics"
    msg.set_content("counted\n")
    return msg


@pytest.fixture
def admin_daemon(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True,
                          listeners={"apps": RELAY_APPS, "outsiders": RELAY_OUTSIDERS,
                                     "admin": {"protocol": "admin"}})
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        running.stop()


def test_metrics_count_what_clients_did(admin_daemon: RunningDaemon) -> None:
    d = admin_daemon
    alice_pw, bob_pw = USERS["alice"][0], USERS["bob"][0]
    # Three good logins (IMAPS, POP3S, submission on 465) and two bad ones.
    idler = d.imaps()
    idler.login("alice", alice_pw)
    with pytest.raises(imaplib.IMAP4.error):
        bad = d.imaps()
        try:
            bad.login("alice", "wrong-password")
        finally:
            bad.shutdown()
    pop = d.pop3s()
    pop.user("bob")
    pop.pass_(bob_pw)
    pop.quit()
    bad_pop = d.pop3s()
    bad_pop.user("bob")
    with pytest.raises(poplib.error_proto):
        bad_pop.pass_("wrong-password")
    bad_pop.close()
    # Two messages accepted (submission, the application connector), two refused.
    with d.smtps() as s:
        s.login("alice", alice_pw)
        s.send_message(message(f"bob@{DOMAIN}"))
        # Refused inside TLS: alice does not own bob's address (counted as "sender").
        assert s.mail(f"bob@{DOMAIN}")[0] == 553
    with smtplib.SMTP("127.0.0.1", d.ports["apps"], timeout=10) as s:
        s.send_message(message(f"bob@{DOMAIN}", sender=f"noreply@{DOMAIN}"))
    with smtplib.SMTP("127.0.0.1", d.ports["apps"], timeout=10) as s:
        s.ehlo()
        assert s.mail(f"noreply@{DOMAIN}")[0] == 250
        code, _ = s.rcpt("someone@elsewhere.test")
        assert code == 554
    # One connection refused at accept (not in the connector's clients), one STARTTLS.
    with socket.create_connection(("127.0.0.1", d.ports["outsiders"]), timeout=10) as raw:
        assert raw.recv(512).startswith(b"554 5.7.1")
    with d.smtp() as s:  # STARTTLS done
        assert s.noop()[0] == 250
    # One IMAP session in IDLE.
    idler.select("INBOX")
    idler.send(b"i1 IDLE\r\n")
    assert idler.readline().startswith(b"+ ")

    try:
        assert eventually(lambda: total(scrape(d), "mailkeep_local_delivery_seconds_count")
                          == 2, timeout=10)
        assert eventually(lambda: total(scrape(d), "mailkeep_sessions_open",
                                        listener="imaps") == 1, timeout=10)
        m = scrape(d)
        for protocol, ok, failed in (("imap", 1, 1), ("pop3", 1, 1), ("submission", 1, 0)):
            assert one(m, "mailkeep_logins_total", protocol=protocol, outcome="ok") == ok
            assert one(m, "mailkeep_logins_total", protocol=protocol, outcome="failed") \
                == failed
            assert one(m, "mailkeep_logins_total", protocol=protocol,
                       outcome="throttled") == 0
        assert total(m, "mailkeep_logins_total", outcome="ok") == 3
        assert total(m, "mailkeep_logins_total", outcome="failed") == 2
        assert one(m, "mailkeep_messages_accepted_total", listener="submissions") == 1
        assert one(m, "mailkeep_messages_accepted_total", listener="apps") == 1
        assert one(m, "mailkeep_messages_accepted_total", listener="submission") == 0
        assert one(m, "mailkeep_messages_refused_total", listener="apps",
                   reason="relay_denied") == 1
        assert one(m, "mailkeep_messages_refused_total", listener="submissions",
                   reason="sender") == 1
        assert total(m, "mailkeep_messages_refused_total") == 2
        assert one(m, "mailkeep_local_delivery_seconds_count") == 2
        assert one(m, "mailkeep_local_delivery_seconds_bucket", le="+Inf") == 2
        for listener, count in (("imaps", 2), ("pop3s", 2), ("submissions", 1),
                                ("submission", 1), ("apps", 2), ("outsiders", 0),
                                ("imap", 0), ("pop3", 0)):
            assert total(m, "mailkeep_connections_accepted_total", listener=listener) \
                == count, listener
        assert total(m, "mailkeep_connections_accepted_total", listener="admin") >= 1
        assert one(m, "mailkeep_connections_refused_total", listener="outsiders",
                   protocol="relay", reason="not_allowed") == 1
        assert total(m, "mailkeep_connections_refused_total") == 1
        # Implicit TLS and STARTTLS handshakes, each under its listener and TLS version.
        for listener, count in (("imaps", 2), ("pop3s", 2), ("submissions", 1),
                                ("submission", 1), ("apps", 0)):
            assert total(m, "mailkeep_tls_handshakes_total", listener=listener) == count
        assert set(ls for (n, ls), v in m.items() if n == "mailkeep_tls_handshakes_total"
                   for k, ls in ls if k == "version") == {"TLSv1.3"}
        assert total(m, "mailkeep_tls_handshake_failures_total") == 0
        assert one(m, "mailkeep_imap_idle_sessions") == 1
        assert one(m, "mailkeep_sessions_open", listener="imaps", protocol="imap") == 1
        assert one(m, "mailkeep_sessions_open", listener="admin", protocol="admin") == 1
        assert eventually(lambda: one(scrape(d), "mailkeep_queue_messages") == 0)
        assert one(m, "mailkeep_remote_deliveries_total", outcome="delivered") == 0
        assert total(m, "mailkeep_store_errors_total") == 0
        # The certificate being served, and when it expires.
        cert_path = d.root / "certs" / "mailkeep.crt"
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        left = one(m, "mailkeep_certificate_expiry_seconds", certificate=str(cert_path))
        expected = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
        assert abs(left - expected) < 3600
        assert one(m, "mailkeep_certificate_not_after_timestamp_seconds",
                   certificate=str(cert_path)) == cert.not_valid_after_utc.timestamp()
        assert 0 <= one(m, "mailkeep_uptime_seconds") < 3600
        assert one(m, "mailkeep_build_info", version="0.1.0") == 1
        assert one(m, "process_open_fds") > 0
    finally:
        idler.send(b"DONE\r\n")
        assert idler.readline().startswith(b"i1 OK")
        idler.logout()
    assert eventually(lambda: one(scrape(d), "mailkeep_imap_idle_sessions") == 0)


def test_health_ready_and_nothing_else(admin_daemon: RunningDaemon) -> None:
    d = admin_daemon
    assert http_get(d, "/healthz")[::2] == (200, b"ok\n")
    assert http_get(d, "/readyz")[::2] == (200, b"ready\n")
    status, headers, body = http_get(d, "/metrics", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 1000
    for path in ("/", "/metrics/", "/mail/config-v1.1.xml", "/readyz/../metrics", "/admin"):
        assert http_get(d, path)[0] == 404, path
    status, headers, _ = http_get(d, "/metrics", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    # Prometheus asks for OpenMetrics and gets it.
    request = urllib.request.Request(
        f"http://127.0.0.1:{d.ports['admin']}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
        assert answer.read().rstrip().endswith(b"# EOF")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_scrapes_over_https(tmp_path: Path, ca: trustme.CA) -> None:
    """tls = "implicit": HTTPS with the listener's certificate, verified by curl."""
    config = write_config(tmp_path, ca, listeners={
        "admin": {"protocol": "admin", "tls": "implicit"}})
    d = start_thread_daemon(config, ca)
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        url = f"https://127.0.0.1:{d.ports['admin']}"
        out = subprocess.run(["curl", "-sS", "--fail", "--max-time", "10", "--cacert",
                              str(ca_file), f"{url}/metrics"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        families = {f.name for f in text_string_to_metric_families(out)}
        assert {"mailkeep_logins", "mailkeep_tls_handshakes", "mailkeep_queue_messages"} \
            <= families
        ready = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(ca_file),
                                "-o", "/dev/null", "-w", "%{http_code}", f"{url}/readyz"],
                               capture_output=True, text=True, timeout=30)
        assert ready.stdout == "200"
        plain = subprocess.run(["curl", "-sS", "--max-time", "10",
                                f"http://127.0.0.1:{d.ports['admin']}/healthz"],
                               capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0  # HTTPS only: no plain-HTTP answer on that port
        m = scrape_https(d, ca)
        assert total(m, "mailkeep_tls_handshakes_total", listener="admin") >= 2
    finally:
        d.stop()


def scrape_https(d: RunningDaemon, ca: trustme.CA) -> Samples:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"https://127.0.0.1:{d.ports['admin']}/metrics"
    with urllib.request.urlopen(url, timeout=10, context=context) as answer:
        body = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


# -- readiness ----------------------------------------------------------------------------------


def not_ready(d: RunningDaemon) -> str:
    status, _, body = http_get(d, "/readyz")
    assert status == 503, body
    return body.decode()


def test_readyz_follows_the_maildir_root(admin_daemon: RunningDaemon) -> None:
    d = admin_daemon
    assert http_get(d, "/readyz")[0] == 200
    mail = d.data_dir / "mail"
    assert mail.is_dir()  # the probe made the root, as a delivery would
    # Unreachable whoever we are (root included): the root replaced by a file.
    mail.rename(mail.with_name("mail.away"))
    mail.write_text("not a directory\n")
    try:
        assert not_ready(d).splitlines() == [
            "not ready:", f"- mail_dir: {mail} is not writable: Not a directory"]
        # Mail is still accepted (spooled); its delivery fails, counted as a store error.
        with d.smtps() as s:
            s.login("alice", USERS["alice"][0])
            s.send_message(message(f"bob@{DOMAIN}"))
        assert eventually(lambda: total(scrape(d), "mailkeep_store_errors_total",
                                        kind="io") >= 1, timeout=10)
        assert one(scrape(d), "mailkeep_queue_messages") == 1
    finally:
        mail.unlink()
        mail.with_name("mail.away").rename(mail)
    assert http_get(d, "/readyz")[::2] == (200, b"ready\n")
    # No trace of the probes is left behind.
    assert not [p for p in mail.iterdir() if p.name.startswith(".mailkeep-ready")]


@pytest.mark.skipif(__import__("os").geteuid() == 0,
                    reason="root writes into a read-only directory anyway")
def test_readyz_sees_a_read_only_maildir_root(admin_daemon: RunningDaemon) -> None:
    d = admin_daemon
    assert http_get(d, "/readyz")[0] == 200
    mail = d.data_dir / "mail"
    mail.chmod(0o500)
    try:
        assert "- mail_dir: " in not_ready(d)
        assert "Permission denied" in not_ready(d)
    finally:
        mail.chmod(0o700)
    assert http_get(d, "/readyz")[0] == 200


def test_readyz_names_a_listener_that_stopped(admin_daemon: RunningDaemon) -> None:
    d = admin_daemon
    assert d.daemon is not None
    (imaps,) = [lst for lst in d.daemon.listeners if lst.config.name == "imaps"]
    d.run_coro(imaps.close())
    body = not_ready(d)
    assert "- listeners.imaps: 0 of 1 addresses bound and accepting" in body
    assert "listeners.pop3s" not in body


def test_readyz_follows_an_sql_directory(tmp_path: Path, ca: trustme.CA) -> None:
    """SQLite: the database file gone means logins fail; /readyz says so, and recovers."""
    from tests.support.directory_backends import make_backend, run  # noqa: PLC0415
    from tests.support.directory_data import PEOPLE  # noqa: PLC0415

    config = write_config(tmp_path, ca, listeners={"admin": {"protocol": "admin"}})
    setup = run(make_backend("sqlite", tmp_path))
    text = config.read_text().replace('backend = "file"\npath = "users.toml"',
                                      setup.directory_toml().removeprefix("[directory]\n"))
    config.write_text(text)
    d = start_thread_daemon(config, ca)
    try:
        assert http_get(d, "/readyz")[0] == 200
        db = tmp_path / "users.sqlite3"
        db.rename(tmp_path / "users.sqlite3.away")
        try:
            body = not_ready(d)
            assert "- directory: sqlite " in body
            assert "mail_dir" not in body
        finally:
            (tmp_path / "users.sqlite3.away").rename(db)
        assert http_get(d, "/readyz")[0] == 200
        person = PEOPLE[0]
        with d.smtps() as s:  # and logins work again
            assert s.login(person.name, person.password)[0] == 235
    finally:
        d.stop()


# -- a real process: throttled logins, JSON log lines --------------------------------------------


def test_process_daemon_counts_throttled_logins_and_logs_json(tmp_path: Path,
                                                             ca: trustme.CA) -> None:
    """`mailkeep serve` with log_format = "json": two wrong passwords block the address, the
    third attempt (the right password) is throttled; /metrics says 1 ok (from elsewhere),
    2 failed, 1 throttled, and every line on stderr is one JSON object whose fields name the
    connection, the peer and the user, without the passwords."""
    config = write_config(tmp_path, ca, imap_listeners=True,
                          extra_top={"log_format": "json", "log_level": "info"},
                          security={"auth_failures_before_delay": 100,
                                    "auth_failures_before_block": 2,
                                    "auth_block_seconds": 600},
                          listeners={"admin": {"protocol": "admin"}})
    d = start_process_daemon(config, ca)
    alice_pw = USERS["alice"][0]
    try:
        for wrong in ("wrong-password-1", "wrong-password-2"):
            c = d.imaps()
            with pytest.raises(imaplib.IMAP4.error):
                c.login("alice", wrong)
            c.shutdown()
        blocked = d.imaps()
        with pytest.raises(imaplib.IMAP4.error):
            blocked.login("alice", alice_pw)  # right password, blocked address
        blocked.shutdown()
        # Another client address is not blocked: its login counts as ok.
        context = d.client_context()
        with socket.create_connection(("127.0.0.1", d.ports["imaps"]), timeout=10,
                                      source_address=("127.0.0.2", 0)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(512).startswith(b"* OK")
            tls.sendall(f'a1 LOGIN alice "{alice_pw}"\r\n'.encode())
            answer = b""
            while b"a1 " not in answer:
                chunk = tls.recv(4096)
                assert chunk
                answer += chunk
            assert b"a1 OK" in answer
            tls.sendall(b"a2 LOGOUT\r\n")

        def curl_samples() -> Samples:
            out = subprocess.run(
                ["curl", "-sS", "--fail", "--max-time", "10",
                 f"http://127.0.0.1:{d.ports['admin']}/metrics"],
                capture_output=True, text=True, timeout=30, check=True).stdout
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(out)
                    for s in family.samples}

        # curl from another process where installed (scripts/check.sh installs it).
        m = curl_samples() if shutil.which("curl") is not None else scrape(d)
        assert one(m, "mailkeep_logins_total", protocol="imap", outcome="ok") == 1
        assert one(m, "mailkeep_logins_total", protocol="imap", outcome="failed") == 2
        assert one(m, "mailkeep_logins_total", protocol="imap", outcome="throttled") == 1
        assert total(m, "mailkeep_connections_accepted_total", listener="imaps") == 4
    finally:
        d.stop()
    text = (tmp_path / "daemon.log").read_text()
    assert "wrong-password" not in text and alice_pw not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert lines and all(set(rec) >= {"time", "level", "logger", "message"} for rec in lines)
    assert all(dt.datetime.fromisoformat(rec["time"]).tzinfo is not None for rec in lines)
    failed = [rec for rec in lines if " auth failed " in rec["message"]]
    assert len(failed) == 2
    assert failed[0]["level"] == "WARNING"
    assert failed[0]["peer"] == "127.0.0.1"
    assert failed[0]["conn"] and failed[0]["message"].startswith(f"conn={failed[0]['conn']} ")
    throttled = [rec for rec in lines if "auth refused" in rec["message"]]
    assert len(throttled) == 1 and throttled[0]["conn"]
    (ok,) = [rec for rec in lines if " auth ok " in rec["message"]]
    assert (ok["user"], ok["peer"], ok["level"]) == ("alice", "127.0.0.2", "INFO")


# -- mailkeep health ---------------------------------------------------------------------------


def pin_ports(config: Path, ports: dict[str, int]) -> Path:
    """A copy of `config` whose listeners bind the ports the daemon actually bound (health
    probes the configured addresses; the tests bind port 0)."""
    section = ""
    out = []
    for line in config.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]").removeprefix("listeners.").strip('"')
        elif line.split("=")[0].strip().strip('"') == "bind" and section in ports:
            line = f'bind = ["127.0.0.1:{ports[section]}"]'
        out.append(line)
    pinned = config.with_name("pinned.toml")
    pinned.write_text("\n".join(out) + "\n")
    return pinned


def test_mailkeep_health_asks_readyz(tmp_path: Path, ca: trustme.CA) -> None:
    config = write_config(tmp_path, ca, imap_listeners=True, pop3_listeners=True,
                          listeners={"apps": RELAY_APPS, "admin": {"protocol": "admin"}})
    d = start_process_daemon(config, ca)
    try:
        pinned = pin_ports(config, d.ports)

        def health() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mailkeep", "health", "--config",
                                   str(pinned)], capture_output=True, text=True, timeout=60)

        r = health()
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert f"ok admin 127.0.0.1:{d.ports['admin']}: ready" in lines
        assert {line.split()[1] for line in lines if line.startswith("ok ")} == {
            "submission", "submissions", "imaps", "imap", "pop3s", "pop3", "apps", "admin"}
        # The greetings still come, but the Maildirs cannot be written: health says so.
        mail = d.data_dir / "mail"
        mail.rename(mail.with_name("mail.away"))
        mail.write_text("not a directory\n")
        try:
            r = health()
        finally:
            mail.unlink()
            mail.with_name("mail.away").rename(mail)
        assert r.returncode == 1
        (failed,) = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
        assert failed.startswith(f"FAIL admin 127.0.0.1:{d.ports['admin']}: HTTP/1.1 503")
        assert "mail_dir" in failed and "Not a directory" in failed
        assert health().returncode == 0
    finally:
        d.stop()
