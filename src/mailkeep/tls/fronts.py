"""What a configuration needs from TlsContexts: its SNI certificates and each listener's front
context, loaded with every problem reported at once (keyed by the configuration path).

Used at start (app.Daemon.load_tls) and by a live reload (app_reload.py), which loads the new
configuration into fresh contexts and swaps them in only when nothing is wrong.
"""

from __future__ import annotations

import ssl

from mailkeep.config.model import Config
from mailkeep.tls.certs import CertificateProblem
from mailkeep.tls.context import TlsContexts


def load_fronts(config: Config, contexts: TlsContexts) -> tuple[dict[str, ssl.SSLContext],
                                                                  list[str]]:
    """[tls.certificates.*], the ACME certificate when it is not the default (both chosen by
    SNI), and each listener's default pair; the front context of each listener by name, and
    every problem (sorted, without repeats)."""
    tls, problems = config.tls, []
    acme = tls.acme
    if acme is not None and tls.cert != acme.cert:  # not the default: chosen by SNI
        try:
            contexts.add_sni("tls.acme", acme.cert, acme.key)
        except CertificateProblem as exc:
            problems.append(f"tls.acme: {exc}")
    for entry in tls.certificates:
        try:
            contexts.add_sni(f"tls.certificates.{entry.name}", entry.cert, entry.key,
                             entry.names)
        except CertificateProblem as exc:
            problems.append(f"tls.certificates.{entry.name}: {exc}")
    fronts: dict[str, ssl.SSLContext] = {}
    alpn = acme is not None and acme.challenge == "tls-alpn-01"
    for lst in config.listeners:
        try:
            fronts[lst.name] = contexts.add(lst.cert, lst.key,
                                            acme_challenges=alpn and lst.tls == "implicit")
        except CertificateProblem as exc:
            own = lst.cert != tls.cert
            key = f"listeners.{lst.name}.cert" if own else "tls.cert"
            problems.append(f"{key}: {exc}")
    return fronts, sorted(set(problems))
