"""config/load.py: TOML -> frozen Config, every problem reported at once, keyed by dotted path."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import get_args

import pytest

from mailkeep.cli import EXIT_CONFIG, main
from mailkeep.config import ConfigError, load_config
from mailkeep.config.load import IMPLEMENTED_PROTOCOLS, parse_bind
from mailkeep.config.model import (
    DEFAULT_MAX_RECIPIENTS,
    BindAddress,
    Config,
    Protocol,
    SecurityConfig,
    SubmissionConfig,
)
from mailkeep.config.template import render
from mailkeep.proto.imap import specialuse
from mailkeep.relay.routes import _DELIVERY_KEYS

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """\
hostname = "mail.example.test"
domains = ["example.test"]
data_dir = "data"

[tls]
cert = "certs/mailkeep.crt"
key = "certs/mailkeep.key"

[listeners.sub]
protocol = "submission"
tls = "starttls"
bind = ["127.0.0.1:587"]
"""


def write(tmp_path: Path, text: str, name: str = "mailkeep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.problems


def keys_of(problems: list[str]) -> list[str]:
    """The dotted path each problem is keyed by (the text before the first ': ')."""
    return [p.split(": ", 1)[0] for p in problems]


# -- valid configurations -----------------------------------------------------------------


def test_minimal_config_parses_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.hostname == "mail.example.test"
    assert cfg.domains == ("example.test",)
    assert cfg.data_dir == (tmp_path / "data").resolve()
    assert cfg.tls.cert == (tmp_path / "certs/mailkeep.crt").resolve()
    assert cfg.tls.key == (tmp_path / "certs/mailkeep.key").resolve()
    assert len(cfg.listeners) == 1
    lst = cfg.listeners[0]
    assert (lst.name, lst.protocol, lst.tls) == ("sub", "submission", "starttls")
    assert lst.bind == (BindAddress("127.0.0.1", 587),)
    # A listener without its own pair uses the global one.
    assert (lst.cert, lst.key) == (cfg.tls.cert, cfg.tls.key)
    assert cfg.submission == SubmissionConfig()
    assert cfg.security == SecurityConfig()
    assert cfg.submission.max_recipients == DEFAULT_MAX_RECIPIENTS
    assert cfg.directory.backend == "file"
    assert cfg.directory.base_dir == tmp_path.absolute()
    assert cfg.log_level == "info"


def test_hostname_and_domains_are_normalised(tmp_path: Path) -> None:
    text = MINIMAL.replace('"mail.example.test"', '"Mail.Example.TEST."').replace(
        '["example.test"]', '["Example.Test.", "other.test"]')
    cfg = load_config(write(tmp_path, text))
    assert cfg.hostname == "mail.example.test"
    assert cfg.domains == ("example.test", "other.test")
    assert cfg.is_local_domain("EXAMPLE.test.")
    assert not cfg.is_local_domain("example.test.evil")


def test_limits_are_read_and_ints_accepted_for_floats(tmp_path: Path) -> None:
    text = MINIMAL + """
[submission]
max_recipients = 7
idle_timeout = 12

[security]
auth_failure_delay = 2
max_connections_per_ip = 3
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.submission.max_recipients == 7
    assert cfg.submission.idle_timeout == 12.0
    assert isinstance(cfg.submission.idle_timeout, float)
    assert cfg.security.auth_failure_delay == 2.0
    assert cfg.security.max_connections_per_ip == 3


# -- every problem at once -------------------------------------------------------------------


def test_five_mistakes_give_five_problems_keyed_by_dotted_path(tmp_path: Path) -> None:
    text = """\
hostname = "mail.example.test"
domains = ["example.test"]
data_dir = "data"
log_level = "loud"

[tls]
cert = "c.pem"
key = "k.pem"
handshake_timeout = -1

[listeners.sub]
protocol = "submission"
tls = "starttls"
bind = ["127.0.0.1:587", "nonsense"]

[submission]
max_recipients = 0

[security]
max_conections = 5
"""
    problems = problems_of(tmp_path, text)
    assert len(problems) == 5, problems
    assert sorted(keys_of(problems)) == sorted([
        "log_level",
        "tls.handshake_timeout",
        "listeners.sub.bind[1]",
        "submission.max_recipients",
        "security.max_conections",
    ])


