"""Observability without sockets: the metrics object and its exposition, the admin site's
routes, JSON log lines, and the admin listener and log_format in the configuration."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailkeep.config import ConfigError, load_config
from mailkeep.config.exposure import admin_exposure_warnings, is_loopback
from mailkeep.config.template import render
from mailkeep.observe.logformat import JsonFormatter, formatter
from mailkeep.observe.metrics import Metrics, ScrapeSources
from mailkeep.proto import admin_routes
from mailkeep.proto.admin_routes import Endpoint
from mailkeep.proto.http import Answer

# -- metrics ----------------------------------------------------------------------------------


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back by prometheus_client's own parser."""
    body, _ = metrics.render()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_each_daemon_counts_alone() -> None:
    """A registry per Metrics: two daemons in one process never see each other's counts."""
    a, b = Metrics(), Metrics()
    a.login("imap", "ok")
    a.login("imap", "ok")
    b.login("imap", "failed")
    assert value(a, "mailkeep_logins_total", protocol="imap", outcome="ok") == 2
    assert value(a, "mailkeep_logins_total", protocol="imap", outcome="failed") is None
    assert value(b, "mailkeep_logins_total", protocol="imap", outcome="failed") == 1


def test_declared_listeners_start_at_zero() -> None:
    m = Metrics(process=False)
    m.declare_listeners([("submission", "submission", "starttls"), ("web", "admin", "none")])
    assert value(m, "mailkeep_connections_accepted_total", listener="web",
                 protocol="admin") == 0
    assert value(m, "mailkeep_logins_total", protocol="submission", outcome="throttled") == 0
    assert value(m, "mailkeep_messages_accepted_total", listener="submission") == 0
    assert value(m, "mailkeep_tls_handshake_failures_total", listener="submission") == 0
    # Plain HTTP has no handshakes to fail; admin has no logins or messages.
    assert value(m, "mailkeep_tls_handshake_failures_total", listener="web") is None
    assert value(m, "mailkeep_logins_total", protocol="admin", outcome="ok") is None


def test_events_move_their_counters() -> None:
    m = Metrics(process=False)
    m.connection_accepted("imaps", "imap")
    m.connection_refused("apps", "relay", "not_allowed")
    m.tls_handshake("imaps", "TLSv1.3")
    m.tls_handshake("imaps", None)
    m.tls_handshake_failed("imaps")
    m.message_accepted("apps")
    m.message_refused("apps", "relay_denied")
    m.remote_delivery("deferred")
    m.store_error("disk_full")
    for seconds in (0.002, 0.03, 20.0):
        m.local_delivery(seconds)
    got = samples(m)
    assert got[("mailkeep_connections_accepted_total",
                (("listener", "imaps"), ("protocol", "imap")))] == 1
    assert got[("mailkeep_connections_refused_total",
                (("listener", "apps"), ("protocol", "relay"), ("reason", "not_allowed")))] == 1
    assert got[("mailkeep_tls_handshakes_total",
                (("listener", "imaps"), ("version", "TLSv1.3")))] == 1
    assert got[("mailkeep_tls_handshakes_total",
                (("listener", "imaps"), ("version", "unknown")))] == 1
    assert got[("mailkeep_tls_handshake_failures_total", (("listener", "imaps"),))] == 1
    assert got[("mailkeep_messages_refused_total",
                (("listener", "apps"), ("reason", "relay_denied")))] == 1
    assert got[("mailkeep_remote_deliveries_total", (("outcome", "deferred"),))] == 1
    assert got[("mailkeep_remote_deliveries_total", (("outcome", "failed"),))] == 0
    assert got[("mailkeep_store_errors_total", (("kind", "disk_full"),))] == 1
    assert got[("mailkeep_local_delivery_seconds_count", ())] == 3
    assert got[("mailkeep_local_delivery_seconds_bucket", (("le", "0.0025"),))] == 1
    assert got[("mailkeep_local_delivery_seconds_bucket", (("le", "10.0"),))] == 2
    assert got[("mailkeep_local_delivery_seconds_bucket", (("le", "+Inf"),))] == 3


