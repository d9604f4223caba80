"""The autoconfig listener in the configuration, what it advertises, the DNS records of
`mailkeep dns`, and the shipped example (config/mailkeep.toml is the template's rendering)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailkeep.config import ConfigError, load_config
from mailkeep.config.template import render
from mailkeep.proto.autoconfig import Door, MailSetup, doors
from mailkeep.proto.zone import AutoconfigSite, records
from mailkeep.server.autoconfig import mail_setup

REPO = Path(__file__).resolve().parents[2]

BASE = """\
hostname = "mail.example.test"
domains = ["example.test"]
data_dir = "data"
[tls]
cert = "c.crt"
key = "c.key"
[listeners.imaps]
protocol = "imap"
tls = "implicit"
bind = ["0.0.0.0:993", "[::]:993"]
[listeners.submission]
protocol = "submission"
tls = "starttls"
bind = ["0.0.0.0:587"]
"""


def autoconfig(tls: str, extra: str = "", name: str = "autoconfig") -> str:
    return (f'[listeners.{name}]\nprotocol = "autoconfig"\ntls = "{tls}"\n'
            f'bind = ["0.0.0.0:80"]\n{extra}')


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "mailkeep.toml"
    path.write_text(text)
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["none", "implicit"])
def test_autoconfig_listener_accepted(tmp_path: Path, tls: str) -> None:
    cfg = load(tmp_path, BASE + autoconfig(tls))
    (listener,) = [lst for lst in cfg.listeners if lst.protocol == "autoconfig"]
    assert (listener.tls, [b.port for b in listener.bind]) == (tls, [80])
    assert not listener.is_smtp


def test_autoconfig_has_no_starttls(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE + autoconfig("starttls"))
    assert len(found) == 1
    assert found[0].startswith("listeners.autoconfig.tls: HTTP has no STARTTLS")


def test_plain_tls_still_refused_for_mail_doors(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE.replace('tls = "implicit"', 'tls = "none"'))
    assert [p.split(": ")[0] for p in found] == ["listeners.imaps.tls"]
    assert "autoconfig" in found[0]


@pytest.mark.parametrize("key", ['clients = ["192.0.2.0/24"]', 'auth = "none"',
                                 'senders = ["@example.test"]', "may_relay = true",
                                 'rate = "10/min"', "max_message_size = 100000",
                                 "reject_dmarc_failures = true"])
def test_autoconfig_is_not_a_connector(tmp_path: Path, key: str) -> None:
    found = problems(tmp_path, BASE + autoconfig("none", key + "\n"))
    assert len(found) == 1
    name = key.partition(" ")[0]
    assert found[0].startswith(f"listeners.autoconfig.{name}: only for")


@pytest.mark.parametrize("drop", ["imaps", "submission"])
def test_autoconfig_needs_something_to_advertise(tmp_path: Path, drop: str) -> None:
    text = BASE + autoconfig("none")
    start = text.index(f"[listeners.{drop}]")
    end = text.index("[listeners.", start + 1)
    found = problems(tmp_path, text[:start] + text[end:])
    assert found == ["listeners.autoconfig: nothing to advertise: account autoconfiguration "
                     "needs an imap or pop3 listener and a submission listener"]


def test_mail_setup_from_config(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + autoconfig("none") + '[listeners.inbound]\nprotocol = "smtp"\n'
               'tls = "starttls"\nbind = ["0.0.0.0:25"]\n')
    assert mail_setup(cfg) == MailSetup("mail.example.test", ("example.test",), (
        Door("imap", 993, "SSL"), Door("smtp", 587, "STARTTLS")))


def test_mail_setup_uses_bound_ports_for_port_zero(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE.replace(":993", ":0").replace(":587", ":0") + autoconfig("none"))
    setup = mail_setup(cfg, {"imaps": ["0.0.0.0:41993", "[::]:41993"],
                             "submission": ["0.0.0.0:41587"]})
    assert setup.doors == (Door("imap", 41993, "SSL"), Door("smtp", 41587, "STARTTLS"))
    # Before binding, port 0 is nothing a client could use: not advertised.
    assert mail_setup(cfg).doors == ()


# -- DNS records ----------------------------------------------------------------------------------

SETUP = MailSetup("mail.example.test", ("example.test", "example.org"), doors([
    ("imap", "implicit", 993), ("pop3", "implicit", 995), ("submission", "implicit", 465),
    ("submission", "starttls", 587)]))


def _records(lines: list[str]) -> list[tuple[str, ...]]:
    return [tuple(line.split("\t")) for line in lines if not line.startswith(";")]


def test_dns_records_every_line() -> None:
    lines = records(SETUP, "example.org", inbound_mx=True,
                    sites=(AutoconfigSite(80, False), AutoconfigSite(443, True)),
                    dkim_txt='mk1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=AAAA"')
    assert _records(lines) == [
        ("example.org.", "IN", "MX", "10 mail.example.test."),
        ("_imaps._tcp.example.org.", "IN", "SRV", "0 0 993 mail.example.test."),
        ("_imap._tcp.example.org.", "IN", "SRV", "0 0 0 ."),
        ("_pop3s._tcp.example.org.", "IN", "SRV", "20 0 995 mail.example.test."),
        ("_pop3._tcp.example.org.", "IN", "SRV", "0 0 0 ."),
        ("_submissions._tcp.example.org.", "IN", "SRV", "0 0 465 mail.example.test."),
        ("_submission._tcp.example.org.", "IN", "SRV", "10 0 587 mail.example.test."),
        ("autoconfig.example.org.", "IN", "CNAME", "mail.example.test."),
        ("autodiscover.example.org.", "IN", "CNAME", "mail.example.test."),
        ("_autodiscover._tcp.example.org.", "IN", "SRV", "0 0 443 mail.example.test."),
        ("example.org.", "IN", "TXT", '"v=spf1 mx -all"'),
        ('mk1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=AAAA"',),
    ]
    assert not any("note:" in line for line in lines)


def test_dns_records_say_what_is_missing() -> None:
    lines = records(SETUP, "example.test", inbound_mx=False, dkim_note="no key")
    text = "\n".join(lines)
    assert not any(r[0].startswith(("autoconfig.", "autodiscover.", "_autodiscover."))
                   for r in _records(lines))
    assert "; none: no autoconfig listener is configured" in text
    assert "; note: no smtp listener (port 25)" in text
    assert "; DKIM: no key" in text
    # The MX and SPF lines are printed all the same.
    assert ("example.test.", "IN", "MX", "10 mail.example.test.") in _records(lines)


def test_dns_records_autoconfig_on_other_ports() -> None:
    lines = records(SETUP, "example.test", inbound_mx=True,
                    sites=(AutoconfigSite(8080, False), AutoconfigSite(8443, True)))
    assert ("_autodiscover._tcp.example.test.", "IN", "SRV",
            "0 0 8443 mail.example.test.") in _records(lines)
    assert any(line.startswith("; note: clients fetch from port 80") and "8080, 8443" in line
               for line in lines)


def test_dns_records_plain_http_only_has_no_autodiscover_srv() -> None:
    lines = records(SETUP, "example.test", inbound_mx=True, sites=(AutoconfigSite(80, False),))
    names = [r[0] for r in _records(lines)]
    assert "autoconfig.example.test." in names
    assert "_autodiscover._tcp.example.test." not in names


# -- template and shipped example -----------------------------------------------------------------


def _shipped_rendering() -> str:
    return render(hostname="mail.example.test", domains=["example.test"], data_dir="data",
                  cert="../certs/mailkeep.crt", key="../certs/mailkeep.key", ports=(587, 465),
                  pop3_ports=(995, 110), imap_ports=(993, 143))


def test_shipped_example_is_the_template_rendering() -> None:
    """config/README.md promises it: regenerate config/mailkeep.toml with the call above."""
    assert (REPO / "config" / "mailkeep.toml").read_text() == _shipped_rendering()


def test_template_autoconfig_example_parses_when_uncommented(tmp_path: Path) -> None:
    text = _shipped_rendering()
    start = text.index("# [listeners.autoconfig]")
    block = text[start:text.index("\n\n", start)]  # up to the next example's prose
    uncommented = re.sub(r"^# ?", "", block, flags=re.MULTILINE)
    cfg = load(tmp_path, text[:start] + uncommented)
    found = {lst.name: (lst.tls, [str(b) for b in lst.bind])
             for lst in cfg.listeners if lst.protocol == "autoconfig"}
    assert found == {"autoconfig": ("none", ["0.0.0.0:80", "[::]:80"]),
                     "autoconfig-https": ("implicit", ["0.0.0.0:443", "[::]:443"])}
