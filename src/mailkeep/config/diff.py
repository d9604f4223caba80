"""What changed between the running configuration and a reloaded one (app_reload.py).

Pure functions on Config records: the keys that only take effect at restart, one readable line
per changed setting, and how the listening sockets of the new configuration map onto the ones
open now (kept, bound anew, or closed).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mailkeep.config.model import BindAddress, Config, ListenerConfig

# Keys a running daemon cannot change; a reload keeps their old values and warns.
# data_dir: the spool (and its lock), the store's indexes, the pid and status files live
#   there, opened once at start. mail_dir: the store and its change feed watch it.
# run_as, allow_root: root privileges are given up for good at start and cannot come back.
# tls.acme: the ACME account, placeholder certificate and renewal schedule are set up at start.
# pid_file: written at start; `mailkeep reload` would look for the new one and not find it.
# log_format: the log handlers are set up once, before the daemon starts (cli/common.py).
RESTART_ONLY = ("data_dir", "mail_dir", "pid_file", "log_format", "run_as", "allow_root",
                "tls.acme")
# Records whose changed fields are listed with their values (nothing secret in them).
_RECORDS = ("submission", "security", "pop3", "imap")
# Listed by the names of the changed fields only: values may be long, or carry secrets
# (directory options hold bind passwords and database URLs).
_OPAQUE = ("delivery", "queue")
_PLAIN = ("hostname", "domains", "log_level", "shutdown_grace")


def _value(config: Config, key: str) -> object:
    if key == "tls.acme":
        return config.tls.acme
    return getattr(config, key)


def _show(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if dataclasses.is_dataclass(value):
        return "(set)"
    return str(value)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """One warning per restart-only key that the new configuration changes."""
    return [f"{key}: changed from {_show(_value(old, key))} to {_show(_value(new, key))}: "
            f"takes effect at restart (keeping {_show(_value(old, key))} until then)"
            for key in RESTART_ONLY if _value(old, key) != _value(new, key)]


def effective(old: Config, new: Config) -> Config:
    """The new configuration with the restart-only keys of the running one."""
    return replace(new, data_dir=old.data_dir, mail_dir=old.mail_dir, pid_file=old.pid_file,
                   log_format=old.log_format, run_as=old.run_as, allow_root=old.allow_root,
                   tls=replace(new.tls, acme=old.tls.acme))


def _fields_changed(old: object, new: object) -> list[str]:
    return [f.name for f in dataclasses.fields(old)  # type: ignore[arg-type]
            if getattr(old, f.name) != getattr(new, f.name)]


def setting_changes(old: Config, new: Config) -> list[str]:
    """One line per changed setting outside the listeners (see listener_changes)."""
    lines = [f"{key}: {_show(getattr(old, key))} -> {_show(getattr(new, key))}"
             for key in _PLAIN if getattr(old, key) != getattr(new, key)]
    if old.trusted_proxies != new.trusted_proxies:
        lines.append(f"trusted_proxies: {_show(new.trusted_proxies)}")
    for section in _RECORDS:
        before, after = getattr(old, section), getattr(new, section)
        lines += [f"{section}.{name}: {getattr(before, name)} -> {getattr(after, name)}"
                  for name in _fields_changed(before, after)]
    for name in ("cert", "key", "handshake_timeout", "reload_interval"):
        if getattr(old.tls, name) != getattr(new.tls, name):
            lines.append(f"tls.{name}: {getattr(old.tls, name)} -> {getattr(new.tls, name)}")
    lines += _named_changes("tls.certificates", {e.name: e for e in old.tls.certificates},
                            {e.name: e for e in new.tls.certificates})
    for section in _OPAQUE:
        names = _fields_changed(getattr(old, section), getattr(new, section))
        if names:
            lines.append(f"{section}: {', '.join(names)} changed")
    if old.directory != new.directory:
        what = "backend" if old.directory.backend != new.directory.backend else "options"
        lines.append(f"directory: {what} changed: a new {new.directory.backend} directory "
                     "answers new logins")
    lines += _named_changes("dkim.domains", old.dkim, new.dkim)
    return lines


def _named_changes(prefix: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    lines = [f"{prefix}.{name}: added" for name in new if name not in old]
    lines += [f"{prefix}.{name}: removed" for name in old if name not in new]
    lines += [f"{prefix}.{name}: changed" for name in new
              if name in old and old[name] != new[name]]
    return lines


def listener_changes(old: ListenerConfig, new: ListenerConfig) -> list[str]:
    """The policy keys of one listener that changed (its addresses are not among them)."""
    return [name for name in _fields_changed(old, new) if name not in ("bind", "name")]


# A listening socket's identity across a reload: its address, or, for an ephemeral port
# (port 0, tests), its listener, host and place among that listener's port-0 addresses.
SocketKey = tuple[object, ...]


def socket_keys(pairs: Sequence[tuple[str, BindAddress]]) -> list[SocketKey]:
    """The key of each (listener name, configured address), in order."""
    seen: Counter[tuple[str, BindAddress]] = Counter()
    keys: list[SocketKey] = []
    for name, addr in pairs:
        if addr.port != 0:
            keys.append(("address", addr.host, addr.port))
            continue
        keys.append(("ephemeral", name, addr.host, seen[(name, addr)]))
        seen[(name, addr)] += 1
    return keys


@dataclass
class SocketPlan:
    """keep: index of an open socket -> (the new listener it now serves, bind index);
    bind: addresses to bind anew; close: indexes of the open sockets no longer wanted."""

    keep: dict[int, tuple[ListenerConfig, int]] = field(default_factory=dict)
    bind: list[tuple[ListenerConfig, int]] = field(default_factory=list)
    close: list[int] = field(default_factory=list)


def plan_sockets(current: Sequence[tuple[str, BindAddress]],
                 listeners: Sequence[ListenerConfig]) -> SocketPlan:
    """Map the new listeners' addresses onto the sockets open now (`current`: listener name
    and configured address of each). An address open now keeps its socket, even when it
    moves to another listener: nothing is refused in between."""
    wanted = [(lst, i) for lst in listeners for i in range(len(lst.bind))]
    new_keys = socket_keys([(lst.name, lst.bind[i]) for lst, i in wanted])
    open_now = {key: index for index, key in enumerate(socket_keys(current))}
    plan = SocketPlan()
    for key, (lst, i) in zip(new_keys, wanted, strict=True):
        index = open_now.pop(key, None)
        if index is None:
            plan.bind.append((lst, i))
        else:
            plan.keep[index] = (lst, i)
    plan.close = sorted(open_now.values())
    return plan
