"""TOML -> Config. Every problem is collected and reported at once, keyed by dotted path."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast, get_args

from mailkeep.config.hints import admin_command, command, config_in_use
from mailkeep.config.model import (
    MAX_WORKERS,
    AuthMode,
    BindAddress,
    Config,
    DirectoryConfig,
    DkimDomain,
    ImapConfig,
    ListenerConfig,
    LogFormat,
    Pop3Config,
    Protocol,
    Rate,
    SecurityConfig,
    SpecialUseConfig,
    StoreConfig,
    SubmissionConfig,
    TlsConfig,
    TlsMode,
    default_workers,
)
from mailkeep.config.reader import Reader as _Reader
from mailkeep.config.reader import positive_record as _positive_record
from mailkeep.config.tls_table import check_tls_listeners, parse_tls, unreadable_files
from mailkeep.proto.address import is_numeric_domain
from mailkeep.proto.imap import specialuse
from mailkeep.relay.queue_config import parse_queue
from mailkeep.relay.routes import parse_delivery
from mailkeep.store.base import InvalidName
from mailkeep.store.names import folder_name

# Protocols that this version can serve; the others are reserved names in the schema.
IMPLEMENTED_PROTOCOLS: frozenset[str] = frozenset({"submission", "smtp", "relay", "pop3",
                                                   "imap", "autoconfig", "admin"})
# tls = "none" is for legacy devices on an application connector, for plain HTTP on an
# autoconfig listener (Thunderbird fetches http://autoconfig.DOMAIN/: no password crosses it)
# and on the admin listener (metrics and health for a scraper on loopback; the default).
_PLAINTEXT_PROTOCOLS = ("relay", "autoconfig", "admin")
# RFC 2449 §4: clients may send POP3 commands of up to 255 octets including CRLF.
MIN_POP3_LINE_LENGTH = 255
# RFC 7162 §4: IMAP servers SHOULD accept command lines of at least 8192 octets.
MIN_IMAP_LINE_LENGTH = 8192
# RFC 1123 §2.1 host names: labels of letters, digits and inner hyphens, 253 octets in all.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_LISTENER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)

_TOP_KEYS = {"hostname", "domains", "data_dir", "tls", "directory", "listeners",
             "submission", "security", "pop3", "imap", "log_level", "log_format",
             "shutdown_grace", "delivery", "dkim", "trusted_proxies", "run_as", "allow_root",
             "mail_dir", "store", "pid_file", "workers"}
_LISTENER_KEYS = {"protocol", "tls", "bind", "cert", "key", "proxy_protocol"}
# Connector policy keys, and the SMTP listener kinds each is meaningful for.
_CONNECTOR_KEYS: dict[str, tuple[str, ...]] = {
    "clients": ("relay",), "auth": ("relay",), "senders": ("relay",),
    "may_relay": ("relay",), "rate": ("relay", "smtp"),
    "max_message_size": ("relay", "smtp", "submission"),
    "reject_dmarc_failures": ("smtp",),
    "auth_groups": ("relay", "submission"),
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|min|minute|h|hour|day)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0,
               "h": 3600.0, "hour": 3600.0, "day": 86400.0}
_RUN_AS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")
_SENDER_PATTERN = re.compile(r"^([^@\s<>\"]{1,64})?@[a-z0-9.-]{1,253}$")


class ConfigError(Exception):
    """Every problem found in a configuration file, one per line."""

    def __init__(self, path: Path | str, problems: list[str],
                 files: list[str] | None = None) -> None:
        self.path = Path(path)
        self.problems = problems
        # Certificate and key files that cannot be opened, found beside the configuration's
        # own problems (checked in depth only once the rest is valid, tls/inventory.py):
        # kept apart so `problems` says what the text gets wrong whatever the disk holds.
        self.files = files or []
        super().__init__(f"{path}: " + "; ".join(self.problems + self.files))

    def report(self) -> str:
        every = self.problems + self.files
        lines = [f"{self.path}: {len(every)} problem(s):"]
        lines += [f"  {p}" for p in every]
        return "\n".join(lines)


def load_config(path: Path | str) -> Config:
    """Read and validate a configuration file; raise ConfigError listing every problem."""
    reading = read_config(path)
    if reading.problems or reading.config is None:
        # Certificates are checked in depth once the rest is valid (tls/inventory.py); a
        # missing or unreadable file is worth saying now, with the rest, not one run later.
        cfg = reading.config
        files = unreadable_files(cfg.tls, cfg.listeners) if cfg is not None else []
        raise ConfigError(reading.path, reading.problems, files)
    return reading.config


@dataclass(frozen=True, slots=True)
class ConfigReading:
    """One reading of a configuration file. `config` is the best reading of it even when
    there are `problems` (defaults stand in for wrong values): good for further checks that
    list every problem at once (certificates, keys), never for serving. None when the file
    could not be read as TOML at all. `sha256`: of the bytes read (which version was read)."""

    path: Path
    config: Config | None
    problems: list[str]
    sha256: str

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.problems


def read_config(path: Path | str) -> ConfigReading:
    """Read and validate a configuration file, recording every problem (never raising)."""
    path = Path(path).absolute()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        init = command("init", str(path.parent), "--hostname", "HOSTNAME").replace(
            "HOSTNAME", '"$(hostname -f)"')
        written = "" if path.name == "mailkeep.toml" else \
            f" (it writes {path.parent / 'mailkeep.toml'})"
        return ConfigReading(path, None, [f"file not found: create one with `{init}`{written}, "
                                          "or give --config (or MAILKEEP_CONFIG) the right "
                                          "file"], "")
    except OSError as exc:
        return ConfigReading(path, None, [f"cannot read: {exc}"], "")
    config_in_use(path)
    digest = hashlib.sha256(data).hexdigest()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return ConfigReading(path, None, [f"cannot read: {exc}"], digest)
    except tomllib.TOMLDecodeError as exc:
        return ConfigReading(path, None, [f"not valid TOML: {exc}"], digest)
    config, problems = _parse(raw, path)
    return ConfigReading(path, config, problems, digest)


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


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate a parsed TOML document. Paths are relative to the config file's folder."""
    config, problems = _parse(raw, path)
    if problems:
        raise ConfigError(path, problems)
    return config