def test_config_error_report_lists_every_problem(tmp_path: Path) -> None:
    text = MINIMAL.replace('data_dir = "data"', 'data_dir = "data"\nbogus = 1\nlog_level = 3')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    report = info.value.report()
    assert "4 problem(s)" in report
    assert "bogus" in report and "log_level" in report
    assert str(tmp_path) in report
    # A certificate file that cannot be read is listed with them (apart from the text's).
    assert info.value.files == [f"tls.cert: {tmp_path / 'certs' / 'mailkeep.crt'}: cannot "
                                "read certificate: No such file or directory",
                                f"tls.key: {tmp_path / 'certs' / 'mailkeep.key'}: cannot "
                                "read key: No such file or directory"]
    (tmp_path / "certs").mkdir()
    for name in ("mailkeep.crt", "mailkeep.key"):
        (tmp_path / "certs" / name).write_text("not checked here, only opened\n")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    report = info.value.report()
    assert "2 problem(s)" in report and info.value.files == []


def test_missing_required_keys_each_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[tls]\n")
    keys = keys_of(problems)
    for required in ("hostname", "domains", "data_dir", "tls.cert", "tls.key", "listeners"):
        assert required in keys, problems


@pytest.mark.parametrize(
    ("where", "snippet", "key"),
    [
        ("top", "colour = 1\n", "colour"),
        ("tls", "ciphers = 'x'\n", "tls.ciphers"),
        ("listener", "port = 587\n", "listeners.sub.port"),
        ("submission", "max_recipient = 5\n", "submission.max_recipient"),
        ("security", "auth_delay = 5\n", "security.auth_delay"),
    ],
)
def test_unknown_keys_at_each_level_are_errors_naming_the_key(
    tmp_path: Path, where: str, snippet: str, key: str
) -> None:
    if where == "top":
        text = snippet + MINIMAL
    elif where == "tls":
        text = MINIMAL.replace("[tls]\n", "[tls]\n" + snippet)
    elif where == "listener":
        text = MINIMAL + snippet
    else:
        text = MINIMAL + f"\n[{where}]\n" + snippet
    problems = problems_of(tmp_path, text)
    assert keys_of(problems) == [key], problems
    assert "unknown key" in problems[0]


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("[submission]\nmax_recipients = true\n", "submission.max_recipients"),
        ("[submission]\nmax_recipients = 1.5\n", "submission.max_recipients"),
        ('[submission]\nmax_message_size = "big"\n', "submission.max_message_size"),
        ("[submission]\nidle_timeout = -3\n", "submission.idle_timeout"),
        ("[security]\nauth_failure_delay = true\n", "security.auth_failure_delay"),
        ("[security]\nmax_connections = 0\n", "security.max_connections"),
    ],
)
def test_wrong_types_and_non_positive_limits(tmp_path: Path, snippet: str, key: str) -> None:
    problems = problems_of(tmp_path, MINIMAL + snippet)
    assert keys_of(problems) == [key], problems


def test_limit_of_one_is_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + "[submission]\nmax_recipients = 1\n"))
    assert cfg.submission.max_recipients == 1


def test_bad_hostname_and_domain_reported(tmp_path: Path) -> None:
    text = MINIMAL.replace('"mail.example.test"', '"not a host"').replace(
        '["example.test"]', '["example.test", "bad_domain!", 5]')
    problems = problems_of(tmp_path, text)
    assert sorted(keys_of(problems)) == ["domains[1]", "domains[2]", "hostname"]


def test_empty_domains_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL.replace('["example.test"]', "[]"))
    assert keys_of(problems) == ["domains"]


def test_table_expected(tmp_path: Path) -> None:
    text = MINIMAL.replace("[tls]\n", 'tls = "yes"\n[tlsx]\n')
    problems = problems_of(tmp_path, text)
    assert "tls" in keys_of(problems)


