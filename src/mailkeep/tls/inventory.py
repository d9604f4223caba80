"""Every certificate a configuration uses, what it serves, and what is wrong with it.

Read by `mailkeep cert show` and `mailkeep check-config` from the configuration and the files
alone (no running daemon): the same rules as the daemon's start-up (app.Daemon.load_tls).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.config.model import AcmeConfig, Config, ListenerConfig
from mailkeep.tls.certs import (
    CertificateInfo,
    CertificateProblem,
    check_serving,
    inspect_certificate,
)
from mailkeep.tls.renewal import is_placeholder
from mailkeep.tls.sni import SniTable

Pair = tuple[Path, Path]


@dataclass
class CertificateUse:
    cert: Path
    key: Path
    config_key: str                    # where a problem with it is reported
    default_for: list[ListenerConfig] = field(default_factory=list)
    sni_label: str | None = None       # "tls.certificates.NAME" or "tls.acme"
    sni_explicit: tuple[str, ...] | None = None
    sni_names: list[str] = field(default_factory=list)
    acme: AcmeConfig | None = None
    info: CertificateInfo | None = None
    problem: str | None = None         # None: serves as configured
    note: str | None = None            # a state that is not a fault (an ACME placeholder)

    @property
    def pair(self) -> Pair:
        return (self.cert, self.key)


def inventory(config: Config) -> list[CertificateUse]:
    """One entry per (cert, key) pair: listener defaults first, then SNI certificates."""
    tls = config.tls
    uses: dict[Pair, CertificateUse] = {}
    for lst in config.listeners:
        own = (lst.cert, lst.key) != (tls.cert, tls.key)
        key = f"listeners.{lst.name}.cert" if own else "tls.cert"
        if tls.acme is not None and (lst.cert, lst.key) == (tls.acme.cert, tls.acme.key):
            key = "tls.acme"
        uses.setdefault((lst.cert, lst.key),
                        CertificateUse(lst.cert, lst.key, key)).default_for.append(lst)
    sni: list[tuple[str, Path, Path, tuple[str, ...] | None]] = []
    if tls.acme is not None and tls.cert != tls.acme.cert:
        sni.append(("tls.acme", tls.acme.cert, tls.acme.key, None))
    sni += [(f"tls.certificates.{e.name}", e.cert, e.key, e.names) for e in tls.certificates]
    for label, cert, key_path, names in sni:
        use = uses.setdefault((cert, key_path), CertificateUse(cert, key_path, label))
        use.sni_label, use.sni_explicit = label, names
    if tls.acme is not None:
        acme_use = uses.get((tls.acme.cert, tls.acme.key))
        if acme_use is not None:
            acme_use.acme = tls.acme
    for use in uses.values():
        _inspect(use, config.hostname)
    entries = [(u.pair, u.sni_explicit if u.sni_explicit is not None
                else (u.info.names if u.info else ()))
               for u in uses.values() if u.sni_label is not None]
    table, _ = SniTable.build(entries)
    for use in uses.values():
        if use.sni_label is not None:
            use.sni_names = table.names_of(use.pair)
    return list(uses.values())


def _inspect(use: CertificateUse, hostname: str) -> None:
    try:
        use.info = inspect_certificate(use.cert)
    except CertificateProblem as exc:
        if use.acme is not None:
            use.note = "not obtained yet: the daemon requests it at start and serves a " \
                       "self-signed placeholder meanwhile"
        else:
            use.problem = str(exc)
        return
    try:
        check_serving(use.cert, use.key, hostname if use.default_for else None,
                      use.sni_explicit or ())
    except CertificateProblem as exc:
        if use.acme is None:
            use.problem = str(exc)
        else:
            use.note = f"to be replaced by the daemon: {exc}"
    if use.acme is not None and use.note is None and is_placeholder(use.info):
        use.note = "self-signed placeholder: the CA has not issued one yet (see the log)"


def problems(config: Config) -> list[str]:
    """Every certificate fault, keyed by the configuration path that names it."""
    return [f"{u.config_key}: {u.problem}" for u in inventory(config) if u.problem]


def days_left(info: CertificateInfo, now: dt.datetime | None = None) -> int:
    return (info.not_after - (now or dt.datetime.now(dt.UTC))).days


def describe(use: CertificateUse, hostname: str) -> list[str]:
    """The lines `mailkeep cert show` prints for one certificate."""
    lines = [f"certificate {use.cert}", f"  key:         {use.key}"]
    info = use.info
    if info is not None:
        lines += [
            f"  subject:     {info.subject}",
            f"  issuer:      {info.issuer}",
            f"  names (SAN): {', '.join(info.names) or '(none)'}",
            f"  key type:    {info.key_type}",
            f"  valid:       {info.not_before:%Y-%m-%d %H:%M} to "
            f"{info.not_after:%Y-%m-%d %H:%M} UTC ({days_left(info)} days left)",
            f"  sha256:      {info.sha256}",
        ]
    if use.acme is not None:
        acme = use.acme
        renew = ""
        if info is not None and not is_placeholder(info):
            when = info.not_after - dt.timedelta(days=acme.renew_before_days)
            renew = f", next renewal from {when:%Y-%m-%d}"
        lines.append(f"  managed by:  ACME {acme.directory} ({acme.challenge}, for "
                     f"{', '.join(acme.names)}; renewed {acme.renew_before_days} days before "
                     f"expiry{renew})")
    if use.problem is not None:
        lines.append(f"  status:      PROBLEM: {use.problem}")
    elif use.note is not None:
        lines.append(f"  status:      {use.note}")
    else:
        lines.append(f"  status:      OK for {hostname}" if use.default_for
                     else "  status:      OK")
    doors = [f"{lst.name} ({lst.protocol}, {lst.tls} TLS, "
             f"{', '.join(str(b) for b in lst.bind)})" for lst in use.default_for]
    if doors:
        lines.append("  default for: " + "\n               ".join(doors))
    if use.sni_label is not None:
        chosen = ", ".join(use.sni_names) or "(no name: every one is taken by an earlier " \
                                             "certificate)"
        lines.append(f"  SNI:         {chosen} (on every listener; {use.sni_label})")
    return lines