def _parse(raw: dict[str, Any], path: Path) -> tuple[Config, list[str]]:
    """The configuration (defaults where values are wrong) and every problem found."""
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
            elif is_numeric_domain(d):
                # RFC 1123 §2.1: no top-level domain is all-numeric; this is an address.
                r.problem(f"domains[{i}]", f"{d!r} is an IP address, not a mail domain")
            else:
                domains.append(d.lower().rstrip("."))

    data_dir = r.path(raw, "data_dir", "") or path.parent
    mail_dir = r.path(raw, "mail_dir", "") if "mail_dir" in raw else None
    pid_file = r.path(raw, "pid_file", "") if "pid_file" in raw else None

    tls = parse_tls(r, raw, data_dir=data_dir, hostname=hostname)

    dir_raw = r.table(raw, "directory")
    backend = r.get(dir_raw, "backend", str, "directory.", "file") or "file"
    options = {k: v for k, v in dir_raw.items() if k != "backend"}
    directory = DirectoryConfig(backend, MappingProxyType(options), path.parent)

    listeners = _parse_listeners(r, r.table(raw, "listeners"), tls)
    check_tls_listeners(r, tls, hostname, listeners)

    submission = _positive_record(r, SubmissionConfig, r.table(raw, "submission"), "submission.")
    security = _positive_record(r, SecurityConfig, r.table(raw, "security"), "security.")
    pop3 = _positive_record(r, Pop3Config, r.table(raw, "pop3"), "pop3.")
    if pop3.max_line_length < MIN_POP3_LINE_LENGTH:
        r.problem("pop3.max_line_length", f"must be at least {MIN_POP3_LINE_LENGTH} "
                  f"(RFC 2449 §4), got {pop3.max_line_length}")
    imap_raw = r.table(raw, "imap")
    imap = _positive_record(r, ImapConfig, imap_raw, "imap.")
    imap = replace(imap, special_use=_parse_special_use(
        r, r.table(imap_raw, "special_use", "imap."), "imap.special_use."))
    store = _parse_store(r, r.table(raw, "store"), "store.")
    if imap.unauthenticated_max_literal_size > imap.max_literal_size:
        r.problem("imap.unauthenticated_max_literal_size", "must not exceed "
                  f"imap.max_literal_size ({imap.max_literal_size})")
    if imap.max_line_length < MIN_IMAP_LINE_LENGTH:
        r.problem("imap.max_line_length", f"must be at least {MIN_IMAP_LINE_LENGTH} "
                  f"(RFC 7162 §4), got {imap.max_line_length}")

    log_level = r.get(raw, "log_level", str, "", "info") or "info"
    if log_level not in _LOG_LEVELS:
        r.problem("log_level", f"{log_level!r} is not one of {', '.join(_LOG_LEVELS)}")
    log_format = r.get(raw, "log_format", str, "", "text") or "text"
    if log_format not in _LOG_FORMATS:
        r.problem("log_format", f"{log_format!r} is not one of {', '.join(_LOG_FORMATS)}")
        log_format = "text"
    grace = r.get(raw, "shutdown_grace", float, "", 10.0)
    if grace is None or grace < 0:
        r.problem("shutdown_grace", f"must be 0 or more seconds, got {grace}")
        grace = 10.0

    workers = _workers(r, raw.get("workers", "auto"))
    if workers > 1 and tls.acme is not None:
        # ACME challenges are answered from the memory of the process that asked for the
        # certificate, and the CA's validation may reach any worker.
        if "workers" in raw:
            r.problem("workers", f"{workers} workers cannot be used with [tls.acme] yet (the "
                      "CA's challenge must reach the worker that asked): set workers = 1")
        workers = 1

    delivery_raw = r.table(raw, "delivery")
    delivery, delivery_problems = parse_delivery(delivery_raw, path.parent, hostname=hostname)
    r.problems.extend(delivery_problems)
    queue, queue_problems = parse_queue(delivery_raw, routes=delivery.routes,
                                        local_domains=tuple(domains))
    r.problems.extend(queue_problems)
    if queue.fallback_routes:
        # Unknown local parts of these domains are routed like remote mail of the domain.
        delivery = replace(delivery, domains=MappingProxyType(
            {**delivery.domains, **queue.fallback_routes}))
    dkim = _parse_dkim(r, r.table(raw, "dkim"), path, domains)
    trusted = _networks(r, raw.get("trusted_proxies", []), "trusted_proxies")
    run_as = r.get(raw, "run_as", str, "", "") or None
    if run_as is not None and not _RUN_AS.fullmatch(run_as):
        r.problem("run_as", f"{run_as!r} is not a user name (or user:group)")
    allow_root = bool(r.get(raw, "allow_root", bool, "", False))
    for lst in listeners:
        if lst.proxy_protocol and not trusted:
            r.problem(f"listeners.{lst.name}.proxy_protocol", "PROXY headers are believed "
                      "only from trusted_proxies, which is empty: list your proxies' "
                      'addresses, e.g. trusted_proxies = ["10.0.0.0/8"]')

    return Config(
        path=path, hostname=hostname, domains=tuple(domains), data_dir=data_dir, tls=tls,
        directory=directory, listeners=listeners, submission=submission, security=security,
        pop3=pop3, imap=imap, store=store, log_level=log_level,
        log_format=cast(LogFormat, log_format), shutdown_grace=grace, delivery=delivery,
        queue=queue, dkim=MappingProxyType(dkim), trusted_proxies=tuple(trusted),
        run_as=run_as, allow_root=allow_root, mail_dir=mail_dir, pid_file=pid_file,
        workers=workers,
    ), r.problems