# -- bind parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("0.0.0.0:587", "0.0.0.0", 587),
        ("[::]:587", "::", 587),
        ("[::1]:465", "::1", 465),
        ("[2001:db8::25]:25", "2001:db8::25", 25),
        ("localhost:0", "localhost", 0),
        ("127.0.0.1:65535", "127.0.0.1", 65535),
    ],
)
def test_parse_bind_good(text: str, host: str, port: int) -> None:
    addr = parse_bind(text)
    assert addr == BindAddress(host, port)
    assert str(addr) == text


@pytest.mark.parametrize(
    "text",
    ["587", ":587", "0.0.0.0", "0.0.0.0:", "::1:587", "[::1]587", "[::1]", "host:abc",
     "host:-1", "host:587:1", "[host]:587", "", "host:100000"],
)
def test_parse_bind_bad_forms(text: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_bind(text)


@pytest.mark.parametrize("text", ["127.0.0.1:65536", "[::]:99999"])
def test_parse_bind_port_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_bind(text)


def test_bad_binds_reported_with_index(tmp_path: Path) -> None:
    text = MINIMAL.replace('bind = ["127.0.0.1:587"]',
                           'bind = ["127.0.0.1:587", "[::]:70000", 587, "nohost"]')
    problems = problems_of(tmp_path, text)
    assert keys_of(problems) == ["listeners.sub.bind[1]", "listeners.sub.bind[2]",
                                 "listeners.sub.bind[3]"]
    assert "out of range" in problems[0]


def test_empty_bind_list_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL.replace('["127.0.0.1:587"]', "[]"))
    assert keys_of(problems) == ["listeners.sub.bind"]


def test_duplicate_bind_across_listeners(tmp_path: Path) -> None:
    text = MINIMAL + """
[listeners.other]
protocol = "submission"
tls = "implicit"
bind = ["127.0.0.1:465", "127.0.0.1:587"]
"""
    problems = problems_of(tmp_path, text)
    assert keys_of(problems) == ["listeners.other.bind[1]"]
    assert "'sub'" in problems[0]


def test_port_zero_may_repeat(tmp_path: Path) -> None:
    text = MINIMAL.replace("127.0.0.1:587", "127.0.0.1:0") + """
[listeners.other]
protocol = "submission"
tls = "implicit"
bind = ["127.0.0.1:0"]
"""
    cfg = load_config(write(tmp_path, text))
    assert [lst.name for lst in cfg.listeners] == ["sub", "other"]


# -- listeners --------------------------------------------------------------------------------


def test_listener_with_cert_but_no_key(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL + 'cert = "own.crt"\n')
    assert keys_of(problems) == ["listeners.sub.key"]
    assert "both cert and key" in problems[0]


def test_listener_with_key_but_no_cert(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL + 'key = "own.key"\n')
    assert keys_of(problems) == ["listeners.sub.cert"]


def test_listener_own_pair_resolved_relative_to_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + 'cert = "own/a.crt"\nkey = "/abs/a.key"\n'))
    lst = cfg.listeners[0]
    assert lst.cert == (tmp_path / "own/a.crt").resolve()
    assert lst.key == Path("/abs/a.key")


RESERVED = [p for p in get_args(Protocol) if p not in IMPLEMENTED_PROTOCOLS]


def test_every_protocol_is_implemented() -> None:
    # issue 4: imap was the last reserved protocol name.
    assert RESERVED == []
    assert {"submission", "pop3", "imap"} <= IMPLEMENTED_PROTOCOLS


@pytest.mark.parametrize("protocol", sorted(IMPLEMENTED_PROTOCOLS))
def test_implemented_protocols_accepted(tmp_path: Path, protocol: str) -> None:
    text = MINIMAL.replace('"submission"', f'"{protocol}"')
    if protocol == "relay":  # an application connector must say who and which senders
        text = text.replace('protocol = "relay"', 'protocol = "relay"\nclients = '
                            '["192.0.2.0/24"]\nsenders = ["@example.test"]')
    if protocol == "autoconfig":  # plain HTTP, advertising the mail doors that follow
        text = text.replace('"starttls"', '"none"') + (
            '[listeners.i]\nprotocol = "imap"\ntls = "implicit"\nbind = ["127.0.0.1:993"]\n'
            '[listeners.s]\nprotocol = "submission"\ntls = "implicit"\n'
            'bind = ["127.0.0.1:465"]\n')
    if protocol == "admin":  # HTTP: plain or HTTPS, no STARTTLS
        text = text.replace('"starttls"', '"none"')
    cfg = load_config(write(tmp_path, text))
    assert cfg.listeners[0].protocol == protocol


