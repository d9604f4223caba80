"""Outbound routes: where mail for a domain goes (MX or a smarthost) and how strict its TLS is.

`parse_delivery()` validates a `[delivery]` TOML table the way config/load.py validates the rest
of the file: every problem at once, keyed by dotted path, each with the fix. It is kept free of
config/ imports so config/load.py can import it without a cycle.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, get_args

import dns.exception
import dns.name

from mailkeep.proto.address import is_numeric_domain

TlsPolicy = Literal["may", "encrypt", "verify"]
SmarthostTls = Literal["starttls", "implicit", "none"]

# Strictness order: a domain's policy can raise its route's default, never lower it.
_POLICY_RANK: dict[str, int] = {"may": 0, "encrypt": 1, "verify": 2}

MX_ROUTE_NAME = "mx"
# RFC 5321 §4.5.4.1 / IANA: SMTP relay between MTAs is port 25.
DEFAULT_MX_PORT = 25
# RFC 6409 §3.1 (submission, STARTTLS) and RFC 8314 §3.3 (submissions, implicit TLS).
SMARTHOST_DEFAULT_PORTS: dict[str, int] = {"starttls": 587, "implicit": 465, "none": 25}
# Not in RFC 5321; Postfix smtp_connect_timeout is 30 s.
DEFAULT_CONNECT_TIMEOUT = 30.0
# RFC 5321 §4.5.3.2.1-5: 5 minutes for the greeting and for MAIL, RCPT and most replies.
DEFAULT_COMMAND_TIMEOUT = 300.0
# RFC 5321 §4.5.3.2.6: 10 minutes for the reply to the final "." of DATA.
DEFAULT_DATA_TIMEOUT = 600.0
# dnspython's default resolver lifetime is 5 s; Postfix waits on the stub resolver's own
# retries (RES_TIMEOUT 5 s x 2 attempts); 10 s per lookup leaves room for one retry.
DEFAULT_DNS_TIMEOUT = 10.0
# RFC 1035 §4.2: DNS servers listen on port 53 (UDP and TCP).
DNS_PORT = 53

_ROUTE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")

_DELIVERY_KEYS = {
    "default_route", "routes", "domains", "tls_policy", "dns_servers", "dns_timeout", "port",
    "connect_timeout", "command_timeout", "data_timeout", "helo_name", "ca_file", "mta_sts",
    "ipv6",
    # The queue's own keys (relay/queue_config.py parses them).
    "retry_schedule", "max_lifetime", "delay_warning", "concurrency", "local_domains",
}
_SMARTHOST_KEYS = {"type", "host", "port", "tls", "credentials_file", "verify", "ca_file"}


@dataclass(frozen=True, slots=True)
class MxRoute:
    """Direct delivery: the recipient domain's MX hosts (RFC 5321 §5.1)."""

    name: str = MX_ROUTE_NAME
    # RFC 7435 opportunistic security: encrypt when offered, never require it by default.
    default_tls_policy: TlsPolicy = "may"


@dataclass(frozen=True, slots=True)
class SmarthostRoute:
    """Relay everything for the route's domains through one host (a provider's submission)."""

    name: str
    host: str
    port: int
    tls: SmarthostTls = "starttls"
    # Two lines: the user name, then the password. Read at each connection, never logged.
    credentials_file: Path | None = None
    verify: bool = True
    ca_file: Path | None = None

    @property
    def default_tls_policy(self) -> TlsPolicy:
        # A smarthost is a host we chose: its certificate is checked unless told otherwise.
        if self.tls == "none":
            return "may"
        return "verify" if self.verify else "encrypt"


Route = MxRoute | SmarthostRoute


@dataclass(frozen=True, slots=True)
class NameServer:
    host: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def stricter(a: TlsPolicy, b: TlsPolicy) -> TlsPolicy:
    return a if _POLICY_RANK[a] >= _POLICY_RANK[b] else b


def domain_key(domain: str) -> str:
    """The lookup form of a domain: lower-case A-labels (IDNA), no trailing dot.

    Raises ValueError for a name DNS cannot carry (empty label, label over 63 octets...)."""
    text = domain.strip().rstrip(".")
    if not text:
        raise ValueError("empty domain")
    try:
        name = dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"{domain!r} is not a domain name: {exc}") from None
    return name.to_text(omit_final_dot=True).lower()