def _workers(r: _Reader, value: object) -> int:
    """`workers`: 1..MAX_WORKERS, or "auto" (one per core)."""
    if value == "auto":
        return default_workers()
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    r.problem("workers", f'must be a number of processes from 1 to {MAX_WORKERS} or "auto", '
              f"got {value!r}")
    return 1


def _parse_special_use(r: _Reader, table: dict[str, Any], prefix: str) -> SpecialUseConfig:
    """[imap.special_use]: create = bool, and per use a list of folder names (non-empty,
    valid folder names) replacing that use's defaults."""
    keys = {key: use for use, key in specialuse.CONFIG_KEYS.items()}
    r.unknown(table, {"create", *keys}, prefix)
    create = r.get(table, "create", bool, prefix, True)
    names = dict(specialuse.DEFAULT_NAMES)
    for key, use in keys.items():
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, list) or not value or \
                not all(isinstance(v, str) for v in value):
            r.problem(prefix + key, 'expected a non-empty list of folder names, e.g. '
                      '["Sent", "Sent Items"]')
            continue
        bad = [v for v in value if not _valid_folder(v)]
        if bad:
            r.problem(prefix + key, f"{bad[0]!r} is not a valid folder name (no leading '.', "
                      "'/', control characters or empty levels; '.' separates levels)")
            continue
        names[use] = tuple(value)
    return SpecialUseConfig(bool(create), MappingProxyType(names))


