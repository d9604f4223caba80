"""Account autoconfiguration documents, built without I/O: what the server offers, in bytes.

Three clients, three formats, one source of truth (the listeners that are configured):

- Thunderbird (and K-9/Thunderbird for Android, Evolution, KMail): `config-v1.1.xml`, the
  format of the Mozilla wiki page "Thunderbird:Autoconfiguration:ConfigFileFormat". It names
  no address: the username is the placeholder %EMAILADDRESS%, which the client fills in.
- Outlook: the POX autodiscover response (MS-OXDSCLI, response schema 2006a) for the address
  in the client's POST body (or `?emailaddress=`).
- Apple Mail (iOS, macOS): a configuration profile (.mobileconfig, a property list) with one
  com.apple.mail.managed payload for the address in `?emailaddress=`; unsigned.

What is advertised (`MailSetup`): the host name clients connect to, the local domains, and the
doors in order of preference: IMAP before POP3, and for each kind implicit TLS before STARTTLS
(RFC 8314 §3: implicit TLS is to be preferred; §5.1 says the same of SRV records).
Authentication is always "password-cleartext" (PLAIN/LOGIN/USER inside TLS: the only kind
mailkeep offers, and only inside TLS), and the login is the email address, which the
directory accepts for every address of an account (directory/file.py indexes accounts by name
and by each address).
"""

from __future__ import annotations

import functools
import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["imap", "pop3", "smtp"]
SocketType = Literal["SSL", "STARTTLS"]

# Listener protocol -> the kind of door a mail client knows it as.
KIND_OF_PROTOCOL: dict[str, Kind] = {"imap": "imap", "pop3": "pop3", "submission": "smtp"}
KIND_ORDER: tuple[Kind, ...] = ("imap", "pop3", "smtp")

# The paths clients fetch. Thunderbird: http(s)://autoconfig.DOMAIN/mail/config-v1.1.xml,
# then http(s)://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml (FetchConfig.sys.mjs).
# Outlook: https://autodiscover.DOMAIN/autodiscover/autodiscover.xml (POST). Apple has no
# discovery: a person opens the profile's URL on the device.
THUNDERBIRD_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"
MOBILECONFIG_PATH = "/email.mobileconfig"

# Content types: RFC 7303 §4.1 (application/xml); Apple's configuration profile reference
# (application/x-apple-aspen-config, which Safari hands to the profile installer).
XML_CONTENT_TYPE = "application/xml; charset=utf-8"
MOBILECONFIG_CONTENT_TYPE = "application/x-apple-aspen-config"

# Mozilla's format: the placeholder the client replaces with the address typed in.
EMAIL_PLACEHOLDER = "%EMAILADDRESS%"
# MS-OXDSCLI §2.2.4: the namespaces of the response and of the Outlook response schema.
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = ("http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                       "responseschema/2006a")
# MS-OXDSCLI §2.2.4.2.1.1 ErrorCode: 500 "the e-mail address cannot be found",
# 600 "invalid request".
AUTODISCOVER_NOT_FOUND = 500
AUTODISCOVER_INVALID_REQUEST = 600
# An address we answer for is a dot-atom (RFC 5322 §3.2.3) at a host name, at most 64 octets
# of local part (RFC 5321 §4.5.3.1.1) and 254 in all (§4.5.3.1.3: 256 with the brackets);
# anything else is refused, never echoed into a document.
_ATEXT = r"[a-z0-9!#$%&'*+\-/=?^_`{|}~]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ADDRESS = re.compile(rf"(?={_ATEXT}[^@]{{0,63}}@){_ATEXT}+(?:\.{_ATEXT}+)*"
                      rf"@{_LABEL}(?:\.{_LABEL})+")
MAX_ADDRESS_LENGTH = 254
# "<!" opening anything but a comment or CDATA: a DOCTYPE, ENTITY or other declaration.
_DECLARATION = re.compile(rb"<!(?!--|\[CDATA\[)")


