"""The DNS records an administrator publishes for a mail domain, as zone-file lines
(`mailkeep dns DOMAIN`). Built without I/O from what is advertised (proto/autoconfig.py).

- MX (RFC 5321 §5.1): the domain's mail goes to `hostname`.
- SRV (RFC 6186 §3): _imap, _imaps, _pop3, _pop3s, _submission, and _submissions (RFC 8314
  §5.1), each pointing at hostname and the door's port; a service that is not offered gets
  the "decidedly not available" record of RFC 2782 (target ".", RFC 6186 §4: "0 0 0 .").
  Priorities follow RFC 8314 §5.1 and RFC 6186 §3.4: implicit TLS before STARTTLS, IMAP
  before POP3 (lower is preferred).
- autoconfig / autodiscover CNAMEs to hostname, when an autoconfig listener serves them, and
  _autodiscover._tcp SRV (which Outlook and Thunderbird read) when it serves HTTPS.
- SPF (RFC 7208): "v=spf1 mx -all", only the MX hosts send for the domain; DKIM when a key
  is configured (its TXT line is handed in, from relay/dkim.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailkeep.proto.autoconfig import Door, MailSetup

# RFC 5321 §5.1: one MX; its preference value is only compared with other MX records.
MX_PREFERENCE = 10
# (service label, kind, implicit TLS, priority): RFC 6186 §3.1-3.3, RFC 8314 §5.1.
SRV_SERVICES: tuple[tuple[str, str, bool, int], ...] = (
    ("_imaps", "imap", True, 0),
    ("_imap", "imap", False, 10),
    ("_pop3s", "pop3", True, 20),
    ("_pop3", "pop3", False, 30),
    ("_submissions", "smtp", True, 0),
    ("_submission", "smtp", False, 10),
)
# RFC 2782: "Domain administrators SHOULD use Weight 0 when there isn't any server
# selection to do" (one server here).
SRV_WEIGHT = 0
# The ports clients fetch autoconfiguration from (Thunderbird, Outlook): the CNAMEs only
# help if the autoconfig listener answers there (directly or behind a port forward).
HTTP_PORT = 80
HTTPS_PORT = 443


@dataclass(frozen=True, slots=True)
class AutoconfigSite:
    """An autoconfig listener: its ports, and whether it speaks HTTPS."""

    port: int
    https: bool


def _fqdn(name: str) -> str:
    return name.rstrip(".") + "."


def _srv_target(door: Door | None, hostname: str, priority: int) -> str:
    if door is None:
        return "0 0 0 ."  # RFC 6186 §4: this service is not offered
    return f"{priority} {SRV_WEIGHT} {door.port} {_fqdn(hostname)}"


def records(setup: MailSetup, domain: str, *, inbound_mx: bool,
            sites: tuple[AutoconfigSite, ...] = (), dkim_txt: str | None = None,
            dkim_note: str | None = None) -> list[str]:
    """Zone-file lines for `domain` (one of setup.domains), comments starting with ";".

    inbound_mx: an smtp listener receives the internet's mail here (else the MX line is
    printed with a note). sites: the autoconfig listeners. dkim_txt: the DKIM TXT line, or
    dkim_note saying why there is none."""
    host, zone = _fqdn(setup.hostname), _fqdn(domain)
    lines = [f"; DNS records for {domain} (mail server {setup.hostname})", ";",
             "; Mail for the domain (RFC 5321 §5.1)"]
    if not inbound_mx:
        lines.append("; note: no smtp listener (port 25) is configured here: publish this "
                     "only once one is, or keep the MX of the server that receives today")
    lines.append(f"{zone}\tIN\tMX\t{MX_PREFERENCE} {host}")

    lines += [";", "; Mail client services (RFC 6186; _submissions: RFC 8314 §5.1)"]
    for label, kind, implicit, priority in SRV_SERVICES:
        door = next((d for d in setup.doors if d.kind == kind
                     and d.implicit_tls == implicit), None)
        lines.append(f"{label}._tcp.{zone}\tIN\tSRV\t{_srv_target(door, host, priority)}")

    lines += [";", "; Account autoconfiguration (Thunderbird, Outlook)"]
    if sites:
        lines.append(f"autoconfig.{zone}\tIN\tCNAME\t{host}")
        lines.append(f"autodiscover.{zone}\tIN\tCNAME\t{host}")
        https = [s for s in sites if s.https]
        if https:
            port = next((s.port for s in https if s.port == HTTPS_PORT), https[0].port)
            lines.append(f"_autodiscover._tcp.{zone}\tIN\tSRV\t0 {SRV_WEIGHT} {port} {host}")
        odd = sorted({s.port for s in sites} - {HTTP_PORT, HTTPS_PORT})
        if odd:
            lines.append(f"; note: clients fetch from port {HTTP_PORT} (http) and "
                         f"{HTTPS_PORT} (https); the autoconfig listener binds "
                         f"{', '.join(map(str, odd))}: forward those ports to it")
    else:
        lines.append("; none: no autoconfig listener is configured (add [listeners."
                     "autoconfig] with protocol = \"autoconfig\"), so no autoconfig or "
                     "autodiscover names to publish")

    lines += [";", "; Sender authentication"]
    lines.append(f'{zone}\tIN\tTXT\t"v=spf1 mx -all"')
    if dkim_txt is not None:
        lines.append(dkim_txt)
    else:
        lines.append(f"; DKIM: {dkim_note or 'no key configured for this domain'}")
    return lines