def test_unknown_protocol_and_tls_mode(tmp_path: Path) -> None:
    text = MINIMAL.replace('"submission"', '"gopher"').replace('"starttls"', '"maybe"')
    problems = problems_of(tmp_path, text)
    assert keys_of(problems) == ["listeners.sub.protocol", "listeners.sub.tls"]
    assert "not available" not in problems[0]


def test_bad_listener_name_and_non_table_listener(tmp_path: Path) -> None:
    text = MINIMAL.replace("[listeners.sub]", '[listeners."bad name"]')
    problems = problems_of(tmp_path, text)
    assert keys_of(problems) == ["listeners.bad name"]
    text2 = MINIMAL.split("[listeners.sub]", maxsplit=1)[0] + "[listeners]\nflat = 5\n"
    problems2 = problems_of(tmp_path, text2)
    assert keys_of(problems2) == ["listeners.flat"]
    assert "expected a table" in problems2[0]


def test_no_listeners_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL.split("[listeners.sub]", maxsplit=1)[0])
    assert keys_of(problems) == ["listeners"]


# -- paths ----------------------------------------------------------------------------------


def test_paths_resolved_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "mailkeep"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(conf_dir, MINIMAL.replace('"certs/mailkeep.crt"', '"../tls/a.crt"'))
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("../etc/mailkeep/mailkeep.toml"))
    assert cfg.path.resolve() == (conf_dir / "mailkeep.toml").resolve()
    assert cfg.data_dir == (conf_dir / "data").resolve()
    assert cfg.tls.cert == (tmp_path / "etc" / "tls" / "a.crt").resolve()
    assert cfg.directory.base_dir.resolve() == conf_dir.resolve()


def test_absolute_paths_kept(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL.replace('"data"', '"/var/lib/mailkeep"')))
    assert cfg.data_dir == Path("/var/lib/mailkeep")


