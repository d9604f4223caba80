"""relay/routes.py: the [delivery] table, every problem keyed by dotted path, and route lookup."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mailkeep.relay.routes import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_MX_PORT,
    DeliveryConfig,
    MxRoute,
    NameServer,
    SmarthostRoute,
    domain_key,
    parse_delivery,
    parse_name_server,
)

EXAMPLE = """
[delivery]
default_route = "mx"
[delivery.routes.upstream]
type = "smarthost"
host = "smtp.provider.example"
port = 587
tls = "starttls"
[delivery.domains]
"partner.example" = "upstream"
"""


def parse(raw: dict[str, Any], base: Path) -> tuple[DeliveryConfig, list[str]]:
    return parse_delivery(raw, base, hostname="relay.example.test")


def test_the_issue_example(tmp_path: Path) -> None:
    config, problems = parse(tomllib.loads(EXAMPLE)["delivery"], tmp_path)
    assert problems == []
    route = config.route_for("partner.example")
    assert route == SmarthostRoute("upstream", "smtp.provider.example", 587, "starttls")
    assert config.route_for("elsewhere.example") == MxRoute()
    assert config.route_for("PARTNER.Example.") == route  # domains compare case-insensitively
    assert config.helo_name == "relay.example.test"
    assert config.port == DEFAULT_MX_PORT and config.command_timeout == DEFAULT_COMMAND_TIMEOUT


def test_empty_table_is_direct_mx_delivery(tmp_path: Path) -> None:
    config, problems = parse({}, tmp_path)
    assert problems == []
    assert config.route_for("any.test") == MxRoute()
    assert config.tls_policy_for("any.test") == "may"
    assert config.dns_servers == () and config.mta_sts and config.ipv6


def test_tls_policy_defaults_and_raises(tmp_path: Path) -> None:
    raw = {
        "routes": {"up": {"type": "smarthost", "host": "smtp.example"},
                   "loose": {"type": "smarthost", "host": "smtp2.example", "verify": False}},
        "domains": {"a.test": "up", "b.test": "loose", "c.test": "loose"},
        "tls_policy": {"mx.test": "verify", "c.test": "may", "enc.test": "encrypt"},
    }
    config, problems = parse(raw, tmp_path)
    assert problems == []
    assert config.tls_policy_for("a.test") == "verify"      # smarthost default
    assert config.tls_policy_for("b.test") == "encrypt"     # verify = false
    assert config.tls_policy_for("c.test") == "encrypt"     # "may" cannot lower the route's
    assert config.tls_policy_for("mx.test") == "verify"
    assert config.tls_policy_for("enc.test") == "encrypt"
    assert config.tls_policy_for("other.test") == "may"


def test_smarthost_default_ports(tmp_path: Path) -> None:
    raw = {"routes": {m: {"type": "smarthost", "host": "h.example", "tls": m}
                      for m in ("starttls", "implicit", "none")}}
    config, problems = parse(raw, tmp_path)
    assert problems == []
    assert {n: r.port for n, r in config.routes.items() if isinstance(r, SmarthostRoute)} == {
        "starttls": 587, "implicit": 465, "none": 25}


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    raw = {
        "default_route": "nowhere",
        "bogus": 1,
        "port": 70000,
        "connect_timeout": 0,
        "command_timeout": "soon",
        "helo_name": "not a name",
        "dns_servers": ["127.0.0.1:5353", "dns.example", 53],
        "ca_file": "missing.pem",
        "routes": {
            "upstream": {"type": "smarthost", "host": "smtp.example", "port": 0, "tls": "ssl",
                         "colour": "blue"},
            "nohost": {"type": "smarthost"},
            "odd": {"type": "carrier-pigeon"},
            "mx": {"type": "mx"},
            "bad name": {"type": "mx"},
        },
        "domains": {"a.test": "ghost", "not_a..domain": "upstream"},
        "tls_policy": {"b.test": "paranoid"},
    }
    _, problems = parse(raw, tmp_path)
    keys = [p.split(": ", 1)[0] for p in problems]
    assert keys == [
        "delivery.bogus",
        "delivery.routes.upstream.colour",
        "delivery.routes.upstream.tls",
        "delivery.routes.upstream.port",
        "delivery.routes.nohost.host",
        "delivery.routes.odd.type",
        "delivery.routes.mx",
        "delivery.routes.bad name",
        "delivery.default_route",
        'delivery.domains."a.test"',
        'delivery.domains."not_a..domain"',
        'delivery.tls_policy."b.test"',
        "delivery.dns_servers[1]",
        "delivery.dns_servers[2]",
        "delivery.helo_name",
        "delivery.ca_file",
        "delivery.port",
        "delivery.connect_timeout",
        "delivery.command_timeout",
    ], problems
    text = "\n".join(problems)
    assert "starttls, implicit, none" in text and "carrier-pigeon" in text


def test_credentials_only_inside_tls(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("user\npassword\n")
    secret.chmod(0o600)
    raw = {"routes": {"plain": {"type": "smarthost", "host": "smtp.example", "tls": "none",
                                "credentials_file": "secret"}}}
    _, problems = parse(raw, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("delivery.routes.plain.credentials_file: credentials are only")


def test_credentials_file_checks(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    raw = {"routes": {"up": {"type": "smarthost", "host": "smtp.example",
                             "credentials_file": "secret"}}}
    _, problems = parse(raw, tmp_path)
    assert problems and "cannot read" in problems[0]
    secret.write_text("user\npassword\n")
    secret.chmod(0o644)
    _, problems = parse(raw, tmp_path)
    assert problems == [f"delivery.routes.up.credentials_file: {secret} is readable by other "
                        f"users (mode 0644): chmod 600 {secret}"]
    secret.chmod(0o640)
    config, problems = parse(raw, tmp_path)
    assert problems == []
    route = config.routes["up"]
    assert isinstance(route, SmarthostRoute) and route.credentials_file == secret
    assert "password" not in repr(config)


def test_a_demanding_domain_cannot_ride_a_weak_route(tmp_path: Path) -> None:
    raw = {
        "routes": {"plain": {"type": "smarthost", "host": "a.example", "tls": "none"},
                   "loose": {"type": "smarthost", "host": "b.example", "verify": False}},
        "domains": {"p.test": "plain", "l.test": "loose"},
        "tls_policy": {"p.test": "encrypt", "l.test": "verify"},
    }
    _, problems = parse(raw, tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == ['delivery.tls_policy."l.test"',
                                                       'delivery.tls_policy."p.test"']
    raw["default_route"] = "plain"
    raw["tls_policy"] = {"other.test": "verify"}  # follows the default route
    _, problems = parse(raw, tmp_path)
    assert problems and problems[0].startswith('delivery.tls_policy."other.test"')


def test_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("x")
    config, problems = parse({"ca_file": "certs/ca.pem"}, tmp_path)
    assert problems == [] and config.ca_file == tmp_path / "certs" / "ca.pem"


def test_idn_domains_are_stored_as_a_labels(tmp_path: Path) -> None:
    config, problems = parse({"domains": {"bücher.test": "mx"},
                              "tls_policy": {"BÜCHER.test": "verify"}}, tmp_path)
    assert problems == []
    assert list(config.domains) == ["xn--bcher-kva.test"]
    assert config.tls_policy_for("bücher.test") == "verify"
    assert config.tls_policy_for("xn--bcher-kva.test") == "verify"


@pytest.mark.parametrize(("text", "server"), [
    ("192.0.2.53", NameServer("192.0.2.53", 53)),
    ("127.0.0.1:5353", NameServer("127.0.0.1", 5353)),
    ("2001:db8::53", NameServer("2001:db8::53", 53)),
    ("[2001:db8::53]:5353", NameServer("2001:db8::53", 5353)),
])
def test_name_servers(text: str, server: NameServer) -> None:
    assert parse_name_server(text) == server


@pytest.mark.parametrize("text", ["dns.example", "127.0.0.1:0", "127.0.0.1:65536", "[::1",
                                  "1.2.3.4:53:53"])
def test_bad_name_servers(text: str) -> None:
    with pytest.raises(ValueError):
        parse_name_server(text)


@pytest.mark.parametrize("domain", ["127.0.0.1", "192.0.2.1", "2130706433", "mail.42"])
def test_an_ip_address_is_not_a_domain_to_route(tmp_path: Path, domain: str) -> None:
    # RFC 1123 §2.1: an all-numeric top label is an address (RCPT refuses such recipients,
    # so a route or TLS policy keyed by one could never apply).
    _, problems = parse({"domains": {domain: "mx"}, "tls_policy": {domain: "verify"}},
                        tmp_path)
    assert len(problems) == 2 and all("IP address" in p for p in problems), problems


def test_domain_key() -> None:
    assert domain_key("Example.TEST.") == "example.test"
    with pytest.raises(ValueError):
        domain_key("")
    with pytest.raises(ValueError):
        domain_key("a..b")
    with pytest.raises(ValueError):
        domain_key("x" * 64 + ".test")


def test_helo_defaults_to_the_host_name(tmp_path: Path) -> None:
    config, _ = parse_delivery({}, tmp_path)
    assert config.helo_name  # socket.getfqdn() when no hostname is given
    config, _ = parse_delivery({"helo_name": "Out.Example.Test."}, tmp_path, hostname="x.test")
    assert config.helo_name == "out.example.test"


def test_not_running_as_root_bypasses_nothing(tmp_path: Path) -> None:
    # The permission check reads the mode bits, not access(): it holds for root too.
    secret = tmp_path / "s"
    secret.write_text("u\np\n")
    secret.chmod(0o604)
    raw = {"routes": {"up": {"type": "smarthost", "host": "h.example",
                             "credentials_file": "s"}}}
    _, problems = parse(raw, tmp_path)
    assert problems and "readable by other users" in problems[0]
    assert os.stat(secret).st_mode & 0o004
