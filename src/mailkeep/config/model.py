"""Frozen configuration records. Defaults carry their provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from mailkeep.config import cpus
from mailkeep.proto.imap import specialuse
from mailkeep.relay.queue_config import QueueConfig
from mailkeep.relay.routes import DeliveryConfig

Protocol = Literal["submission", "smtp", "relay", "imap", "pop3", "autoconfig", "admin"]
TlsMode = Literal["starttls", "implicit", "none"]
AuthMode = Literal["none", "optional", "required"]
SMTP_PROTOCOLS = ("submission", "smtp", "relay")
# The daemon's log lines: "text" (one line each, as always) or "json" (one object a line).
LogFormat = Literal["text", "json"]

# RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for the next command.
DEFAULT_IDLE_TIMEOUT = 300.0
# Postfix message_size_limit is 10 MB; common providers accept 25 MB attachments after
# base64, so 25 MiB of message is what users expect from a submission server.
DEFAULT_MAX_MESSAGE_SIZE = 25 * 1024 * 1024
# RFC 5321 §4.5.3.1.8: servers must accept at least 100 recipients.
DEFAULT_MAX_RECIPIENTS = 100
# Postfix smtpd_hard_error_limit (20): errors in one session before we hang up.
DEFAULT_MAX_ERRORS = 20
# RFC 5321 §4.5.3.1.6: 1000 octets per text line including CRLF (998 + CRLF).
DEFAULT_MAX_LINE_LENGTH = 1000
# A stalled handshake must not hold a connection slot. A TLS handshake is two round trips:
# even a 1 s round trip (a bad mobile link) completes in about 4 s. Postfix under stress
# shortens its timeouts to 10 s (smtpd_timeout = ${stress?{10}:{300}}); so do we, always,
# for clients that have not even finished TLS.
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0
# How often certificate files are checked for a renewal (SIGHUP reloads at once).
DEFAULT_TLS_RELOAD_INTERVAL = 30.0
# Dovecot's auth_failure_delay is 2 s; we start slowing down after a few honest typos.
DEFAULT_AUTH_FAILURES_BEFORE_DELAY = 3
DEFAULT_AUTH_FAILURE_DELAY = 1.0
DEFAULT_AUTH_MAX_DELAY = 8.0
DEFAULT_AUTH_FAILURES_BEFORE_BLOCK = 10
DEFAULT_AUTH_BLOCK_SECONDS = 900.0
DEFAULT_AUTH_FAILURE_WINDOW = 900.0
# Dovecot mail_max_userip_connections is 10 per user+IP; per IP overall we allow more.
DEFAULT_MAX_CONNECTIONS_PER_IP = 20
DEFAULT_MAX_CONNECTIONS = 1000
# Before a client has logged in it gets a short idle timeout on every door (Dovecot's login
# processes drop clients that have not logged in within a minute or so of silence; Postfix
# under stress uses 10 s): a silent unauthenticated connection must not hold a slot for the
# 5 to 30 minutes the RFCs ask for once a session is authenticated.
DEFAULT_LOGIN_TIMEOUT = 60.0
# Input held in memory across all sessions (IMAP literals, SMTP DATA being received): past it,
# new uploads are refused with a temporary error instead of growing the process. Enough for
# ten 25 MiB uploads at once.
DEFAULT_MAX_BUFFERED_INPUT = 256 * 1024 * 1024
# File descriptors kept free for the store, logs and the directory: connections are refused
# at accept time before they could use these up (outside testing saw 'Too many open files'
# break delivery for everyone once ~1,100 pending connections held a 1,024 limit).
DEFAULT_DESCRIPTOR_RESERVE = 128
DEFAULT_SHUTDOWN_GRACE = 10.0
# `workers`: processes serving the listeners. More than this is a typo, not a machine.
MAX_WORKERS = 256


def default_workers() -> int:
    """`workers = "auto"` (and the default): one process per core this process may use,
    a container's CPU quota included (config/cpus.py)."""
    return max(1, min(MAX_WORKERS, cpus.usable_cores()))
