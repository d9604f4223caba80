"""Which HTTP request gets which autoconfiguration document: the whole of the autoconfig
listener's site, decided without I/O (server/autoconfig.py speaks HTTP and asks here).

Nothing but the documented paths is served: no index, no directory listing, no files.
GET and HEAD everywhere; POST only where Outlook uses it (autodiscover).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs

from mailkeep.proto.autoconfig import (
    AUTODISCOVER_INVALID_REQUEST,
    AUTODISCOVER_NOT_FOUND,
    AUTODISCOVER_PATH,
    MOBILECONFIG_CONTENT_TYPE,
    MOBILECONFIG_PATH,
    THUNDERBIRD_PATHS,
    XML_CONTENT_TYPE,
    AutoconfigRequestError,
    MailSetup,
    checked_address,
    mobileconfig,
    outlook_error,
    outlook_request_address,
    outlook_response,
    thunderbird_config,
)
from mailkeep.proto.http import READ_METHODS, Answer, allow, plain, split_target

# Exchange answers autodiscover as text/xml; Outlook and Thunderbird accept it.
AUTODISCOVER_CONTENT_TYPE = "text/xml; charset=utf-8"
# Query parameters parsed at most (urllib's max_num_fields): a query of thousands of
# "&a=b" pairs is refused, not parsed.
MAX_QUERY_FIELDS = 16
# RFC 8555 §8.3: the CA fetches http://<domain>/.well-known/acme-challenge/<token> on port 80.
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
ACME_CONTENT_TYPE = "application/octet-stream"
# path -> key authorization bytes of a pending HTTP-01 challenge, or None.
ChallengeLookup = Callable[[str], bytes | None]
KNOWN_METHODS = ("GET", "HEAD", "POST")


def _query_address(query: str) -> str | None:
    values = parse_qs(query, max_num_fields=MAX_QUERY_FIELDS).get("emailaddress")
    return values[0] if values else None


def route(method: str, target: str, body: bytes, setup: MailSetup,
          challenge: ChallengeLookup | None = None) -> Answer:
    """The answer to one complete request. ValueError from a query with too many fields is
    the caller's 400 (see answer()). `challenge` serves pending ACME HTTP-01 tokens."""
    allowed: tuple[str, ...]
    split = split_target(target)
    path = split[0] if split else ""
    if path.startswith(ACME_CHALLENGE_PREFIX) and method in READ_METHODS:
        # Before every other route and never redirected (RFC 8555 §8.3).
        found = challenge(path) if challenge is not None else None
        if found is None:
            return plain(HTTPStatus.NOT_FOUND)
        return Answer(HTTPStatus.OK, found, ACME_CONTENT_TYPE)
    if path in THUNDERBIRD_PATHS or path == MOBILECONFIG_PATH:
        allowed = READ_METHODS
    elif path.lower() == AUTODISCOVER_PATH:  # IIS paths are case-insensitive; Outlook's vary
        allowed = KNOWN_METHODS
    else:
        allowed = ()
    # RFC 9110 §15.5.6: 405 names the methods the resource has (Allow); an unknown method
    # anywhere gets the same treatment (Allow: GET, HEAD for paths we do not serve).
    if method not in KNOWN_METHODS or (allowed and method not in allowed):
        return plain(HTTPStatus.METHOD_NOT_ALLOWED, headers=allow(allowed or READ_METHODS))
    if split is None:
        return plain(HTTPStatus.BAD_REQUEST, close=True)
    if not allowed:
        return plain(HTTPStatus.NOT_FOUND)
    query = split[1]
    if path in THUNDERBIRD_PATHS:
        # Thunderbird sends ?emailaddress= too; the document names %EMAILADDRESS% instead.
        return Answer(HTTPStatus.OK, thunderbird_config(setup), XML_CONTENT_TYPE)
    if path == MOBILECONFIG_PATH:
        return _apple(_query_address(query), setup)
    return _outlook(method, body, _query_address(query), setup)


def answer(method: str, target: str, body: bytes, setup: MailSetup,
           challenge: ChallengeLookup | None = None) -> Answer:
    """route(), with a malformed query answered 400 instead of raised."""
    try:
        return route(method, target, body, setup, challenge)
    except ValueError:  # parse_qs: more than MAX_QUERY_FIELDS fields
        return plain(HTTPStatus.BAD_REQUEST, close=True)


def _outlook(method: str, body: bytes, query_address: str | None, setup: MailSetup) -> Answer:
    try:
        given = outlook_request_address(body) if method == "POST" else query_address
        if given is None:
            raise AutoconfigRequestError("no emailaddress")
        address = checked_address(given, setup)
    except AutoconfigRequestError:
        return Answer(HTTPStatus.BAD_REQUEST,
                      outlook_error(AUTODISCOVER_INVALID_REQUEST, "Invalid Request"),
                      AUTODISCOVER_CONTENT_TYPE)
    except LookupError:
        return Answer(HTTPStatus.NOT_FOUND,
                      outlook_error(AUTODISCOVER_NOT_FOUND,
                                    "The e-mail address cannot be found."),
                      AUTODISCOVER_CONTENT_TYPE)
    return Answer(HTTPStatus.OK, outlook_response(setup, address), AUTODISCOVER_CONTENT_TYPE)


def _apple(query_address: str | None, setup: MailSetup) -> Answer:
    if query_address is None:
        return Answer(HTTPStatus.BAD_REQUEST,
                      b"400 Bad Request: add ?emailaddress=you@your.domain\n")
    try:
        address = checked_address(query_address, setup)
        document = mobileconfig(setup, address)
    except AutoconfigRequestError:
        return plain(HTTPStatus.BAD_REQUEST)
    except LookupError:
        return plain(HTTPStatus.NOT_FOUND)
    filename = f"{setup.hostname}.mobileconfig"
    return Answer(HTTPStatus.OK, document, MOBILECONFIG_CONTENT_TYPE,
                  (("Content-Disposition", f'attachment; filename="{filename}"'),))