def test_state_gauges_come_from_the_sources_at_scrape_time() -> None:
    now = [1_000_000.0]
    m = Metrics(clock=lambda: now[0], process=False)
    expires = dt.datetime.fromtimestamp(now[0] + 86400 * 20, dt.UTC)
    queue = [(0, 0.0)]
    m.sources = ScrapeSources(sessions=lambda: {("imaps", "imap"): 3, ("web", "admin"): 1},
                              idle=lambda: 2, queue=lambda: queue[0],
                              certificates=lambda: [("/etc/mk/cert.pem", expires)])
    now[0] += 60
    queue[0] = (4, 125.5)
    got = samples(m)
    assert got[("mailkeep_sessions_open", (("listener", "imaps"), ("protocol", "imap")))] == 3
    assert got[("mailkeep_imap_idle_sessions", ())] == 2
    assert got[("mailkeep_queue_messages", ())] == 4
    assert got[("mailkeep_queue_oldest_age_seconds", ())] == 125.5
    cert = (("certificate", "/etc/mk/cert.pem"),)
    assert got[("mailkeep_certificate_expiry_seconds", cert)] == 86400 * 20 - 60
    assert got[("mailkeep_certificate_not_after_timestamp_seconds", cert)] == \
        expires.timestamp()
    assert got[("mailkeep_start_time_seconds", ())] == 1_000_000.0
    assert got[("mailkeep_uptime_seconds", ())] == 60


def test_every_metric_is_documented() -> None:
    """docs/metrics.md names every mailkeep_ metric the daemon exposes."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    m = Metrics(process=False)
    m.declare_listeners([("s", "submission", "starttls")])
    m.message_refused("s", "sender")
    m.connection_refused("s", "submission", "too_many")
    m.tls_handshake("s", "TLSv1.3")
    body, _ = m.render()
    names = {f.name for f in text_string_to_metric_families(body.decode())
             if f.name.startswith("mailkeep_") and not f.name.endswith("_created")}
    assert len(names) >= 18
    missing = [n for n in sorted(names) if not re.search(rf"\b{n}(_total|_info)?\b", doc)]
    assert not missing


def test_openmetrics_on_request() -> None:
    m = Metrics(process=False)
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    body, content_type = m.render(None)
    assert content_type.startswith("text/plain")


# -- the admin site's routes ------------------------------------------------------------------


@pytest.mark.parametrize(("target", "endpoint"), [
    ("/metrics", Endpoint.METRICS), ("/healthz", Endpoint.HEALTH), ("/readyz", Endpoint.READY),
    ("/metrics?x=1", Endpoint.METRICS), ("http://127.0.0.1:9587/readyz", Endpoint.READY)])
def test_routes(target: str, endpoint: Endpoint) -> None:
    assert admin_routes.route("GET", target) is endpoint
    assert admin_routes.route("HEAD", target) is endpoint


@pytest.mark.parametrize(("method", "target", "status"), [
    ("GET", "/", 404), ("GET", "/metrics/", 404), ("GET", "/../metrics", 404),
    ("GET", "/mail/config-v1.1.xml", 404), ("POST", "/metrics", 405),
    ("DELETE", "/readyz", 405), ("GET", "*", 400)])
def test_everything_else_is_refused(method: str, target: str, status: int) -> None:
    answer = admin_routes.route(method, target)
    assert isinstance(answer, Answer)
    assert answer.status == status
    if status == 405:
        assert ("Allow", "GET, HEAD") in answer.headers


def test_readiness_answers() -> None:
    assert admin_routes.readiness([]).status == 200
    failed = admin_routes.readiness(["mail_dir: /x is not writable: Not a directory",
                                     "directory: sqlite: gone"])
    assert failed.status == 503
    assert failed.body.decode().splitlines() == [
        "not ready:", "- mail_dir: /x is not writable: Not a directory",
        "- directory: sqlite: gone"]


# -- JSON log lines ---------------------------------------------------------------------------


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("mailkeep.auth", logging.WARNING, __file__, 1, message, args,
                             exc_info)


def test_json_line_has_the_text_line_fields() -> None:
    record = _record("conn=%s imap auth ok user=%s peer=%s mechanism=LOGIN", "1a2b000001",
                     "alice", "2001:db8::7")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "WARNING"
    assert out["logger"] == "mailkeep.auth"
    assert out["message"] == ("conn=1a2b000001 imap auth ok user=alice peer=2001:db8::7 "
                              "mechanism=LOGIN")
    assert (out["conn"], out["user"], out["peer"]) == ("1a2b000001", "alice", "2001:db8::7")
    when = dt.datetime.fromisoformat(out["time"])
    assert abs(when.timestamp() - record.created) < 0.001
    # The text line says the same things.
    text = formatter("text").format(record)
    assert text.endswith("WARNING mailkeep.auth: " + out["message"])


def test_json_line_without_connection_and_with_a_traceback() -> None:
    out = json.loads(JsonFormatter().format(_record("queue: %d messages", 3, exc=True)))
    assert out["message"] == "queue: 3 messages"
    assert "conn" not in out and "peer" not in out
    assert "ValueError: boom\nsecond line" in out["exception"]
    # A placeholder is not a value; a word merely ending in conn= is not a field.
    out = json.loads(JsonFormatter().format(_record("close user=- xconn=9 listener=imaps")))
    assert "user" not in out and "conn" not in out and out["listener"] == "imaps"


# -- configuration ----------------------------------------------------------------------------

BASE = """\
hostname = "mail.example.test"
domains = ["example.test"]
data_dir = "data"
[tls]
cert = "c.crt"
key = "c.key"
[listeners.submission]
protocol = "submission"
tls = "starttls"
bind = ["127.0.0.1:587"]
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "mailkeep.toml"
    path.write_text(text)
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_admin_listener_is_plain_http_by_default(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + '[listeners.admin]\nprotocol = "admin"\n'
                                'bind = ["127.0.0.1:9587"]\n')
    (admin,) = [lst for lst in cfg.listeners if lst.protocol == "admin"]
    assert admin.tls == "none"
    assert [str(b) for b in admin.bind] == ["127.0.0.1:9587"]
    assert admin_exposure_warnings(cfg) == []
    cfg = load(tmp_path, BASE + '[listeners.admin]\nprotocol = "admin"\ntls = "implicit"\n'
                                'bind = ["0.0.0.0:9587"]\n')
    assert cfg.listeners[-1].tls == "implicit"
    assert admin_exposure_warnings(cfg) == []  # HTTPS: the operator's choice


