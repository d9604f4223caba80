"""The autoconfig documents (sans-IO): each one parsed back and every field checked."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.autoconfig import (
    AutoconfigRequestError,
    Door,
    MailSetup,
    checked_address,
    doors,
    mobileconfig,
    outlook_error,
    outlook_request_address,
    outlook_response,
    thunderbird_config,
)
from mailkeep.proto.autoconfig_routes import MAX_QUERY_FIELDS, answer

FULL = MailSetup("mail.example.test", ("example.test", "example.org"), doors([
    ("submission", "starttls", 587), ("imap", "starttls", 143), ("pop3", "starttls", 110),
    ("submission", "implicit", 465), ("imap", "implicit", 993), ("pop3", "implicit", 995),
]))
# The shipped defaults: 993, 995, 465 and 587 only.
DEFAULT = MailSetup("mail.example.test", ("example.test",), doors([
    ("submission", "starttls", 587), ("submission", "implicit", 465),
    ("pop3", "implicit", 995), ("imap", "implicit", 993),
]))
POP_ONLY = MailSetup("mx.example.test", ("example.test",), doors([
    ("pop3", "starttls", 110), ("submission", "starttls", 587)]))

RESPONSE_NS = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
OUTLOOK_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
OUTLOOK_REQUEST = b"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>Alice@Example.Test</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


# -- what is advertised -------------------------------------------------------------------------


def test_doors_order_implicit_tls_first_imap_before_pop3() -> None:
    assert FULL.doors == (
        Door("imap", 993, "SSL"), Door("imap", 143, "STARTTLS"),
        Door("pop3", 995, "SSL"), Door("pop3", 110, "STARTTLS"),
        Door("smtp", 465, "SSL"), Door("smtp", 587, "STARTTLS"),
    )


def test_doors_leave_out_what_mail_clients_do_not_use() -> None:
    found = doors([("smtp", "starttls", 25), ("relay", "none", 2525),
                   ("autoconfig", "none", 80), ("autoconfig", "implicit", 443),
                   ("imap", "implicit", 993), ("imap", "implicit", 993),  # two binds
                   ("imap", "implicit", 0)])  # not bound yet: never advertised
    assert found == (Door("imap", 993, "SSL"),)


def test_preferred_doors() -> None:
    assert FULL.incoming() == Door("imap", 993, "SSL")
    assert FULL.outgoing() == Door("smtp", 465, "SSL")
    assert POP_ONLY.incoming() == Door("pop3", 110, "STARTTLS")


@pytest.mark.parametrize("given_address", ["alice@example.test", "ALICE@Example.TEST ",
                                           "a.b+tag@example.org", "x" * 64 + "@example.test"])
def test_checked_address_accepts_plain_local_addresses(given_address: str) -> None:
    assert checked_address(given_address, FULL) == given_address.strip().lower()


@pytest.mark.parametrize("bad", ["", "alice", "@example.test", "alice@", "a b@example.test",
                                 '"a"@example.test', "a..b@example.test", ".a@example.test",
                                 "x" * 65 + "@example.test", "a@example.test\r\nX: y",
                                 "<a@example.test>", "a@exa mple.test", "a@-x.example.test",
                                 "a@" + "b" * 250 + ".test"])
def test_checked_address_refuses_anything_else(bad: str) -> None:
    with pytest.raises(AutoconfigRequestError):
        checked_address(bad, FULL)


def test_checked_address_refuses_other_domains() -> None:
    with pytest.raises(LookupError):
        checked_address("alice@elsewhere.test", FULL)
    with pytest.raises(LookupError):
        checked_address("alice@sub.example.test", FULL)


# -- Thunderbird ----------------------------------------------------------------------------------


def _thunderbird(setup: MailSetup) -> ET.Element:
    root = ET.fromstring(thunderbird_config(setup))
    assert root.tag == "clientConfig"
    assert root.get("version") == "1.1"
    providers = root.findall("emailProvider")
    assert len(providers) == 1
    return providers[0]


def _servers(provider: ET.Element, tag: str) -> list[dict[str, str]]:
    out = []
    for server in provider.findall(tag):
        fields = {child.tag: child.text or "" for child in server}
        assert set(fields) == {"hostname", "port", "socketType", "authentication",
                               "username"}
        out.append({"type": server.get("type", ""), **fields})
    return out


def _tb(kind: str, port: int, socket_type: str) -> dict[str, str]:
    return {"type": kind, "hostname": "mail.example.test", "port": str(port),
            "socketType": socket_type, "authentication": "password-cleartext",
            "username": "%EMAILADDRESS%"}


def test_thunderbird_config_every_field() -> None:
    provider = _thunderbird(FULL)
    assert provider.get("id") == "example.test"
    assert [d.text for d in provider.findall("domain")] == ["example.test", "example.org"]
    assert provider.findtext("displayName") == "example.test mail"
    assert provider.findtext("displayShortName") == "example"
    assert _servers(provider, "incomingServer") == [
        _tb("imap", 993, "SSL"), _tb("imap", 143, "STARTTLS"),
        _tb("pop3", 995, "SSL"), _tb("pop3", 110, "STARTTLS")]
    assert _servers(provider, "outgoingServer") == [
        _tb("smtp", 465, "SSL"), _tb("smtp", 587, "STARTTLS")]
    # Thunderbird reads the elements of emailProvider in this order of appearance; nothing
    # else is in the document.
    tags = [child.tag for child in provider]
    assert tags == ["domain", "domain", "displayName", "displayShortName"] + \
        ["incomingServer"] * 4 + ["outgoingServer"] * 2


def test_thunderbird_config_shipped_defaults() -> None:
    provider = _thunderbird(DEFAULT)
    assert _servers(provider, "incomingServer") == [_tb("imap", 993, "SSL"),
                                                    _tb("pop3", 995, "SSL")]
    assert _servers(provider, "outgoingServer") == [_tb("smtp", 465, "SSL"),
                                                    _tb("smtp", 587, "STARTTLS")]


def test_thunderbird_config_is_utf8_xml_with_declaration() -> None:
    data = thunderbird_config(FULL)
    assert data.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n")
    assert data.endswith(b"</clientConfig>\n")


# -- Outlook ------------------------------------------------------------------------------------


def test_outlook_request_address() -> None:
    assert outlook_request_address(OUTLOOK_REQUEST) == "Alice@Example.Test"
    # Thunderbird's own request, with its indentation and a comment, is read the same.
    assert outlook_request_address(
        b"<!-- hi --><Autodiscover><Request><EMailAddress> bob@example.test </EMailAddress>"
        b"</Request></Autodiscover>") == "bob@example.test"


@pytest.mark.parametrize("body", [
    b"",
    b"not xml",
    b"<Autodiscover><Request></Request></Autodiscover>",
    b"<Autodiscover><Request><EMailAddress></EMailAddress></Request></Autodiscover>",
    b"<Autodiscover><Request><EMailAddress>a@example.test</Request></Autodiscover>",
    # Entity expansion ("billion laughs") and external entities: refused before parsing.
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
    b"<Autodiscover><Request><EMailAddress>&lol2;</EMailAddress></Request></Autodiscover>",
    b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Autodiscover><Request>'
    b"<EMailAddress>&e;</EMailAddress></Request></Autodiscover>",
    b"<!doctype x><Autodiscover/>",
])
def test_outlook_request_refused(body: bytes) -> None:
    with pytest.raises(AutoconfigRequestError):
        outlook_request_address(body)


def test_outlook_response_every_field() -> None:
    root = ET.fromstring(outlook_response(FULL, "alice@example.test"))
    assert root.tag == f"{RESPONSE_NS}Autodiscover"
    response = root.find(f"{OUTLOOK_NS}Response")
    assert response is not None
    account = response.find(f"{OUTLOOK_NS}Account")
    assert account is not None
    assert account.findtext(f"{OUTLOOK_NS}AccountType") == "email"
    assert account.findtext(f"{OUTLOOK_NS}Action") == "settings"
    protocols = []
    for protocol in account.findall(f"{OUTLOOK_NS}Protocol"):
        protocols.append({child.tag.removeprefix(OUTLOOK_NS): child.text
                          for child in protocol})
    common = {"Server": "mail.example.test", "DomainRequired": "off",
              "LoginName": "alice@example.test", "SPA": "off", "SSL": "on",
              "AuthRequired": "on"}
    # One Protocol per kind: the preferred door (Outlook takes the first of each type).
    assert protocols == [
        {"Type": "IMAP", "Port": "993", "Encryption": "SSL", **common},
        {"Type": "POP3", "Port": "995", "Encryption": "SSL", **common},
        {"Type": "SMTP", "Port": "465", "Encryption": "SSL", "UsePOPAuth": "on",
         "SMTPLast": "off", **common},
    ]


def test_outlook_response_starttls_door_says_tls() -> None:
    root = ET.fromstring(outlook_response(POP_ONLY, "bob@example.test"))
    protocols = root.findall(f".//{OUTLOOK_NS}Protocol")
    assert [(p.findtext(f"{OUTLOOK_NS}Type"), p.findtext(f"{OUTLOOK_NS}Port"),
             p.findtext(f"{OUTLOOK_NS}Encryption"), p.findtext(f"{OUTLOOK_NS}Server"))
            for p in protocols] == [("POP3", "110", "TLS", "mx.example.test"),
                                    ("SMTP", "587", "TLS", "mx.example.test")]


def test_outlook_error() -> None:
    root = ET.fromstring(outlook_error(600, "Invalid Request"))
    error = root.find(f"{RESPONSE_NS}Response/{RESPONSE_NS}Error")
    assert error is not None
    assert error.findtext(f"{RESPONSE_NS}ErrorCode") == "600"
    assert error.findtext(f"{RESPONSE_NS}Message") == "Invalid Request"


# -- Apple ----------------------------------------------------------------------------------------


def test_mobileconfig_every_field() -> None:
    profile = plistlib.loads(mobileconfig(FULL, "alice@example.test"))
    (mail,) = profile.pop("PayloadContent")
    profile_uuid, mail_uuid = profile.pop("PayloadUUID"), mail.pop("PayloadUUID")
    assert profile == {
        "PayloadDescription": "Mail settings for alice@example.test on mail.example.test",
        "PayloadDisplayName": "Mail: alice@example.test",
        "PayloadIdentifier": f"test.example.mail.mailkeep.{profile_uuid}",
        "PayloadOrganization": "mail.example.test",
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
    }
    assert mail == {
        "EmailAccountDescription": "alice@example.test",
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": "alice@example.test",
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": "mail.example.test",
        "IncomingMailServerPortNumber": 993,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": "alice@example.test",
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": "mail.example.test",
        "OutgoingMailServerPortNumber": 465,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": "alice@example.test",
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PayloadDescription": "Mail account alice@example.test",
        "PayloadDisplayName": "alice@example.test",
        "PayloadIdentifier": f"test.example.mail.mailkeep.mail.{mail_uuid}",
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PreventAppSheet": False,
        "PreventMove": False,
        "SMIMEEnabled": False,
    }
    assert profile_uuid != mail_uuid


def test_mobileconfig_is_stable_per_address() -> None:
    """The same address gets the same identifiers (a re-install replaces the profile); a
    different address gets different ones (two accounts on one device)."""
    again = mobileconfig(FULL, "alice@example.test")
    assert mobileconfig(FULL, "alice@example.test") == again
    alice = plistlib.loads(again)
    bob = plistlib.loads(mobileconfig(FULL, "bob@example.test"))
    assert alice["PayloadUUID"] != bob["PayloadUUID"]
    assert alice["PayloadIdentifier"] != bob["PayloadIdentifier"]


def test_mobileconfig_pop3_when_there_is_no_imap() -> None:
    (mail,) = plistlib.loads(mobileconfig(POP_ONLY, "bob@example.test"))["PayloadContent"]
    assert mail["EmailAccountType"] == "EmailTypePOP"
    assert mail["IncomingMailServerPortNumber"] == 110
    assert mail["OutgoingMailServerPortNumber"] == 587
    assert mail["IncomingMailServerHostName"] == "mx.example.test"


def test_mobileconfig_needs_both_directions() -> None:
    with pytest.raises(LookupError):
        mobileconfig(MailSetup("m.example.test", ("example.test",),
                               (Door("imap", 993, "SSL"),)), "a@example.test")


# -- routes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml",
                                  "/.well-known/autoconfig/mail/config-v1.1.xml",
                                  "/mail/config-v1.1.xml?emailaddress=alice%40example.test",
                                  "http://autoconfig.example.test/mail/config-v1.1.xml",
                                  "HTTP://example.test/.well-known/autoconfig/mail/config-v1.1.xml"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_route_thunderbird(path: str, method: str) -> None:
    result = answer(method, path, b"", FULL)
    assert (result.status, result.content_type) == (200, "application/xml; charset=utf-8")
    assert result.body == thunderbird_config(FULL)


@pytest.mark.parametrize("path", ["/", "/mail", "/mail/", "/mail/config-v1.1.xml/",
                                  "/MAIL/config-v1.1.xml", "/mail/config-v1.1.xml%00",
                                  "/mail/../mail/config-v1.1.xml", "/.well-known/",
                                  "/favicon.ico", "/etc/passwd", "/mail//config-v1.1.xml",
                                  "/autodiscover/", "/mobileconfig"])
def test_route_nothing_else(path: str) -> None:
    assert answer("GET", path, b"", FULL).status == 404


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/mail/config-v1.1.xml", "GET, HEAD"),
    ("PUT", "/mail/config-v1.1.xml", "GET, HEAD"),
    ("DELETE", "/autodiscover/autodiscover.xml", "GET, HEAD, POST"),
    ("OPTIONS", "*", "GET, HEAD"),
    ("CONNECT", "autoconfig.example.test:443", "GET, HEAD"),
    ("TRACE", "/", "GET, HEAD"),
    ("POST", "/email.mobileconfig", "GET, HEAD"),
])
def test_route_405(method: str, path: str, allow: str) -> None:
    result = answer(method, path, b"", FULL)
    assert result.status == 405
    assert ("Allow", allow) in result.headers


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml",
                                  "/Autodiscover/Autodiscover.xml",
                                  "https://autodiscover.example.test/autodiscover/autodiscover.xml"])
def test_route_outlook_post(path: str) -> None:
    result = answer("POST", path, OUTLOOK_REQUEST, FULL)
    assert result.status == 200
    assert result.content_type == "text/xml; charset=utf-8"
    assert result.body == outlook_response(FULL, "alice@example.test")


def test_route_outlook_get_with_query() -> None:
    result = answer("GET", "/autodiscover/autodiscover.xml?emailaddress=bob%40example.org",
                    b"", FULL)
    assert (result.status, result.body) == (200, outlook_response(FULL, "bob@example.org"))


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("POST", "/autodiscover/autodiscover.xml", b"<x/>", 400, "600"),
    ("POST", "/autodiscover/autodiscover.xml", b"", 400, "600"),
    ("GET", "/autodiscover/autodiscover.xml", b"", 400, "600"),
    ("GET", "/autodiscover/autodiscover.xml?emailaddress=not-an-address", b"", 400, "600"),
    ("GET", "/autodiscover/autodiscover.xml?emailaddress=a%40other.test", b"", 404, "500"),
])
def test_route_outlook_errors(method: str, path: str, body: bytes, status: int,
                              code: str) -> None:
    result = answer(method, path, body, FULL)
    assert result.status == status
    assert ET.fromstring(result.body).findtext(f".//{RESPONSE_NS}ErrorCode") == code


def test_route_mobileconfig() -> None:
    result = answer("GET", "/email.mobileconfig?emailaddress=alice%40example.test", b"", FULL)
    assert result.status == 200
    assert result.content_type == "application/x-apple-aspen-config"
    assert result.body == mobileconfig(FULL, "alice@example.test")
    assert ("Content-Disposition",
            'attachment; filename="mail.example.test.mobileconfig"') in result.headers


@pytest.mark.parametrize(("query", "status"), [
    ("", 400), ("?emailaddress=", 400), ("?emailaddress=x", 400),
    ("?emailaddress=a%40other.test", 404), ("?emailaddress=a%0d%0a%40example.test", 400),
])
def test_route_mobileconfig_errors(query: str, status: int) -> None:
    assert answer("GET", "/email.mobileconfig" + query, b"", FULL).status == status


def test_route_query_field_limit() -> None:
    at_limit = "&".join(["a=b"] * (MAX_QUERY_FIELDS - 1) + ["emailaddress=a%40example.test"])
    assert answer("GET", f"/email.mobileconfig?{at_limit}", b"", FULL).status == 200
    past = "&".join(["a=b"] * MAX_QUERY_FIELDS + ["emailaddress=a%40example.test"])
    result = answer("GET", f"/email.mobileconfig?{past}", b"", FULL)
    assert (result.status, result.close) == (400, True)


def test_route_bad_target_is_400() -> None:
    result = answer("GET", "mail/config-v1.1.xml", b"", FULL)
    assert (result.status, result.close) == (400, True)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "X"]),
       target=st.one_of(st.text(max_size=200),
                        st.builds(lambda p, q: p + "?" + q,
                                  st.sampled_from(["/autodiscover/autodiscover.xml",
                                                   "/email.mobileconfig",
                                                   "/mail/config-v1.1.xml"]),
                                  st.text(max_size=200))),
       body=st.binary(max_size=300))
def test_route_any_request_gets_an_answer(method: str, target: str, body: bytes) -> None:
    """Whatever arrives, the answer is an HTTP status, never an exception."""
    result = answer(method, target, body, FULL)
    assert result.status in (200, 400, 404, 405)


def test_acme_http01_tokens_answered_before_other_routes() -> None:
    """RFC 8555 §8.3: GET/HEAD of a pending token's path is 200 with the key authorization;
    any other token, or no lookup at all, is 404; other methods are refused as anywhere."""
    tokens = {"/.well-known/acme-challenge/tok": b"tok.thumbprint"}
    for method in ("GET", "HEAD"):
        hit = answer(method, "/.well-known/acme-challenge/tok", b"", FULL, tokens.get)
        assert (hit.status, hit.body, hit.content_type) == (
            200, b"tok.thumbprint", "application/octet-stream")
    assert answer("GET", "/.well-known/acme-challenge/other", b"", FULL,
                  tokens.get).status == 404
    assert answer("GET", "/.well-known/acme-challenge/tok", b"", FULL).status == 404
    assert answer("POST", "/.well-known/acme-challenge/tok", b"", FULL,
                  tokens.get).status == 404
    # Absolute-form targets (through a proxy) reach the same token.
    assert answer("GET", "http://mail.example.test/.well-known/acme-challenge/tok", b"",
                  FULL, tokens.get).status == 200
