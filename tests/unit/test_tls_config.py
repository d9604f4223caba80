"""The [tls] table: [tls.certificates.NAME] (SNI) and [tls.acme], every problem keyed by path."""

from __future__ import annotations

from pathlib import Path

from mailkeep.config import load_config
from mailkeep.config.model import DEFAULT_ACME_DIRECTORY
from mailkeep.config.template import render
from tests.unit.test_config import MINIMAL, keys_of, problems_of, write

IMPLICIT = """
[listeners.subs]
protocol = "submission"
tls = "implicit"
bind = ["127.0.0.1:465"]
"""


def with_tls(extra: str, *, base: str = MINIMAL + IMPLICIT) -> str:
    return base.replace("[listeners.sub]", extra + "\n[listeners.sub]", 1)


def test_sni_certificates_parse(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, with_tls("""
[tls.certificates.example-net]
cert = "certs/net.crt"
key = "certs/net.key"
names = ["Mail.Example.NET.", "*.example.net", "mail.example.net"]

[tls.certificates.org]
cert = "/etc/ssl/org.crt"
key = "/etc/ssl/org.key"
""")))
    net, org = cfg.tls.certificates
    assert (net.name, net.cert, net.key) == ("example-net", tmp_path / "certs/net.crt",
                                             tmp_path / "certs/net.key")
    assert net.names == ("mail.example.net", "*.example.net")  # normalised, deduplicated
    assert (org.cert, org.names) == (Path("/etc/ssl/org.crt"), None)  # None: its own SANs
    assert cfg.tls.acme is None
    assert cfg.tls.cert == tmp_path / "certs/mailkeep.crt"  # the default is unchanged


def test_every_sni_problem_keyed_by_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, with_tls("""
[tls.certificates.a]
cert = "a.crt"
names = ["mail.example.net", "*.com", "bad name", 7, "m*.example.net"]
colour = "blue"

[tls.certificates.b]
cert = "b.crt"
key = "b.key"
names = ["MAIL.example.net"]

[tls.certificates.c]
cert = "c.crt"
key = "c.key"
names = []

[tls.certificates."bad/name"]
cert = "d.crt"
key = "d.key"

[tls.certificates.e]
cert = 5
key = "e.key"
names = "mail.example.org"
"""))
    assert sorted(keys_of(problems)) == sorted([
        "tls.certificates.a.colour",
        "tls.certificates.a.key",
        "tls.certificates.a.names[1]",
        "tls.certificates.a.names[2]",
        "tls.certificates.a.names[3]",
        "tls.certificates.a.names[4]",
        "tls.certificates.b.names[0]",
        "tls.certificates.c.names",
        "tls.certificates.bad/name",
        "tls.certificates.e.cert",
        "tls.certificates.e.names",
    ]), problems
    assert any("already selects tls.certificates.a" in p for p in problems)


def test_acme_defaults(tmp_path: Path) -> None:
    text = with_tls("[tls.acme]\n").replace(
        'cert = "certs/mailkeep.crt"\nkey = "certs/mailkeep.key"\n', "")
    cfg = load_config(write(tmp_path, text))
    acme = cfg.tls.acme
    assert acme is not None
    assert acme.directory == DEFAULT_ACME_DIRECTORY
    assert acme.names == ("mail.example.test",)
    assert (acme.challenge, acme.renew_before_days, acme.email, acme.ca_file) == (
        "tls-alpn-01", 30, None, None)
    assert acme.state_dir == tmp_path / "data" / "acme"
    assert acme.account_key == acme.state_dir / "account.key"
    # Without tls.cert the ACME certificate is every listener's default.
    assert (cfg.tls.cert, cfg.tls.key) == (acme.cert, acme.key)
    assert {(lst.cert, lst.key) for lst in cfg.listeners} == {(acme.cert, acme.key)}