@dataclass(frozen=True, slots=True)
class Door:
    """One way in that a client can be told about."""

    kind: Kind
    port: int
    socket_type: SocketType

    @property
    def implicit_tls(self) -> bool:
        return self.socket_type == "SSL"


@dataclass(frozen=True, slots=True)
class MailSetup:
    """What is advertised: host name, local domains, doors in order of preference."""

    hostname: str
    domains: tuple[str, ...]
    doors: tuple[Door, ...]

    def of_kind(self, kind: Kind) -> tuple[Door, ...]:
        return tuple(d for d in self.doors if d.kind == kind)

    def incoming(self) -> Door | None:
        """The door a client that takes only one should use: IMAP before POP3."""
        return next((d for d in self.doors if d.kind != "smtp"), None)

    def outgoing(self) -> Door | None:
        return next((d for d in self.doors if d.kind == "smtp"), None)

    def is_local(self, address: str) -> bool:
        return address.rpartition("@")[2] in self.domains


class AutoconfigRequestError(ValueError):
    """The client's request cannot be answered (its fault); args[0] says why."""


def doors(listeners: Iterable[tuple[str, str, int]]) -> tuple[Door, ...]:
    """(protocol, tls, port) of each bound listener -> the doors to advertise, by preference.

    Only mail doors count (imap, pop3, submission); the inbound MX, application connectors
    and autoconfig itself are not for mail clients. The same door listed twice (two binds,
    two listeners) is advertised once."""
    found: list[Door] = []
    for protocol, tls, port in listeners:
        kind = KIND_OF_PROTOCOL.get(protocol)
        if kind is None or tls not in ("implicit", "starttls") or not 0 < port < 65536:
            continue
        door = Door(kind, port, "SSL" if tls == "implicit" else "STARTTLS")
        if door not in found:
            found.append(door)
    # RFC 8314 §3: implicit TLS first; then the port, so the order is stable.
    found.sort(key=lambda d: (KIND_ORDER.index(d.kind), not d.implicit_tls, d.port))
    return tuple(found)


def checked_address(value: str, setup: MailSetup) -> str:
    """An address from a request, lower-cased; AutoconfigRequestError if it is not a plain
    address, or LookupError if its domain is not one of ours (nothing is advertised for
    other domains). Whether an account has the address is deliberately not looked up: the
    answer would tell anyone which addresses exist."""
    address = value.strip().lower()
    if len(address) > MAX_ADDRESS_LENGTH or not _ADDRESS.fullmatch(address):
        raise AutoconfigRequestError("not an email address")
    if not setup.is_local(address):
        raise LookupError(address)
    return address


# -- Thunderbird ------------------------------------------------------------------------------

def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = text
    return element


def _serialize(root: ET.Element) -> bytes:
    ET.indent(root)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


@functools.lru_cache(maxsize=4)  # the same document for every request: built once
def thunderbird_config(setup: MailSetup) -> bytes:
    """config-v1.1.xml: <clientConfig version="1.1"><emailProvider id=...> with a <domain>
    per local domain, then every incoming and every outgoing door in order of preference
    (Thunderbird takes the first as its choice and lists the rest as alternatives)."""
    root = ET.Element("clientConfig", version="1.1")
    first = setup.domains[0]
    provider = ET.SubElement(root, "emailProvider", id=first)
    for domain in setup.domains:
        _text(provider, "domain", domain)
    _text(provider, "displayName", f"{first} mail")
    _text(provider, "displayShortName", first.split(".")[0])
    for door in setup.doors:
        tag = "outgoingServer" if door.kind == "smtp" else "incomingServer"
        server = ET.SubElement(provider, tag, type=door.kind)
        _text(server, "hostname", setup.hostname)
        _text(server, "port", str(door.port))
        _text(server, "socketType", door.socket_type)
        _text(server, "authentication", "password-cleartext")
        _text(server, "username", EMAIL_PLACEHOLDER)
    return _serialize(root)


# -- Outlook (POX autodiscover) ---------------------------------------------------------------