# RFC 1939 §3: a POP3 autologout timer MUST be at least 10 minutes (Dovecot: 10 minutes).
DEFAULT_POP3_IDLE_TIMEOUT = 600.0
# Dovecot pop3 CLIENT_MAX_BAD_COMMANDS: failed commands in a row before the session closes
# (same value as proto.pop3.machine.MAX_BAD_COMMANDS).
DEFAULT_POP3_MAX_ERRORS = 20
# RFC 2449 §4 says 255 octets per command; SASL responses are exempt (RFC 5034 §4); Dovecot
# accepts 2048 (proto.pop3.machine.MAX_LINE_OCTETS has the full provenance).
DEFAULT_POP3_MAX_LINE_LENGTH = 2048
# RFC 3501 §5.4: an IMAP autologout timer MUST be at least 30 minutes.
DEFAULT_IMAP_IDLE_TIMEOUT = 1800.0
# Dovecot imap CLIENT_MAX_BAD_COMMANDS is 20: BAD replies in a row before "* BYE".
DEFAULT_IMAP_MAX_ERRORS = 20
# Dovecot imap_max_line_length is 64 KiB (proto.imap.receiver.MAX_LINE_OCTETS has the
# provenance): octets of command text, literal data not counted.
DEFAULT_IMAP_MAX_LINE_LENGTH = 65_536
# The APPEND literal is the message: the same 25 MiB as submission's max_message_size.
DEFAULT_IMAP_MAX_LITERAL_SIZE = DEFAULT_MAX_MESSAGE_SIZE
# Dovecot mail_max_userip_connections is 10 per user and client address: two Thunderbird
# installs (five connections each) on two machines must both work.
DEFAULT_IMAP_MAX_CONNECTIONS_PER_USER_IP = 10
# A backstop per account over all addresses (a leaked password used from a botnet).
DEFAULT_IMAP_MAX_CONNECTIONS_PER_USER = 50
# RFC 7888 §5 (LITERAL-): 4096 octets is the non-synchronizing literal limit that clients
# must respect; before login nothing larger is needed (a LOGIN password literal), so nothing
# larger is accepted: an unauthenticated client cannot make the server hold megabytes.
DEFAULT_IMAP_UNAUTHENTICATED_MAX_LITERAL_SIZE = 4096
# RFC 9208: no quota unless configured (0 = unlimited), as Dovecot without its quota plugin.
DEFAULT_QUOTA = 0
DEFAULT_QUOTA_MESSAGES = 0
# A delivery to a full mailbox is retried (452 4.2.2) this long, giving the user a day to
# make room, then bounced (552 5.2.2, RFC 3463 X.2.2 "mailbox full"). Dovecot's LMTP says
# 552 at once unless quota_full_tempfail; Postfix's local(8) defers until the queue lifetime.
DEFAULT_QUOTA_FULL_RETRY = 86400.0


@dataclass(frozen=True, slots=True)
class BindAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CertificateEntry:
    """[tls.certificates.NAME]: a certificate chosen by the client's server name (SNI) on
    every listener. `names` None: the certificate's own DNS SANs, re-read on renewal."""

    name: str
    cert: Path
    key: Path
    names: tuple[str, ...] | None = None