def test_acme_beside_a_default_certificate(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, with_tls("""
[tls.acme]
directory = "https://127.0.0.1:14000/dir"
email = "postmaster@example.test"
names = ["mx.example.test", "mx.example.test"]
challenge = "tls-alpn-01"
renew_before_days = 20
ca_file = "pebble-ca.pem"
account_key = "/var/lib/acme.key"
""")))
    acme = cfg.tls.acme
    assert acme is not None
    assert acme.names == ("mx.example.test",)
    assert acme.ca_file == tmp_path / "pebble-ca.pem"
    assert acme.account_key == Path("/var/lib/acme.key")
    assert cfg.tls.cert == tmp_path / "certs/mailkeep.crt"


def test_every_acme_problem_keyed_by_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, with_tls("""
[tls.acme]
directory = "http://acme.example/dir"
email = "not an address"
names = ["*.example.test", "ok.example.test", "10.0.0.1"]
challenge = "dns-01"
renew_before_days = 0
ca_file = 3
expiry = 1
""").replace('cert = "certs/mailkeep.crt"\n', ""))
    assert sorted(keys_of(problems)) == sorted([
        "tls.cert",  # a key without its certificate: not silently the ACME one
        "tls.acme.directory",
        "tls.acme.email",
        "tls.acme.names[0]",
        "tls.acme.names[2]",
        "tls.acme.challenge",
        "tls.acme.renew_before_days",
        "tls.acme.ca_file",
        "tls.acme.expiry",
    ]), problems
    assert any("dns-01" in p and "names[0]" in p for p in problems)


def test_acme_needs_a_listener_for_its_challenge(tmp_path: Path) -> None:
    no_implicit = MINIMAL.replace("[listeners.sub]", "[tls.acme]\n[listeners.sub]")
    no_implicit = no_implicit.replace('cert = "certs/mailkeep.crt"\nkey = "certs/mailkeep.key"\n',
                                      "")
    assert keys_of(problems_of(tmp_path, no_implicit)) == ["tls.acme.challenge"]
    http = with_tls('[tls.acme]\nchallenge = "http-01"\n')
    problems = problems_of(tmp_path, http)
    assert keys_of(problems) == ["tls.acme.challenge"]
    assert "autoconfig" in problems[0]


def test_acme_default_certificate_must_cover_the_hostname(tmp_path: Path) -> None:
    text = with_tls('[tls.acme]\nnames = ["other.example.test"]\n').replace(
        'cert = "certs/mailkeep.crt"\nkey = "certs/mailkeep.key"\n', "")
    assert keys_of(problems_of(tmp_path, text)) == ["tls.acme.names"]
    # a name of an SNI certificate may not be claimed by ACME too
    text = with_tls('[tls.acme]\nnames = ["mail.example.test"]\n'
                    '[tls.certificates.x]\ncert = "x.crt"\nkey = "x.key"\n'
                    'names = ["mail.example.test"]\n')
    problems = problems_of(tmp_path, text)
    assert keys_of(problems) == ["tls.certificates.x.names[0]"]
    assert "already selects tls.acme" in problems[0]


def test_template_examples_parse_when_uncommented(tmp_path: Path) -> None:
    """The commented [tls.certificates.*] and [tls.acme] examples are valid as written."""
    text = render(hostname="mail.example.test", domains=["example.test"], data_dir="data",
                  cert="c.crt", key="c.key", ports=(587, 465))
    out, active = [], False
    for line in text.splitlines():
        if line.startswith(("# [tls.certificates.", "# [tls.acme]")):
            active = True
        elif not line.strip():
            active = False
        out.append(line[2:] if active and line.startswith("# ") else line)
    cfg = load_config(write(tmp_path, "\n".join(out) + "\n"))
    (entry,) = cfg.tls.certificates
    assert entry.names == ("mail.example.net", "*.example.net")
    assert cfg.tls.acme is not None
    assert cfg.tls.acme.email == "postmaster@example.test"
    assert cfg.tls.acme.account_key == tmp_path / "data" / "acme" / "account.key"