def _valid_folder(name: str) -> bool:
    try:
        canonical = folder_name(name)
    except InvalidName:
        return False
    return canonical != "INBOX"


def _parse_store(r: _Reader, table: dict[str, Any], prefix: str) -> StoreConfig:
    """[store]: quota and quota_messages (0 or more; 0 = no limit), quota_full_retry > 0."""
    defaults = StoreConfig()
    r.unknown(table, {"quota", "quota_messages", "quota_full_retry"}, prefix)
    quota = r.get(table, "quota", int, prefix, defaults.quota)
    messages = r.get(table, "quota_messages", int, prefix, defaults.quota_messages)
    retry = r.get(table, "quota_full_retry", float, prefix, defaults.quota_full_retry)
    for key, value in (("quota", quota), ("quota_messages", messages)):
        if value is not None and value < 0:
            r.problem(prefix + key, f"must be 0 (no limit) or more, got {value}")
    if retry is not None and retry <= 0:
        r.problem(prefix + "quota_full_retry", f"must be greater than 0, got {retry}")
    return StoreConfig(max(quota or 0, 0), max(messages or 0, 0),
                       retry if retry and retry > 0 else defaults.quota_full_retry)


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
        r.unknown(table, _LISTENER_KEYS | set(_CONNECTOR_KEYS), prefix)
        protocol = r.get(table, "protocol", str, prefix)
        if protocol is not None and protocol not in get_args(Protocol):
            r.problem(prefix + "protocol", f"{protocol!r} is not one of "
                      + ", ".join(get_args(Protocol)))
            protocol = None
        elif protocol is not None and protocol not in IMPLEMENTED_PROTOCOLS:
            r.problem(prefix + "protocol",
                      f"{protocol!r} is not available in this version yet; remove this listener")
        # The admin listener is plain HTTP on loopback unless it says otherwise.
        mode = r.get(table, "tls", str, prefix, "none" if protocol == "admin" else None)
        if mode is not None and mode not in get_args(TlsMode):
            r.problem(prefix + "tls", f"{mode!r} is not one of starttls, implicit, none")
            mode = None
        if mode == "none" and protocol not in (None, *_PLAINTEXT_PROTOCOLS):
            r.problem(prefix + "tls", 'tls = "none" is only for protocol = "relay" (legacy '
                      'devices that cannot do TLS), "autoconfig" and "admin" (plain HTTP); '
                      "this listener needs starttls or implicit")
        if protocol == "autoconfig" and mode == "starttls":
            r.problem(prefix + "tls", 'HTTP has no STARTTLS: an autoconfig listener is '
                      'tls = "none" (plain HTTP, port 80) or "implicit" (HTTPS, port 443)')
        if protocol == "admin" and mode == "starttls":
            r.problem(prefix + "tls", 'HTTP has no STARTTLS: an admin listener is '
                      'tls = "none" (plain HTTP, the default) or "implicit" (HTTPS)')
        if protocol == "smtp" and mode == "implicit":
            r.problem(prefix + "tls", 'an inbound MX (protocol = "smtp") is reached on port 25 '
                      'with STARTTLS (RFC 3207): use tls = "starttls"')
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
        listener = ListenerConfig(
            name=name, protocol=cast(Protocol, protocol or "submission"),
            tls=cast(TlsMode, mode or "implicit"), bind=tuple(binds),
            cert=own_cert or tls.cert, key=own_key or tls.key,
            proxy_protocol=bool(r.get(table, "proxy_protocol", bool, prefix, False)),
        )
        result.append(_parse_connector(r, listener, table, prefix))
    _check_autoconfig(r, result)
    return tuple(result)