AcmeChallenge = Literal["tls-alpn-01", "http-01"]
# Let's Encrypt's production directory (RFC 8555 §7.1.1 directory object).
DEFAULT_ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
# certbot renews 30 days before expiry (a third of Let's Encrypt's 90 days), leaving weeks
# for retries and for a person to notice the warnings.
DEFAULT_ACME_RENEW_BEFORE_DAYS = 30


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """[tls.acme]: one certificate for `names`, obtained and renewed by the daemon (RFC 8555),
    kept under state_dir (cert.pem = full chain, key.pem)."""

    directory: str
    names: tuple[str, ...]
    state_dir: Path
    account_key: Path
    email: str | None = None
    challenge: AcmeChallenge = "tls-alpn-01"
    renew_before_days: int = DEFAULT_ACME_RENEW_BEFORE_DAYS
    ca_file: Path | None = None

    @property
    def cert(self) -> Path:
        return self.state_dir / "cert.pem"

    @property
    def key(self) -> Path:
        return self.state_dir / "key.pem"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """`cert`/`key`: the default certificate of every listener without its own (the ACME
    one when [tls.acme] is set and tls.cert is not)."""

    cert: Path
    key: Path
    handshake_timeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT
    reload_interval: float = DEFAULT_TLS_RELOAD_INTERVAL
    certificates: tuple[CertificateEntry, ...] = ()
    acme: AcmeConfig | None = None


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    backend: str
    options: MappingProxyType[str, object]
    base_dir: Path


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` messages per `seconds` from one client address."""

    count: int
    seconds: float

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}.get(self.seconds)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.seconds:g}s"


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One listener. The SMTP kinds are connectors, each with its own policy:
    submission (587/465: AUTH required, may relay, sender must be the account's), smtp
    (inbound MX on 25: anonymous, local recipients only) and relay (an application
    connector: `clients` networks only, `auth` none/optional/required, `senders`,
    `may_relay`, `rate`, `max_message_size`)."""

    name: str
    protocol: Protocol
    tls: TlsMode
    bind: tuple[BindAddress, ...]
    cert: Path
    key: Path
    clients: tuple[IPv4Network | IPv6Network, ...] = ()
    auth: AuthMode = "required"
    senders: tuple[str, ...] = ()
    may_relay: bool = False
    rate: Rate | None = None
    max_message_size: int | None = None
    # smtp (inbound): refuse mail that fails DMARC under a p=reject policy (RFC 7489 §6.6.2).
    reject_dmarc_failures: bool = False
    # HAProxy's PROXY protocol (v1 or v2) before anything else, from trusted_proxies only.
    proxy_protocol: bool = False
    # submission, relay: only members of one of these directory groups may log in here.
    auth_groups: tuple[str, ...] = ()

    @property
    def is_smtp(self) -> bool:
        return self.protocol in SMTP_PROTOCOLS


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_errors: int = DEFAULT_MAX_ERRORS
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


@dataclass(frozen=True, slots=True)
class Pop3Config:
    idle_timeout: float = DEFAULT_POP3_IDLE_TIMEOUT
    max_errors: int = DEFAULT_POP3_MAX_ERRORS
    max_line_length: int = DEFAULT_POP3_MAX_LINE_LENGTH


@dataclass(frozen=True, slots=True)
class SpecialUseConfig:
    """[imap.special_use] (RFC 6154): the folder names of each special use, tried in order
    (the first is created for a new account when `create` is true)."""

    create: bool = True
    names: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType(dict(specialuse.DEFAULT_NAMES)))


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """[store]: the per-account quota (RFC 9208) over all folders; 0 means no limit."""

    quota: int = DEFAULT_QUOTA                    # octets
    quota_messages: int = DEFAULT_QUOTA_MESSAGES  # messages
    quota_full_retry: float = DEFAULT_QUOTA_FULL_RETRY


@dataclass(frozen=True, slots=True)
class ImapConfig:
    idle_timeout: float = DEFAULT_IMAP_IDLE_TIMEOUT
    max_errors: int = DEFAULT_IMAP_MAX_ERRORS
    max_line_length: int = DEFAULT_IMAP_MAX_LINE_LENGTH
    max_literal_size: int = DEFAULT_IMAP_MAX_LITERAL_SIZE
    max_connections_per_user: int = DEFAULT_IMAP_MAX_CONNECTIONS_PER_USER
    max_connections_per_user_ip: int = DEFAULT_IMAP_MAX_CONNECTIONS_PER_USER_IP
    unauthenticated_max_literal_size: int = DEFAULT_IMAP_UNAUTHENTICATED_MAX_LITERAL_SIZE
    special_use: SpecialUseConfig = field(default_factory=SpecialUseConfig)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP
    auth_failures_before_delay: int = DEFAULT_AUTH_FAILURES_BEFORE_DELAY
    auth_failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY
    auth_max_delay: float = DEFAULT_AUTH_MAX_DELAY
    auth_failures_before_block: int = DEFAULT_AUTH_FAILURES_BEFORE_BLOCK
    auth_block_seconds: float = DEFAULT_AUTH_BLOCK_SECONDS
    auth_failure_window: float = DEFAULT_AUTH_FAILURE_WINDOW
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    max_buffered_input: int = DEFAULT_MAX_BUFFERED_INPUT
    descriptor_reserve: int = DEFAULT_DESCRIPTOR_RESERVE


@dataclass(frozen=True, slots=True)
class DkimDomain:
    selector: str
    key: Path
    algorithm: str = "rsa"   # rsa | ed25519 (read from the key file)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    hostname: str
    domains: tuple[str, ...]
    data_dir: Path
    tls: TlsConfig
    directory: DirectoryConfig
    listeners: tuple[ListenerConfig, ...]
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    imap: ImapConfig = field(default_factory=ImapConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    log_level: str = "info"
    log_format: LogFormat = "text"
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    # Processes serving every listener (SO_REUSEPORT); 1 is one process, no supervisor.
    # A config file without the key gets default_workers() (config/load.py).
    workers: int = 1
    # Where the accounts' Maildirs live (None: DATA_DIR/mail). Two daemons (or Dovecot) may
    # share Maildirs; each daemon keeps its own spool under its own data_dir.
    mail_dir: Path | None = None
    # The pid of `mailkeep serve`, for `mailkeep reload` and init systems (None:
    # DATA_DIR/mailkeep.pid). Written once SIGHUP is handled, removed at a clean stop.
    pid_file: Path | None = None
    # Started as root: bind, then become this user ("user" or "user:group"); without it
    # the daemon refuses to keep running as root unless allow_root.
    run_as: str | None = None
    allow_root: bool = False
    # Networks whose PROXY protocol headers are believed (listeners with proxy_protocol).
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    # Local domain -> its DKIM signing key (outbound mail From that domain is signed).
    dkim: Mapping[str, DkimDomain] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def maildirs(self) -> Path:
        return self.mail_dir if self.mail_dir is not None else self.data_dir / "mail"

    @property
    def pid_path(self) -> Path:
        return self.pid_file if self.pid_file is not None else self.data_dir / "mailkeep.pid"

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains
