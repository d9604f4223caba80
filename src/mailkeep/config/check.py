"""Every problem of a configuration file, beyond its own syntax and values: the certificates
it names, its directory and its DKIM keys (`mailkeep check-config`, `mailkeep reload`, and the
daemon refusing a reload).

The file's own problems come first; the other checks then run on the best reading of the file
(config/load.py ConfigReading), so one run lists a bad key and a missing certificate together.
A problem at a key that the file's own problems already name is not repeated.
"""

from __future__ import annotations

import asyncio

from mailkeep.config.hints import command
from mailkeep.config.load import ConfigReading
from mailkeep.config.model import Config


def problems(reading: ConfigReading, *, directory: bool = True) -> list[str]:
    """Every problem; `directory`: also open the directory the way the daemon would (a file
    backend's users file is read, other backends' options are checked without contacting
    their servers)."""
    found = list(reading.problems)
    config = reading.config
    if config is None:
        return found
    keys = [p.split(": ", 1)[0] for p in found]
    # Without a valid hostname every certificate would be reported as not covering it.
    more = _certificate_problems(config) if "hostname" not in keys else []
    if directory:
        more += _directory_problems(config)
    if config.dkim:
        from mailkeep.relay.dkim_admin import key_problems  # noqa: PLC0415 (cryptography)

        more += key_problems(config)
    for problem in more:
        key = problem.split(": ", 1)[0]
        if not any(key == k or key.startswith(k + ".") for k in keys):
            found.append(problem)
    return found


def _certificate_problems(config: Config) -> list[str]:
    from mailkeep.tls.inventory import problems as certificate_problems  # noqa: PLC0415

    return certificate_problems(config)


def _directory_problems(config: Config) -> list[str]:
    from mailkeep.directory.base import DirectoryError, load_directory  # noqa: PLC0415
    from mailkeep.directory.file import read_users_file  # noqa: PLC0415

    found: list[str] = []
    try:
        users_path = config.directory.base_dir / str(config.directory.options.get("path",
                                                                                  "users.toml"))
        if config.directory.backend != "file":
            # The options are checked (and a SQLite file looked for); servers are not
            # contacted: the daemon starts while they are down, and says so per login.
            backend = load_directory(config.directory.backend, config.directory.options,
                                     config.directory.base_dir)
            asyncio.run(backend.close())
        else:
            records = read_users_file(users_path)
            for name, rec in records.items():
                for addr in rec.account.addresses:
                    if not config.is_local_domain(addr.rpartition("@")[2]):
                        found.append(f"users.{name}.addresses: {addr} is not in a local "
                                     f"domain ({', '.join(config.domains)})")
    except DirectoryError as exc:
        found.append(f"directory: {exc}")
    return found


def warnings(config: Config) -> list[str]:
    """What is worth saying but does not stop the daemon (and admin listeners exposed in
    plain HTTP, config/load.py).

    An HTTPS autoconfig listener is reached as autoconfig.DOMAIN and autodiscover.DOMAIN
    (the CNAMEs of `mailkeep dns`): a certificate without those names makes Thunderbird fall
    back to plain HTTP and Outlook warn or give up. Worth a warning, not a refusal: the
    documents still work over HTTP, and the certificate may be renewed with the names."""
    from mailkeep.config.exposure import admin_exposure_warnings  # noqa: PLC0415
    from mailkeep.tls.certs import CertificateProblem, inspect_certificate  # noqa: PLC0415

    found: list[str] = []
    for lst in config.listeners:
        if lst.protocol != "autoconfig" or lst.tls != "implicit":
            continue
        try:
            info = inspect_certificate(lst.cert)
        except CertificateProblem:
            continue  # reported as a problem
        missing = [f"{prefix}.{domain}" for domain in config.domains
                   for prefix in ("autoconfig", "autodiscover")
                   if not info.covers(f"{prefix}.{domain}")]
        if missing:
            keep = [n for n in info.names if n != config.hostname]
            sans = [w for name in (*keep, *missing) for w in ("--san", name)]
            selfsigned = command("cert", "selfsigned", "--hostname", config.hostname,
                                 "--cert", str(lst.cert), "--key", str(lst.key), *sans,
                                 "--force")
            found.append(f"listeners.{lst.name}: the certificate {lst.cert} does not cover "
                         f"{', '.join(missing)} (SAN: {', '.join(info.names) or 'none'}); "
                         "HTTPS clients fetching those names will refuse it: add them "
                         f"to the certificate (a self-signed one: `{selfsigned}`)")
    return found + admin_exposure_warnings(config)