def outlook_request_address(body: bytes) -> str:
    """The <EMailAddress> of an autodiscover POST (MS-OXDSCLI §2.2.3 request schema 2006).

    A document with a DTD is refused before parsing: no entity can then be defined, so no
    entity expansion ("billion laughs") and no external entity can be asked of the parser
    (the approach of defusedxml)."""
    if _DECLARATION.search(body):
        raise AutoconfigRequestError("a DTD or declaration in the request")
    try:
        root = ET.fromstring(body)  # noqa: S314 (no DTD: see above)
    except ET.ParseError:
        raise AutoconfigRequestError("not well-formed XML") from None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "EMailAddress" and element.text:
            return element.text.strip()
    raise AutoconfigRequestError("no EMailAddress in the request")


def outlook_response(setup: MailSetup, address: str) -> bytes:
    """The Outlook response for `address`: one Protocol per kind (the preferred door), IMAP
    first. SSL on plus Encryption (SSL = implicit TLS, TLS = STARTTLS); SPA off (no NTLM);
    the login is the address itself."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_RESPONSE_NS)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    for kind in KIND_ORDER:
        choices = setup.of_kind(kind)
        if not choices:
            continue
        door = choices[0]
        protocol = ET.SubElement(account, "Protocol")
        _text(protocol, "Type", kind.upper())
        _text(protocol, "Server", setup.hostname)
        _text(protocol, "Port", str(door.port))
        _text(protocol, "DomainRequired", "off")
        _text(protocol, "LoginName", address)
        _text(protocol, "SPA", "off")
        _text(protocol, "SSL", "on")
        _text(protocol, "Encryption", "SSL" if door.implicit_tls else "TLS")
        _text(protocol, "AuthRequired", "on")
        if kind == "smtp":
            _text(protocol, "UsePOPAuth", "on")  # the same login and password as incoming
            _text(protocol, "SMTPLast", "off")
    return _serialize(root)


def outlook_error(code: int, message: str) -> bytes:
    """MS-OXDSCLI §2.2.4.2.1: <Response><Error><ErrorCode>..</ErrorCode><Message>.."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_NS)
    error = ET.SubElement(ET.SubElement(root, "Response"), "Error")
    _text(error, "ErrorCode", str(code))
    _text(error, "Message", message)
    return _serialize(root)


# -- Apple (.mobileconfig) --------------------------------------------------------------------

def _profile_uuid(setup: MailSetup, address: str, part: str) -> str:
    """Stable per host and address: installing the profile again replaces the old one
    (Apple matches profiles by PayloadIdentifier) instead of adding a second account."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{part}.{address}.{setup.hostname}")).upper()


def mobileconfig(setup: MailSetup, address: str) -> bytes:
    """An unsigned configuration profile with one com.apple.mail.managed payload: the
    preferred incoming door (IMAP before POP3) and the preferred submission door."""
    incoming, outgoing = setup.incoming(), setup.outgoing()
    if incoming is None or outgoing is None:
        raise LookupError("no incoming or no outgoing door to advertise")
    reverse = ".".join(reversed(setup.hostname.split(".")))
    profile_id = _profile_uuid(setup, address, "profile")
    mail_id = _profile_uuid(setup, address, "mail")
    mail = {
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.kind == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": setup.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": setup.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PayloadDescription": f"Mail account {address}",
        "PayloadDisplayName": address,
        "PayloadIdentifier": f"{reverse}.mailkeep.mail.{mail_id}",
        "PayloadType": "com.apple.mail.managed",
        "PayloadUUID": mail_id,
        "PayloadVersion": 1,
        "PreventAppSheet": False,
        "PreventMove": False,
        "SMIMEEnabled": False,
    }
    profile = {
        "PayloadContent": [mail],
        "PayloadDescription": f"Mail settings for {address} on {setup.hostname}",
        "PayloadDisplayName": f"Mail: {address}",
        "PayloadIdentifier": f"{reverse}.mailkeep.{profile_id}",
        "PayloadOrganization": setup.hostname,
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": profile_id,
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
