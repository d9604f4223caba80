"""config/diff.py: what a reload changes, which sockets it keeps, binds and closes."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mailkeep.config.diff import effective, plan_sockets, restart_only_changes, setting_changes
from mailkeep.config.load import parse_config, read_config
from mailkeep.config.model import Config

BASE = """\
hostname = "mail.example.test"
domains = ["example.test"]
data_dir = "data"
[tls]
cert = "c.crt"
key = "c.key"
"""


def config(tmp_path: Path, listeners: str, extra: str = "") -> Config:
    return parse_config(tomllib.loads(BASE.replace("[tls]", extra + "\n[tls]") + listeners),
                        tmp_path / "mailkeep.toml")


def listener(name: str, *binds: str, tls: str = "starttls") -> str:
    quoted = ", ".join(f'"{b}"' for b in binds)
    return f'[listeners.{name}]\nprotocol = "submission"\ntls = "{tls}"\nbind = [{quoted}]\n'


def test_addresses_open_now_keep_their_sockets(tmp_path: Path) -> None:
    old = config(tmp_path, listener("a", "127.0.0.1:2587", "127.0.0.1:2588")
                 + listener("b", "127.0.0.1:2465", tls="implicit"))
    new = config(tmp_path, listener("a", "127.0.0.1:2588", "127.0.0.1:2589")
                 + listener("c", "127.0.0.1:2465", tls="implicit"))
    current = [(lst.name, addr) for lst in old.listeners for addr in lst.bind]
    plan = plan_sockets(current, new.listeners)
    kept = {index: (lst.name, i) for index, (lst, i) in plan.keep.items()}
    assert kept == {1: ("a", 0), 2: ("c", 0)}  # 2465 moves to listener c without a rebind
    assert [(lst.name, i) for lst, i in plan.bind] == [("a", 1)]
    assert plan.close == [0]


def test_ephemeral_ports_are_matched_by_listener_and_place(tmp_path: Path) -> None:
    old = config(tmp_path, listener("a", "127.0.0.1:0", "127.0.0.1:0"))
    new = config(tmp_path, listener("a", "127.0.0.1:0") + listener("b", "127.0.0.1:0"))
    current = [(lst.name, addr) for lst in old.listeners for addr in lst.bind]
    plan = plan_sockets(current, new.listeners)
    assert {index: (lst.name, i) for index, (lst, i) in plan.keep.items()} == {0: ("a", 0)}
    assert [(lst.name, i) for lst, i in plan.bind] == [("b", 0)]
    assert plan.close == [1]


def test_restart_only_keys_keep_their_running_values(tmp_path: Path) -> None:
    old = config(tmp_path, listener("a", "127.0.0.1:0"))
    new = config(tmp_path, listener("a", "127.0.0.1:0"),
                 'pid_file = "/run/x.pid"\nmail_dir = "/srv/mail"\n'
                 "[security]\nmax_connections_per_ip = 4\n")
    warnings = restart_only_changes(old, new)
    assert [w.split(":")[0] for w in warnings] == ["mail_dir", "pid_file"]
    applied = effective(old, new)
    assert applied.pid_file is None and applied.mail_dir is None
    assert applied.security.max_connections_per_ip == 4
    assert "security.max_connections_per_ip: 20 -> 4" in setting_changes(old, applied)


def test_read_config_keeps_every_problem_and_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "mailkeep.toml"
    path.write_text(BASE.replace("[tls]", 'shutdown_grace = "soon"\nbogus = 1\n[tls]')
                    + listener("a", "127.0.0.1:99999"))
    reading = read_config(path)
    assert not reading.ok and reading.config is not None
    keys = {p.split(":")[0] for p in reading.problems}
    assert {"shutdown_grace", "bogus", "listeners.a.bind[0]"} <= keys
    assert len(reading.sha256) == 64
    assert read_config(tmp_path / "missing.toml").config is None