def is_hostname(value: str) -> bool:
    return bool(_HOSTNAME.match(value.lower().rstrip(".")))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    default_route: str = MX_ROUTE_NAME
    routes: Mapping[str, Route] = field(
        default_factory=lambda: MappingProxyType({MX_ROUTE_NAME: MxRoute()}))
    # Recipient domain (lookup form) -> route name.
    domains: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Recipient domain (lookup form) -> the least TLS that domain's mail may travel with.
    tls_policies: Mapping[str, TlsPolicy] = field(default_factory=lambda: MappingProxyType({}))
    # Empty: the system resolver configuration (/etc/resolv.conf).
    dns_servers: tuple[NameServer, ...] = ()
    dns_timeout: float = DEFAULT_DNS_TIMEOUT
    port: int = DEFAULT_MX_PORT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    data_timeout: float = DEFAULT_DATA_TIMEOUT
    helo_name: str = "localhost"
    # CA bundle for `verify` (MX hosts, and smarthosts without their own ca_file) and for
    # MTA-STS policy fetches; None: the system store.
    ca_file: Path | None = None
    mta_sts: bool = True
    ipv6: bool = True

    def route_for(self, domain: str) -> Route:
        """The route for a recipient domain: its own entry, else the default route."""
        try:
            key = domain_key(domain)
        except ValueError:
            key = domain.lower()
        name = self.domains.get(key, self.default_route)
        return self.routes[name]

    def tls_policy_for(self, domain: str, route: Route | None = None) -> TlsPolicy:
        """The domain's own policy, raised to its route's default when that is stricter."""
        route = route or self.route_for(domain)
        try:
            key = domain_key(domain)
        except ValueError:
            key = domain.lower()
        own = self.tls_policies.get(key)
        return route.default_tls_policy if own is None else stricter(own, route.default_tls_policy)