# -- unreadable files -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "not found" in info.value.problems[0]


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "hostname = \n"))
    assert "not valid TOML" in info.value.problems[0]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_bytes(b'hostname = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1


# -- shipped example and template ---------------------------------------------------------------


def test_repository_example_config_parses() -> None:
    example = REPO / "config" / "mailkeep.toml"
    if not example.exists():
        pytest.skip("config/mailkeep.toml not in the repository yet")
    cfg = load_config(example)
    assert "submission" in {lst.protocol for lst in cfg.listeners}
    assert {lst.protocol for lst in cfg.listeners} <= IMPLEMENTED_PROTOCOLS
    assert {lst.tls for lst in cfg.listeners} == {"starttls", "implicit"}


@pytest.mark.parametrize("ports", [(587, 465), (0, 0), (2587, 2465)])
def test_template_render_parses(tmp_path: Path, ports: tuple[int, int]) -> None:
    text = render(hostname="mail.example.test", domains=["example.test", "example.org"],
                  data_dir="data", cert="certs/mailkeep.crt", key="certs/mailkeep.key",
                  ports=ports)
    cfg = load_config(write(tmp_path, text))
    assert cfg.hostname == "mail.example.test"
    assert cfg.domains == ("example.test", "example.org")
    assert cfg.tls.cert == (tmp_path / "certs/mailkeep.crt").resolve()
    binds = {str(b) for lst in cfg.listeners if lst.protocol == "submission" for b in lst.bind}
    assert binds == {f"0.0.0.0:{ports[0]}", f"[::]:{ports[0]}",
                     f"0.0.0.0:{ports[1]}", f"[::]:{ports[1]}"}


def test_template_render_with_pop3_parses(tmp_path: Path) -> None:
    if "pop3_ports" not in inspect.signature(render).parameters:
        pytest.skip("this template has no POP3 listeners yet")
    text = render(hostname="mail.example.test", domains=["example.test"], data_dir="data",
                  cert="c.crt", key="c.key", ports=(587, 465),
                  pop3_ports=(995, 110))  # type: ignore[call-arg]
    cfg = load_config(write(tmp_path, text))
    pop3 = [lst for lst in cfg.listeners if lst.protocol == "pop3"]
    assert pop3 and {b.port for lst in pop3 for b in lst.bind} <= {995, 110}


def test_template_documents_every_known_key() -> None:
    """Every key of every limits table ([submission], [security], ...) is in the template."""
    text = render(hostname="h.example.test", domains=["example.test"], data_dir="d",
                  cert="c", key="k", ports=(587, 465))
    tables = [f for f in dataclasses.fields(Config) if f.default_factory is not dataclasses.MISSING
              and f.name not in ("delivery", "queue", "dkim")]  # [delivery]: checked below
    assert {"submission", "security"} <= {f.name for f in tables}
    for table in tables:
        assert re.search(rf"^\[{table.name}\]$", text, re.MULTILINE), table.name
        for name in dataclasses.fields(table.default_factory()):  # type: ignore[misc]
            if name.name == "special_use":  # a sub-table: [imap.special_use], checked below
                continue
            assert re.search(rf"^# {name.name} = ", text, re.MULTILINE), (table.name, name.name)
    assert re.search(r"^\[imap\.special_use\]$", text, re.MULTILINE)
    for key in ("create", *specialuse.CONFIG_KEYS.values()):
        assert re.search(rf"^# {key} = ", text, re.MULTILINE), key
    # [delivery] (routes and the queue): every key, as "# key = " or as a sub-table.
    assert re.search(r"^\[delivery\]$", text, re.MULTILINE)
    for key in sorted(_DELIVERY_KEYS):
        assert re.search(rf"^# ({key} = |\[delivery\.{key}[.\]])", text, re.MULTILINE), key
    assert re.search(r"^# \[dkim\.domains\.", text, re.MULTILINE)


# -- validation gaps (bugs) -----------------------------------------------------------------------


def test_negative_shutdown_grace_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "shutdown_grace = -5.0\n" + MINIMAL)
    assert keys_of(problems) == ["shutdown_grace"]


@pytest.mark.parametrize("text", ["[::1::2]:587", "[abc]:587", "[1.2.3.4]:587", " :587",
                                  "mail example:587"])
def test_parse_bind_host_must_be_an_address_or_name(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bind(text)


def test_paths_keep_symlinks_so_renewals_are_seen(tmp_path: Path) -> None:
    archive, live = tmp_path / "archive", tmp_path / "live"
    archive.mkdir()
    live.mkdir()
    (archive / "cert1.pem").write_text("first")
    (archive / "cert2.pem").write_text("renewed")
    (live / "cert.pem").symlink_to("../archive/cert1.pem")
    cfg = load_config(write(tmp_path, MINIMAL.replace('"certs/mailkeep.crt"',
                                                      '"live/cert.pem"')))
    assert cfg.tls.cert.read_text() == "first"
    # certbot renews: a new archive file, then the live symlink is swapped atomically
    (live / "next").symlink_to("../archive/cert2.pem")
    (live / "next").replace(live / "cert.pem")
    assert cfg.tls.cert.read_text() == "renewed"


# -- the hardening keys (issue 7 items 2, 4, 13, 17) ----------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "key", "says"),
    [
        ("[security]\nlogin_timeout = 0\n", "security.login_timeout", "greater than 0"),
        ("[security]\nlogin_timeout = -60\n", "security.login_timeout", "greater than 0"),
        ('[security]\nmax_buffered_input = "256M"\n', "security.max_buffered_input",
         "expected a int"),
        ("[security]\nmax_buffered_input = 0\n", "security.max_buffered_input",
         "greater than 0"),
        ("[security]\ndescriptor_reserve = -1\n", "security.descriptor_reserve",
         "greater than 0"),
        ("[security]\ndescriptor_reserve = 12.5\n", "security.descriptor_reserve",
         "expected a int"),
        ("[imap]\nmax_connections_per_user_ip = 0\n", "imap.max_connections_per_user_ip",
         "greater than 0"),
        ("[imap]\nmax_connections_per_user_ip = true\n", "imap.max_connections_per_user_ip",
         "expected a int"),
        ("[imap]\nmax_literal_size = 4096\nunauthenticated_max_literal_size = 4097\n",
         "imap.unauthenticated_max_literal_size", "must not exceed imap.max_literal_size"),
    ],
    ids=["login_timeout-0", "login_timeout-negative", "max_buffered_input-string",
         "max_buffered_input-0", "descriptor_reserve-negative", "descriptor_reserve-float",
         "per_user_ip-0", "per_user_ip-bool", "unauthenticated_literal-over-max"],
)
def test_hardening_keys_are_validated(tmp_path: Path, snippet: str, key: str,
                                      says: str) -> None:
    problems = problems_of(tmp_path, MINIMAL + snippet)
    assert keys_of(problems) == [key], problems
    assert says in problems[0] and "unknown key" not in problems[0], problems


