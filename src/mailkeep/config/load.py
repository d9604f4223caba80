"""TOML -> Config. Every problem is collected and reported at once, keyed by dotted path."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast, get_args

from mailkeep.config.model import (
    BindAddress,
    Config,
    DirectoryConfig,
    ImapConfig,
    ListenerConfig,
    Pop3Config,
    Protocol,
    SecurityConfig,
    SubmissionConfig,
    TlsConfig,
    TlsMode,
)

# Protocols that this version can serve; the others are reserved names in the schema.
IMPLEMENTED_PROTOCOLS: frozenset[str] = frozenset({"submission", "pop3", "imap"})
# RFC 2449 §4: clients may send POP3 commands of up to 255 octets including CRLF.
MIN_POP3_LINE_LENGTH = 255
# RFC 7162 §4: IMAP servers SHOULD accept command lines of at least 8192 octets.
MIN_IMAP_LINE_LENGTH = 8192
# RFC 1123 §2.1 host names: labels of letters, digits and inner hyphens, 253 octets in all.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_LISTENER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")

_TOP_KEYS = {"hostname", "domains", "data_dir", "tls", "directory", "listeners",
             "submission", "security", "pop3", "imap", "log_level", "shutdown_grace"}
_TLS_KEYS = {"cert", "key", "handshake_timeout", "reload_interval"}
_LISTENER_KEYS = {"protocol", "tls", "bind", "cert", "key"}


class ConfigError(Exception):
    """Every problem found in a configuration file, one per line."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = Path(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))

    def report(self) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s):"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def load_config(path: Path | str) -> Config:
    """Read and validate a configuration file; raise ConfigError listing every problem."""
    path = Path(path).absolute()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, ["file not found: create one with `mailkeep init DIR`"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    return parse_config(raw, path)


def is_hostname(value: str) -> bool:
    return bool(_HOSTNAME.match(value.lower().rstrip(".")))


def parse_bind(value: str) -> BindAddress:
    """Parse "host:port" or "[v6]:port"; raise ValueError with a human reason."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})", value) or re.fullmatch(
        r"([^:\[\]]+):(\d{1,5})", value
    )
    if not m:
        raise ValueError('not "host:port" (IPv6: "[::1]:587")')
    port = int(m.group(2))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535")
    host = m.group(1)
    if value.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not is_hostname(host):
                raise ValueError(f"{host!r} is not an IPv4 address or host name "
                                 '(IPv6 goes in brackets: "[::]:587")') from None
    return BindAddress(host, port)


T = TypeVar("T")


class _Reader:
    """Pulls typed values out of a TOML table, recording problems instead of raising."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def unknown(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in sorted(set(table) - allowed):
            known = ", ".join(sorted(allowed))
            self.problem(f"{prefix}{key}", f"unknown key (known keys here: {known})")

    def get(self, table: dict[str, Any], key: str, kind: type[T], prefix: str,
            default: T | None = None) -> T | None:
        if key not in table:
            if default is None:
                self.problem(prefix + key, f"missing (required, a {kind.__name__})")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(prefix + key, f"expected a {kind.__name__}, got {value!r}")
            return default
        return value

    def path(self, table: dict[str, Any], key: str, prefix: str,
             default: Path | None = None) -> Path | None:
        value = self.get(table, key, str, prefix, None if default is None else str(default))
        if value is None:
            return None
        # normpath, not resolve(): certbot's live/cert.pem is a symlink swapped on renewal,
        # and we must keep watching the link, not the archive file it pointed to at start.
        return Path(os.path.normpath(self.base / value))

    def table(self, raw: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.problem(prefix + key, "expected a table")
            return {}
        return value


def _positive_record(reader: _Reader, cls: type[T], table: dict[str, Any], prefix: str) -> T:
    """Build a dataclass of positive numbers from a table, each key optional with a default."""
    defaults = cls()
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    reader.unknown(table, names, prefix)
    values: dict[str, Any] = {}
    for name in names:
        default = getattr(defaults, name)
        value = reader.get(table, name, type(default), prefix, default)
        if value is not None and value <= 0:
            reader.problem(prefix + name, f"must be greater than 0, got {value}")
            value = default
        values[name] = value
    return cls(**values)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document. Paths are relative to the config file's folder."""
    r = _Reader(path.parent)
    r.unknown(raw, _TOP_KEYS, "")

    hostname = r.get(raw, "hostname", str, "") or "invalid"
    if "hostname" in raw and not is_hostname(hostname):
        r.problem("hostname", f"{hostname!r} is not a fully qualified host name")
    hostname = hostname.lower().rstrip(".")

    domains: list[str] = []
    raw_domains = raw.get("domains")
    if not isinstance(raw_domains, list) or not raw_domains:
        r.problem("domains", 'missing or empty: list the local mail domains, e.g. ["example.test"]')
    else:
        for i, d in enumerate(raw_domains):
            if not isinstance(d, str) or not is_hostname(d):
                r.problem(f"domains[{i}]", f"{d!r} is not a domain name")
            else:
                domains.append(d.lower().rstrip("."))

    data_dir = r.path(raw, "data_dir", "") or path.parent

    tls_raw = r.table(raw, "tls")
    r.unknown(tls_raw, _TLS_KEYS, "tls.")
    cert = r.path(tls_raw, "cert", "tls.")
    key = r.path(tls_raw, "key", "tls.")
    tls_defaults = TlsConfig(Path(), Path())
    handshake = r.get(tls_raw, "handshake_timeout", float, "tls.", tls_defaults.handshake_timeout)
    reload_iv = r.get(tls_raw, "reload_interval", float, "tls.", tls_defaults.reload_interval)
    for name, val in (("handshake_timeout", handshake), ("reload_interval", reload_iv)):
        if val is not None and val <= 0:
            r.problem(f"tls.{name}", f"must be greater than 0, got {val}")
    tls = TlsConfig(cert or Path(), key or Path(), handshake or tls_defaults.handshake_timeout,
                    reload_iv or tls_defaults.reload_interval)

    dir_raw = r.table(raw, "directory")
    backend = r.get(dir_raw, "backend", str, "directory.", "file") or "file"
    options = {k: v for k, v in dir_raw.items() if k != "backend"}
    directory = DirectoryConfig(backend, MappingProxyType(options), path.parent)

    listeners = _parse_listeners(r, r.table(raw, "listeners"), tls)

    submission = _positive_record(r, SubmissionConfig, r.table(raw, "submission"), "submission.")
    security = _positive_record(r, SecurityConfig, r.table(raw, "security"), "security.")
    pop3 = _positive_record(r, Pop3Config, r.table(raw, "pop3"), "pop3.")
    if pop3.max_line_length < MIN_POP3_LINE_LENGTH:
        r.problem("pop3.max_line_length", f"must be at least {MIN_POP3_LINE_LENGTH} "
                  f"(RFC 2449 §4), got {pop3.max_line_length}")
    imap = _positive_record(r, ImapConfig, r.table(raw, "imap"), "imap.")
    if imap.unauthenticated_max_literal_size > imap.max_literal_size:
        r.problem("imap.unauthenticated_max_literal_size", "must not exceed "
                  f"imap.max_literal_size ({imap.max_literal_size})")
    if imap.max_line_length < MIN_IMAP_LINE_LENGTH:
        r.problem("imap.max_line_length", f"must be at least {MIN_IMAP_LINE_LENGTH} "
                  f"(RFC 7162 §4), got {imap.max_line_length}")

    log_level = r.get(raw, "log_level", str, "", "info") or "info"
    if log_level not in _LOG_LEVELS:
        r.problem("log_level", f"{log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
    grace = r.get(raw, "shutdown_grace", float, "", 10.0)
    if grace is None or grace < 0:
        r.problem("shutdown_grace", f"must be 0 or more seconds, got {grace}")
        grace = 10.0

    if r.problems:
        raise ConfigError(path, r.problems)
    return Config(
        path=path, hostname=hostname, domains=tuple(domains), data_dir=data_dir, tls=tls,
        directory=directory, listeners=listeners, submission=submission, security=security,
        pop3=pop3, imap=imap, log_level=log_level, shutdown_grace=grace,
    )


def _parse_listeners(r: _Reader, raw: dict[str, Any], tls: TlsConfig) -> tuple[ListenerConfig, ...]:
    if not raw:
        r.problem("listeners", "no listeners: add e.g. [listeners.submission] (see config/)")
        return ()
    result: list[ListenerConfig] = []
    seen_binds: dict[BindAddress, str] = {}
    for name, table in raw.items():
        prefix = f"listeners.{name}."
        if not _LISTENER_NAME.match(name):
            r.problem(f"listeners.{name}", "name must be letters, digits, '_' or '-'")
        if not isinstance(table, dict):
            r.problem(f"listeners.{name}", "expected a table")
            continue
        r.unknown(table, _LISTENER_KEYS, prefix)
        protocol = r.get(table, "protocol", str, prefix)
        if protocol is not None and protocol not in get_args(Protocol):
            r.problem(prefix + "protocol", f"{protocol!r} is not one of submission, imap, pop3")
        elif protocol is not None and protocol not in IMPLEMENTED_PROTOCOLS:
            r.problem(prefix + "protocol",
                      f"{protocol!r} is not available in this version yet; remove this listener")
        mode = r.get(table, "tls", str, prefix)
        if mode is not None and mode not in get_args(TlsMode):
            r.problem(prefix + "tls", f"{mode!r} is not one of starttls, implicit")
        binds: list[BindAddress] = []
        raw_bind = table.get("bind")
        if not isinstance(raw_bind, list) or not raw_bind:
            r.problem(prefix + "bind", 'missing or empty: e.g. ["0.0.0.0:587", "[::]:587"]')
        else:
            for i, b in enumerate(raw_bind):
                key = f"{prefix}bind[{i}]"
                if not isinstance(b, str):
                    r.problem(key, f"expected a string, got {b!r}")
                    continue
                try:
                    addr = parse_bind(b)
                except ValueError as exc:
                    r.problem(key, f"{b!r}: {exc}")
                    continue
                if addr.port != 0 and addr in seen_binds:
                    r.problem(key, f"{b} is already used by listener {seen_binds[addr]!r}")
                seen_binds[addr] = name
                binds.append(addr)
        has_cert, has_key = "cert" in table, "key" in table
        if has_cert != has_key:
            r.problem(prefix + ("key" if has_cert else "cert"),
                      "a listener's own certificate needs both cert and key")
        own_cert = r.path(table, "cert", prefix) if has_cert else None
        own_key = r.path(table, "key", prefix) if has_key else None
        result.append(ListenerConfig(
            name=name, protocol=cast(Protocol, protocol or "submission"),
            tls=cast(TlsMode, mode or "implicit"), bind=tuple(binds),
            cert=own_cert or tls.cert, key=own_key or tls.key,
        ))
    return tuple(result)