def _check_autoconfig(r: _Reader, listeners: list[ListenerConfig]) -> None:
    """An autoconfig listener must have something to advertise: a client needs a way in
    (imap or pop3) and a way out (submission)."""
    protocols = {lst.protocol for lst in listeners}
    for lst in listeners:
        if lst.protocol != "autoconfig":
            continue
        if not protocols & {"imap", "pop3"} or "submission" not in protocols:
            r.problem(f"listeners.{lst.name}", "nothing to advertise: account "
                      "autoconfiguration needs an imap or pop3 listener and a submission "
                      "listener")


def _parse_connector(r: _Reader, listener: ListenerConfig, table: dict[str, Any],
                     prefix: str) -> ListenerConfig:
    """The policy keys of an SMTP connector (see ListenerConfig)."""
    protocol = listener.protocol
    for key, kinds in _CONNECTOR_KEYS.items():
        if key in table and protocol not in kinds:
            r.problem(prefix + key, f"only for protocol = {' or '.join(map(repr, kinds))}")
    if protocol == "submission":
        return replace(listener, auth="required", may_relay=True,
                       max_message_size=_size(r, table, prefix),
                       auth_groups=_groups(r, table, prefix))
    if protocol == "smtp":
        return replace(listener, auth="none", may_relay=False, rate=_rate(r, table, prefix),
                       max_message_size=_size(r, table, prefix),
                       reject_dmarc_failures=bool(r.get(table, "reject_dmarc_failures", bool,
                                                        prefix, False)))
    if protocol != "relay":
        return listener
    clients: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    raw_clients = table.get("clients")
    if not isinstance(raw_clients, list) or not raw_clients:
        r.problem(prefix + "clients", 'required: the networks allowed to use this connector, '
                  'e.g. ["192.0.2.0/24", "2001:db8::/64"]')
    else:
        clients = _networks(r, raw_clients, prefix + "clients")
    auth = r.get(table, "auth", str, prefix, "none") or "none"
    if auth not in get_args(AuthMode):
        r.problem(prefix + "auth", f"{auth!r} is not one of none, optional, required")
        auth = "none"
    if auth == "required" and listener.tls == "none":
        r.problem(prefix + "auth", 'auth = "required" with tls = "none" would need passwords '
                  'in plaintext: use tls = "starttls" or "implicit" (AUTH is only offered '
                  "inside TLS)")
    senders: list[str] = []
    raw_senders = table.get("senders", [])
    if not isinstance(raw_senders, list):
        r.problem(prefix + "senders", 'expected a list, e.g. ["@example.test", '
                  '"billing@example.test"]')
        raw_senders = []
    for i, value in enumerate(raw_senders):
        text = str(value).strip().lower()
        if not _SENDER_PATTERN.match(text):
            r.problem(f"{prefix}senders[{i}]", f"{value!r} is not an address or @domain")
            continue
        senders.append(text)
    may_relay = bool(r.get(table, "may_relay", bool, prefix, False))
    if may_relay and auth != "required" and any(n.prefixlen == 0 for n in clients):
        # The legacy server's fault, in one line of config: refuse to start.
        r.problem(prefix + "may_relay", "an open relay: anyone on the internet (clients "
                  'include 0.0.0.0/0 or ::/0) could send anywhere without a password; '
                  'narrow clients to your networks, or set auth = "required"')
    if not senders and auth != "required":
        r.problem(prefix + "senders", "required when auth is not \"required\": the envelope "
                  'senders this connector accepts, e.g. ["@example.test"]')
    auth_groups = _groups(r, table, prefix)
    if auth_groups and auth == "none":
        r.problem(prefix + "auth_groups", 'needs auth = "optional" or "required" (nobody logs '
                  "in on this connector)")
    return replace(listener, clients=tuple(clients), auth=cast(AuthMode, auth),
                   senders=tuple(senders), may_relay=may_relay, rate=_rate(r, table, prefix),
                   max_message_size=_size(r, table, prefix), auth_groups=auth_groups)


