"""Warnings about listeners exposed beyond this machine (at start, in check-config, and on
reload)."""

from __future__ import annotations

import ipaddress

from mailkeep.config.model import Config


def is_loopback(host: str) -> bool:
    """A bind host reachable from this machine only (127.0.0.0/8, ::1, "localhost")."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def admin_exposure_warnings(config: Config) -> list[str]:
    """Admin listeners in plain HTTP on an address others can reach: worth a warning at start
    and in check-config, not a refusal (a private management network is a fair choice).
    The metrics name listeners, counts and certificate files, nothing secret, and the
    endpoints change nothing; still, whoever reaches them learns the daemon's shape."""
    warnings: list[str] = []
    for lst in config.listeners:
        if lst.protocol != "admin" or lst.tls != "none":
            continue
        for i, addr in enumerate(lst.bind):
            if not is_loopback(addr.host):
                warnings.append(
                    f"listeners.{lst.name}.bind[{i}]: the admin listener serves {addr} in "
                    'plain HTTP (tls = "none") beyond loopback: anyone who reaches it reads '
                    'the metrics; bind it to 127.0.0.1 or use tls = "implicit" behind a '
                    "firewall")
    return warnings