def test_hardening_keys_read_at_their_limits(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + (
        "[security]\nlogin_timeout = 5\nmax_buffered_input = 1048576\ndescriptor_reserve = 1\n"
        "[imap]\nmax_connections_per_user_ip = 1\nmax_connections_per_user = 1\n"
        "max_literal_size = 4096\nunauthenticated_max_literal_size = 4096\n")))
    assert cfg.security.login_timeout == 5.0
    assert cfg.security.max_buffered_input == 1048576
    assert cfg.security.descriptor_reserve == 1
    assert cfg.imap.max_connections_per_user_ip == 1
    assert cfg.imap.unauthenticated_max_literal_size == cfg.imap.max_literal_size == 4096


def test_check_config_reports_every_bad_hardening_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL + (
        "[security]\nlogin_timeout = 0\nmax_buffered_input = -1\ndescriptor_reserve = 0\n"
        "[imap]\nmax_connections_per_user_ip = 0\n"
        "max_literal_size = 1000\nunauthenticated_max_literal_size = 4096\n"))
    assert main(["check-config", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for key in ("security.login_timeout:", "security.max_buffered_input:",
                "security.descriptor_reserve:", "imap.max_connections_per_user_ip:",
                "imap.unauthenticated_max_literal_size:"):
        assert key in err, (key, err)
    assert "unknown key" not in err, err


def _uncommented(text: str, starts: tuple[str, ...]) -> str:
    """The template with the commented examples starting with `starts` made live (up to the
    next blank line or lone "#")."""
    out, active = [], False
    for line in text.splitlines():
        if line.startswith(starts):
            active = True
        elif line.strip() in ("", "#"):
            active = False
        out.append(line[2:] if active and line.startswith("# ") else line)
    return "\n".join(out) + "\n"


def test_template_split_delivery_example_is_consistent(tmp_path: Path) -> None:
    """The split-delivery example names a route: the template defines it right there, so
    uncommenting the example gives a valid configuration that routes to it."""
    text = render(hostname="mail.example.test", domains=["example.test"], data_dir="data",
                  cert="c.crt", key="c.key", ports=(587, 465))
    live = _uncommented(text, ("# [delivery.routes.legacy]",
                               '# [delivery.local_domains."example.test"]'))
    assert '[delivery.routes.legacy]\n' in live and 'fallback_route = "legacy"' in live
    path = tmp_path / "mailkeep.toml"
    path.write_text(live)
    cfg = load_config(path)
    assert cfg.queue.fallback_routes == {"example.test": "legacy"}
    assert "legacy" in cfg.delivery.routes


def test_template_relay_listener_examples_parse(tmp_path: Path) -> None:
    text = render(hostname="mail.example.test", domains=["example.test"], data_dir="data",
                  cert="c.crt", key="c.key", ports=(587, 465))
    live = _uncommented(text, ("# [listeners.apps]", "# [listeners.apps-login]"))
    path = tmp_path / "mailkeep.toml"
    path.write_text(live)
    cfg = load_config(path)
    found = {lst.name: lst.tls for lst in cfg.listeners if lst.protocol == "relay"}
    assert found == {"apps": "none", "apps-login": "starttls"}