def _groups(r: _Reader, table: dict[str, Any], prefix: str) -> tuple[str, ...]:
    """auth_groups: directory group names (compared in lower case)."""
    if "auth_groups" not in table:
        return ()
    raw = table["auth_groups"]
    if not isinstance(raw, list) or not raw or \
            not all(isinstance(g, str) and g.strip() for g in raw):
        r.problem(prefix + "auth_groups", 'expected a list of group names, e.g. ["printers"]')
        return ()
    return tuple(dict.fromkeys(g.strip().lower() for g in raw))


def _networks(r: _Reader, raw: object,
              key: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if not isinstance(raw, list):
        r.problem(key, 'expected a list of networks, e.g. ["10.0.0.0/8", "::1"]')
        return []
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for i, value in enumerate(raw):
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError:
            r.problem(f"{key}[{i}]", f"{value!r} is not an IP network "
                      '(e.g. "10.0.0.0/8" or "192.0.2.7")')
    return out


def _rate(r: _Reader, table: dict[str, Any], prefix: str) -> Rate | None:
    raw = table.get("rate")
    if raw is None:
        return None
    m = _RATE.match(str(raw)) if isinstance(raw, str) else None
    if m is None or int(m.group(1)) < 1:
        r.problem(prefix + "rate", f'{raw!r} is not a rate like "60/min" (units: s, min, h, day)')
        return None
    return Rate(int(m.group(1)), _RATE_UNITS[m.group(2)])


def _size(r: _Reader, table: dict[str, Any], prefix: str) -> int | None:
    value = r.get(table, "max_message_size", int, prefix, 0)
    if value is None or value == 0:
        return None
    if value < 1024:
        r.problem(prefix + "max_message_size", f"must be at least 1024 bytes, got {value}")
        return None
    return value


def _parse_dkim(r: _Reader, raw: dict[str, Any], config_path: Path,
                domains: list[str]) -> dict[str, DkimDomain]:
    """[dkim.domains."example.test"] selector = "mk1", key = "dkim/example.test.key"."""
    r.unknown(raw, {"domains"}, "dkim.")
    out: dict[str, DkimDomain] = {}
    for domain, table in r.table(raw, "domains", "dkim.").items():
        prefix = f'dkim.domains."{domain}".'
        normal = domain.lower().rstrip(".")
        if normal not in domains:
            r.problem(prefix[:-1], f"not one of the local domains ({', '.join(domains)})")
            continue
        if not isinstance(table, dict):
            r.problem(prefix[:-1], 'expected a table: selector = "...", key = "..."')
            continue
        r.unknown(table, {"selector", "key"}, prefix)
        selector = r.get(table, "selector", str, prefix)
        key = r.path(table, "key", prefix)
        if selector is not None and not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})",
                                                     selector):
            r.problem(prefix + "selector", f"{selector!r} is not a DNS label")
            continue
        if key is not None and not key.is_file():
            keygen = admin_command("dkim", "keygen", normal, *(
                ("--selector", selector) if selector else ()), config=config_path)
            r.problem(prefix + "key", f"{key} does not exist: create it with `{keygen}` "
                      "(it writes dkim/DOMAIN.SELECTOR.key beside the config)")
            continue
        if selector is not None and key is not None:
            out[normal] = DkimDomain(selector, key)
    return out