T = TypeVar("T")
_KIND_NAMES: dict[type, str] = {float: "a number of seconds", int: "a whole number",
                                str: "a string", bool: "true or false"}


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{key}: {message}")

    def unknown(self, table: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for key in sorted(set(table) - allowed):
            self.add(prefix + key, f"unknown key (known keys here: {', '.join(sorted(allowed))})")

    def get(self, table: Mapping[str, Any], key: str, kind: type[T], prefix: str,
            default: T) -> T:
        if key not in table:
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            self.add(prefix + key, f"expected {_KIND_NAMES.get(kind, kind.__name__)}, "
                     f"got {value!r}")
            return default
        return value

    def positive(self, table: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
        value = self.get(table, key, float, prefix, default)
        if value <= 0:
            self.add(prefix + key, f"must be greater than 0 seconds, got {value}")
            return default
        return value

    def port(self, table: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
        value = self.get(table, key, int, prefix, default)
        if not 1 <= value <= 65535:
            self.add(prefix + key, f"port {value} out of range 1-65535")
            return default
        return value

    def table(self, table: Mapping[str, Any], key: str, prefix: str) -> dict[str, Any]:
        value = table.get(key, {})
        if not isinstance(value, dict):
            self.add(prefix + key, "expected a table")
            return {}
        return value

    def path(self, table: Mapping[str, Any], key: str, prefix: str, base: Path) -> Path | None:
        value = self.get(table, key, str, prefix, "")
        if not value:
            return None
        return Path(os.path.normpath(base / value))


def parse_name_server(value: str) -> NameServer:
    """ "192.0.2.53", "192.0.2.53:5353", "2001:db8::53" or "[2001:db8::53]:5353"."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", value)
    if m:
        host, port_text = m.group(1), m.group(2)
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host, port_text = value, None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("not an IP address (DNS servers are given by address, "
                         'e.g. "192.0.2.53" or "[2001:db8::53]:5353")') from None
    port = int(port_text) if port_text else DNS_PORT
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1-65535")
    return NameServer(host, port)


def parse_delivery(raw: Mapping[str, Any], base_dir: Path, *,
                   hostname: str | None = None) -> tuple[DeliveryConfig, list[str]]:
    """Validate the `[delivery]` table. Paths are relative to `base_dir` (the config's folder).

    Returns the configuration and every problem found ("delivery.routes.up.port: ..."); when
    there are problems the configuration is only a best effort and must not be used."""
    p = _Problems()
    pre = "delivery."
    p.unknown(raw, _DELIVERY_KEYS, pre)

    routes: dict[str, Route] = {MX_ROUTE_NAME: MxRoute()}
    for name, table in p.table(raw, "routes", pre).items():
        route = _parse_route(p, name, table, base_dir)
        if route is not None:
            routes[name] = route

    default_route = p.get(raw, "default_route", str, pre, MX_ROUTE_NAME)
    if default_route not in routes:
        p.add(pre + "default_route", f"{default_route!r} is not \"mx\" or a route defined "
              f"under [delivery.routes] (defined: {', '.join(sorted(routes))})")
        default_route = MX_ROUTE_NAME

    domains: dict[str, str] = {}
    for domain, target in p.table(raw, "domains", pre).items():
        key = f'{pre}domains."{domain}"'
        normal = _domain_or_problem(p, key, domain)
        if not isinstance(target, str) or target not in routes:
            p.add(key, f"{target!r} is not \"mx\" or a route defined under [delivery.routes] "
                  f"(defined: {', '.join(sorted(routes))})")
            continue
        if normal is not None:
            if normal in domains:
                p.add(key, f"{normal} is listed twice (names compare case-insensitively)")
            domains[normal] = target

    policies: dict[str, TlsPolicy] = {}
    for domain, policy in p.table(raw, "tls_policy", pre).items():
        key = f'{pre}tls_policy."{domain}"'
        normal = _domain_or_problem(p, key, domain)
        if policy not in get_args(TlsPolicy):
            p.add(key, f"{policy!r} is not one of may, encrypt, verify")
            continue
        if normal is not None:
            policies[normal] = policy

    # Never downgrade silently: a domain that demands TLS cannot be routed over a plaintext
    # or unverified smarthost; say so now rather than defer its mail forever.
    for domain, policy in sorted(policies.items()):
        route = routes[domains.get(domain, default_route)]
        if not isinstance(route, SmarthostRoute):
            continue
        where = f'{pre}tls_policy."{domain}"'
        if route.tls == "none" and policy != "may":
            p.add(where, f"{policy!r} needs TLS but its route {route.name!r} has tls = \"none\": "
                  "use tls = \"starttls\" or \"implicit\" on that route")
        elif policy == "verify" and not route.verify:
            p.add(where, f"\"verify\" needs a checked certificate but route {route.name!r} has "
                  "verify = false: set verify = true (and ca_file for a private CA)")

    servers: list[NameServer] = []
    raw_servers = raw.get("dns_servers", [])
    if not isinstance(raw_servers, list):
        p.add(pre + "dns_servers", 'expected a list, e.g. ["192.0.2.53", "[2001:db8::53]:53"]')
        raw_servers = []
    for i, value in enumerate(raw_servers):
        if not isinstance(value, str):
            p.add(f"{pre}dns_servers[{i}]", f"expected a string, got {value!r}")
            continue
        try:
            servers.append(parse_name_server(value))
        except ValueError as exc:
            p.add(f"{pre}dns_servers[{i}]", f"{value!r}: {exc}")

    helo = p.get(raw, "helo_name", str, pre, "")
    if helo and not is_hostname(helo):
        p.add(pre + "helo_name", f"{helo!r} is not a fully qualified host name "
              "(RFC 5321 §4.1.1.1: EHLO names this host by its domain name)")
        helo = ""
    helo = (helo or hostname or socket.getfqdn()).lower().rstrip(".")

    ca_file = p.path(raw, "ca_file", pre, base_dir)
    if ca_file is not None and not ca_file.is_file():
        p.add(pre + "ca_file", f"{ca_file} does not exist or is not a file")

    config = DeliveryConfig(
        default_route=default_route,
        routes=MappingProxyType(routes),
        domains=MappingProxyType(domains),
        tls_policies=MappingProxyType(policies),
        dns_servers=tuple(servers),
        dns_timeout=p.positive(raw, "dns_timeout", pre, DEFAULT_DNS_TIMEOUT),
        port=p.port(raw, "port", pre, DEFAULT_MX_PORT),
        connect_timeout=p.positive(raw, "connect_timeout", pre, DEFAULT_CONNECT_TIMEOUT),
        command_timeout=p.positive(raw, "command_timeout", pre, DEFAULT_COMMAND_TIMEOUT),
        data_timeout=p.positive(raw, "data_timeout", pre, DEFAULT_DATA_TIMEOUT),
        helo_name=helo,
        ca_file=ca_file,
        mta_sts=p.get(raw, "mta_sts", bool, pre, True),
        ipv6=p.get(raw, "ipv6", bool, pre, True),
    )
    return config, p.items


def _domain_or_problem(p: _Problems, key: str, domain: str) -> str | None:
    try:
        normal = domain_key(domain)
    except ValueError as exc:
        p.add(key, str(exc))
        return None
    if not is_hostname(normal):
        p.add(key, f"{domain!r} is not a domain name")
        return None
    if is_numeric_domain(normal):
        # RFC 1123 §2.1: an all-numeric top label makes it an IP address, never a domain
        # (recipients like that are refused at RCPT, so such a key would never match).
        p.add(key, f"{domain!r} is an IP address, not a domain name")
        return None
    return normal


def _parse_route(p: _Problems, name: str, table: Any, base_dir: Path) -> Route | None:
    prefix = f"delivery.routes.{name}."
    if not _ROUTE_NAME.match(name):
        p.add(f"delivery.routes.{name}", "a route name is letters, digits, '_' or '-'")
        return None
    if name == MX_ROUTE_NAME:
        p.add(f"delivery.routes.{name}", '"mx" is the built-in direct route; '
              "give this route another name")
        return None
    if not isinstance(table, dict):
        p.add(f"delivery.routes.{name}", "expected a table")
        return None
    kind = table.get("type")
    if kind == "mx":
        p.unknown(table, {"type"}, prefix)
        return MxRoute(name=name)
    if kind != "smarthost":
        p.add(prefix + "type", f'{kind!r} is not "mx" or "smarthost" (required)')
        return None
    p.unknown(table, _SMARTHOST_KEYS, prefix)

    host = p.get(table, "host", str, prefix, "")
    if not host:
        p.add(prefix + "host", 'missing: the smarthost\'s name, e.g. "smtp.provider.example"')
    elif not (is_hostname(host) or _is_ip(host)):
        p.add(prefix + "host", f"{host!r} is not a host name or IP address")
    tls = p.get(table, "tls", str, prefix, "starttls")
    if tls not in get_args(SmarthostTls):
        p.add(prefix + "tls", f"{tls!r} is not one of starttls, implicit, none")
        tls = "starttls"
    port = p.port(table, "port", prefix, SMARTHOST_DEFAULT_PORTS[tls])
    verify = p.get(table, "verify", bool, prefix, True)

    credentials = p.path(table, "credentials_file", prefix, base_dir)
    if credentials is not None:
        if tls == "none":
            # RFC 4954 §4 / our promise: credentials never travel in plaintext.
            p.add(prefix + "credentials_file", 'credentials are only sent inside TLS: set tls = '
                  '"starttls" or "implicit", or remove credentials_file')
        problem = credentials_file_problem(credentials)
        if problem:
            p.add(prefix + "credentials_file", problem)
    ca_file = p.path(table, "ca_file", prefix, base_dir)
    if ca_file is not None and not ca_file.is_file():
        p.add(prefix + "ca_file", f"{ca_file} does not exist or is not a file")
    return SmarthostRoute(name=name, host=host.lower().rstrip("."), port=port,
                          tls=tls,  # type: ignore[arg-type]
                          credentials_file=credentials, verify=verify, ca_file=ca_file)


def credentials_file_problem(path: Path) -> str | None:
    """Why a credentials file cannot serve, or None. Never reads or reports its content."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror} (two lines: user name, then password)"
    if not path.is_file():
        return f"{path} is not a file"
    if st.st_mode & 0o007:
        return (f"{path} is readable by other users (mode {st.st_mode & 0o777:04o}): "
                f"chmod 600 {path}")
    return None