@pytest.mark.parametrize(("keys", "problem"), [
    ('tls = "starttls"\nbind = ["127.0.0.1:9587"]', "listeners.admin.tls: HTTP has no STARTTLS"),
    ('tls = "plain"\nbind = ["127.0.0.1:9587"]', "listeners.admin.tls: 'plain' is not one of"),
    ("", "listeners.admin.bind: missing or empty"),
    ('bind = ["127.0.0.1"]', "listeners.admin.bind[0]: '127.0.0.1': not \"host:port\""),
    ('bind = ["127.0.0.1:9587"]\npath = "/metrics"', "listeners.admin.path: unknown key"),
    ('bind = ["127.0.0.1:9587"]\nclients = ["127.0.0.1"]',
     "listeners.admin.clients: only for protocol = 'relay'"),
    ('bind = ["127.0.0.1:9587"]\nauth_groups = ["ops"]',
     "listeners.admin.auth_groups: only for protocol"),
    ('bind = ["127.0.0.1:587"]', "listeners.admin.bind[0]: 127.0.0.1:587 is already used"),
    ('tls = 1\nbind = ["127.0.0.1:9587"]', "listeners.admin.tls: expected a str"),
])
def test_bad_admin_listener_keys(tmp_path: Path, keys: str, problem: str) -> None:
    found = problems(tmp_path, BASE + f'[listeners.admin]\nprotocol = "admin"\n{keys}\n')
    assert any(p.startswith(problem) for p in found), found


@pytest.mark.parametrize(("host", "exposed"), [
    ("127.0.0.1", False), ("127.0.0.53", False), ("[::1]", False), ("localhost", False),
    ("0.0.0.0", True), ("[::]", True), ("192.0.2.7", True), ("mail.example.test", True)])
def test_plain_admin_beyond_loopback_is_warned_about(tmp_path: Path, host: str,
                                                     exposed: bool) -> None:
    cfg = load(tmp_path, BASE + f'[listeners.admin]\nprotocol = "admin"\n'
                                f'bind = ["{host}:9587"]\n')
    warnings = admin_exposure_warnings(cfg)
    assert bool(warnings) is exposed
    if exposed:
        assert warnings[0].startswith("listeners.admin.bind[0]: ")
        assert "plain HTTP" in warnings[0]
    assert is_loopback(host.strip("[]")) is not exposed


def test_log_format(tmp_path: Path) -> None:
    assert load(tmp_path, BASE).log_format == "text"
    assert load(tmp_path, 'log_format = "json"\n' + BASE).log_format == "json"
    assert problems(tmp_path, 'log_format = "xml"\n' + BASE) == [
        "log_format: 'xml' is not one of text, json"]
    assert problems(tmp_path, "log_format = true\n" + BASE) == [
        "log_format: expected a str, got True"]


def test_template_admin_example_parses_when_uncommented(tmp_path: Path) -> None:
    text = render(hostname="mail.example.test", domains=["example.test"], data_dir="data",
                  cert="c.crt", key="c.key", ports=(587, 465))
    start = text.index("# [listeners.admin]")
    block = re.sub(r"^# ?", "", text[start:], flags=re.MULTILINE)
    assert "# log_format = " in text
    cfg = load(tmp_path, text[:start] + block)
    (admin,) = [lst for lst in cfg.listeners if lst.protocol == "admin"]
    assert (admin.tls, [str(b) for b in admin.bind]) == ("none", ["127.0.0.1:9587"])
    assert admin_exposure_warnings(cfg) == []
