"""The [tls] table: the default certificate, SNI certificates and ACME. Every problem is
recorded on the reader, keyed by dotted path (`tls.certificates.NAME.names[1]`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_args

from mailkeep.config.model import (
    DEFAULT_ACME_DIRECTORY,
    DEFAULT_ACME_RENEW_BEFORE_DAYS,
    AcmeChallenge,
    AcmeConfig,
    CertificateEntry,
    ListenerConfig,
    TlsConfig,
)
from mailkeep.tls.sni import is_selectable_name, normalize_name

if TYPE_CHECKING:
    from mailkeep.config.reader import Reader as _Reader

_TLS_KEYS = {"cert", "key", "handshake_timeout", "reload_interval", "certificates", "acme"}
_CERTIFICATE_KEYS = {"cert", "key", "names"}
_ACME_KEYS = {"directory", "email", "names", "challenge", "renew_before_days", "ca_file",
              "account_key"}
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EMAIL = re.compile(r"^[^@\s<>\"]{1,64}@[A-Za-z0-9.-]{1,253}$")


def parse_tls(r: _Reader, raw: dict[str, Any], *, data_dir: Path, hostname: str) -> TlsConfig:
    tls_raw = r.table(raw, "tls")
    r.unknown(tls_raw, _TLS_KEYS, "tls.")
    acme = _parse_acme(r, tls_raw, data_dir=data_dir, hostname=hostname)
    defaults = TlsConfig(Path(), Path())
    if acme is not None and "cert" not in tls_raw and "key" not in tls_raw:
        # The ACME certificate is every listener's default.
        cert, key = acme.cert, acme.key
    else:
        cert = r.path(tls_raw, "cert", "tls.") or Path()
        key = r.path(tls_raw, "key", "tls.") or Path()
    handshake = r.get(tls_raw, "handshake_timeout", float, "tls.", defaults.handshake_timeout)
    reload_iv = r.get(tls_raw, "reload_interval", float, "tls.", defaults.reload_interval)
    for name, val in (("handshake_timeout", handshake), ("reload_interval", reload_iv)):
        if val is not None and val <= 0:
            r.problem(f"tls.{name}", f"must be greater than 0, got {val}")
    taken: dict[str, str] = {}
    if acme is not None:
        taken.update((n, "tls.acme") for n in acme.names)
    certificates = _parse_certificates(r, r.table(tls_raw, "certificates", "tls."), taken)
    return TlsConfig(cert, key, handshake or defaults.handshake_timeout,
                     reload_iv or defaults.reload_interval, certificates, acme)


def _names(r: _Reader, value: object, prefix: str, *, wildcards: bool) -> list[str] | None:
    if not isinstance(value, list) or not value:
        r.problem(prefix, 'expected a non-empty list of host names, e.g. ["mail.example.org"]')
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        name = normalize_name(item) if isinstance(item, str) else ""
        if not isinstance(item, str) or not is_selectable_name(name):
            r.problem(f"{prefix}[{i}]", f"{item!r} is not a fully qualified host name"
                      + (' or a wildcard like "*.example.org"' if wildcards else ""))
        elif name.startswith("*.") and not wildcards:
            # RFC 8555 §7.1.3: wildcard identifiers are authorized by dns-01 only.
            r.problem(f"{prefix}[{i}]", f"{item!r}: a wildcard needs the dns-01 challenge, "
                      "which mailkeep does not do; list the names themselves")
        elif name not in out:
            out.append(name)
    return out


def _parse_certificates(r: _Reader, raw: dict[str, Any],
                        taken: dict[str, str]) -> tuple[CertificateEntry, ...]:
    """[tls.certificates.NAME] cert, key, optional names (default: the certificate's SANs)."""
    out: list[CertificateEntry] = []
    for entry, table in raw.items():
        prefix = f"tls.certificates.{entry}"
        if not _ENTRY_NAME.match(entry):
            r.problem(prefix, "name must be letters, digits, '_' or '-'")
        if not isinstance(table, dict):
            r.problem(prefix, 'expected a table: cert = "...", key = "..."')
            continue
        r.unknown(table, _CERTIFICATE_KEYS, prefix + ".")
        cert = r.path(table, "cert", prefix + ".")
        key = r.path(table, "key", prefix + ".")
        names: list[str] | None = None
        if "names" in table:
            names = _names(r, table["names"], prefix + ".names", wildcards=True)
            for i, name in enumerate(names or ()):
                if name in taken:
                    r.problem(f"{prefix}.names[{i}]", f"{name!r} already selects {taken[name]}"
                              " (a name selects one certificate)")
                else:
                    taken[name] = prefix
        if cert is not None and key is not None:
            out.append(CertificateEntry(entry, cert, key,
                                        None if names is None else tuple(names)))
    return tuple(out)


def _parse_acme(r: _Reader, tls_raw: dict[str, Any], *, data_dir: Path,
                hostname: str) -> AcmeConfig | None:
    if "acme" not in tls_raw:
        return None
    raw = r.table(tls_raw, "acme", "tls.")
    p = "tls.acme."
    r.unknown(raw, _ACME_KEYS, p)
    directory = r.get(raw, "directory", str, p, DEFAULT_ACME_DIRECTORY) or DEFAULT_ACME_DIRECTORY
    if not directory.startswith("https://"):
        # RFC 8555 §6.1: every ACME request is an HTTPS request.
        r.problem(p + "directory", f"{directory!r} is not an https:// URL")
    email = r.get(raw, "email", str, p, "") or None
    if email is not None and not _EMAIL.match(email):
        r.problem(p + "email", f"{email!r} is not an email address")
    names = [hostname]
    if "names" in raw:
        names = _names(r, raw["names"], p + "names", wildcards=False) or names
    challenge = r.get(raw, "challenge", str, p, "tls-alpn-01") or "tls-alpn-01"
    if challenge not in get_args(AcmeChallenge):
        r.problem(p + "challenge", f"{challenge!r} is not one of tls-alpn-01, http-01")
        challenge = "tls-alpn-01"
    days = r.get(raw, "renew_before_days", int, p, DEFAULT_ACME_RENEW_BEFORE_DAYS)
    if days is None or days <= 0:
        r.problem(p + "renew_before_days", f"must be a whole number of days above 0, got {days}")
        days = DEFAULT_ACME_RENEW_BEFORE_DAYS
    state_dir = data_dir / "acme"
    ca_file = r.path(raw, "ca_file", p) if "ca_file" in raw else None
    account_key = r.path(raw, "account_key", p, state_dir / "account.key") \
        or state_dir / "account.key"
    return AcmeConfig(directory=directory, names=tuple(names), state_dir=state_dir,
                      account_key=account_key, email=email,
                      challenge=cast(AcmeChallenge, challenge), renew_before_days=days,
                      ca_file=ca_file)


def check_tls_listeners(r: _Reader, tls: TlsConfig, hostname: str,
                        listeners: Sequence[ListenerConfig]) -> None:
    """What ACME needs from the listeners, and the default certificate's names."""
    acme = tls.acme
    if acme is None:
        return
    if tls.cert == acme.cert and hostname not in acme.names:
        r.problem("tls.acme.names", f"must include hostname {hostname!r}: the ACME "
                  "certificate is every listener's default certificate (no tls.cert is set)")
    if acme.challenge == "tls-alpn-01" and not any(lst.tls == "implicit" for lst in listeners):
        r.problem("tls.acme.challenge", "tls-alpn-01 is answered on an implicit-TLS listener "
                  '(tls = "implicit"), and there is none')
    if acme.challenge == "http-01" and "autoconfig" not in {str(lst.protocol)
                                                             for lst in listeners}:
        r.problem("tls.acme.challenge", "http-01 is answered by an HTTP listener on port 80 "
                  '(protocol = "autoconfig"), and there is none; use "tls-alpn-01"')


def unreadable_files(tls: TlsConfig, listeners: Sequence[ListenerConfig]) -> list[str]:
    """Certificate and key files that cannot be opened, keyed like tls/inventory.py keys
    them. For a configuration with other problems: reported with those, in one run. ACME
    files are the daemon's to create."""
    acme = {tls.acme.cert, tls.acme.key} if tls.acme is not None else set()
    wanted: dict[Path, str] = {}
    for kind, path, key in (("certificate", tls.cert, "tls.cert"), ("key", tls.key, "tls.key")):
        wanted.setdefault(path, f"{key}: {path}: cannot read {kind}")
    for entry in tls.certificates:
        prefix = f"tls.certificates.{entry.name}"
        wanted.setdefault(entry.cert, f"{prefix}.cert: {entry.cert}: cannot read certificate")
        wanted.setdefault(entry.key, f"{prefix}.key: {entry.key}: cannot read key")
    for lst in listeners:
        prefix = f"listeners.{lst.name}"
        wanted.setdefault(lst.cert, f"{prefix}.cert: {lst.cert}: cannot read certificate")
        wanted.setdefault(lst.key, f"{prefix}.key: {lst.key}: cannot read key")
    problems: list[str] = []
    for path, message in wanted.items():
        if path in acme or path == Path():
            continue  # the daemon's own (ACME), or not given (reported as missing already)
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            problems.append(f"{message}: {exc.strerror}")
    return problems
