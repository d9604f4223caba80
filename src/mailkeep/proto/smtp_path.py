"""MAIL FROM / RCPT TO arguments (RFC 5321 §4.1.1.2-3, §4.1.2): the path and its parameters.

    reverse = parse_mail_argument('FROM:<alice@example.test> SIZE=1000 RET=HDRS', utf8=False)
    forward = parse_rcpt_argument('TO:<bob@example.test> NOTIFY=FAILURE', utf8=False)

Strict where strictness defends the relay: a mailbox is one local part (a dot-string or a
quoted string) and one domain (a host name or an address literal), so the classic relay
tricks cannot hide a second destination: "user@remote@local" and an unbalanced quote are
syntax errors, a source route ("@local:user@remote") is dropped as RFC 5321 §4.1.1.3 tells
servers to (the mailbox after it is what counts), "user%remote@local" and "remote!user@local"
are just local parts (no such user), a bare IP address as a domain ("user@192.0.2.1") is
refused (an address literal is bracketed), and control characters are refused. Parameter values
keep their case (ENVID and ORCPT are case-sensitive xtext); keywords do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailkeep.proto.address import is_numeric_domain

# RFC 5321 §4.5.3.1.1-3: local part 64 octets, domain 255, a whole path 256.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ULABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]{0,61}" \
          r"[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN_UTF8 = re.compile(rf"{_ULABEL}(?:\.{_ULABEL})*")
# RFC 5321 §4.1.3: address literals; the content is checked loosely (it is never routed).
_ADDRESS_LITERAL = re.compile(r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9.]+|[A-Za-z0-9-]+:[!-Z^-~]+)\]")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class PathError(ValueError):
    """The argument is malformed: `reply` is the SMTP reply to send."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class PathArgument:
    address: str                      # "" for the null reverse-path <>
    params: dict[str, str | None]     # KEYWORD (upper case) -> value as sent, or None


def _mailbox(text: str, utf8: bool) -> str:
    if len(text) > MAX_PATH:
        raise PathError("501 5.1.3 Path too long (RFC 5321 §4.5.3.1.3)")
    if text.startswith('"'):
        m = _QUOTED.match(text)
        if m is None:
            raise PathError("553 5.1.3 Malformed address: unbalanced quotes")
        local, rest = m.group(), text[m.end():]
        if not rest.startswith("@"):
            raise PathError("553 5.1.3 Malformed address: expected @domain after the "
                            "local part")
        domain = rest[1:]
    else:
        local, at, domain = text.partition("@")
        if not at:
            raise PathError("553 5.1.3 Malformed address: no domain (use user@domain)")
        if not (_DOT_STRING_UTF8 if utf8 else _DOT_STRING).fullmatch(local):
            raise PathError("553 5.1.3 Malformed address: bad local part")
    if len(local) > MAX_LOCAL_PART:
        raise PathError("553 5.1.3 Local part too long (RFC 5321 §4.5.3.1.1)")
    if len(domain) > MAX_DOMAIN:
        raise PathError("553 5.1.3 Domain too long (RFC 5321 §4.5.3.1.2)")
    if not ((_DOMAIN_UTF8 if utf8 else _DOMAIN).fullmatch(domain)
            or _ADDRESS_LITERAL.fullmatch(domain)):
        raise PathError("553 5.1.3 Malformed address: bad domain")
    if not domain.startswith("[") and is_numeric_domain(domain):
        # RFC 5321 §4.1.3 (and RFC 1123 §2.1): an IP address as a domain is written as an
        # address literal, "[192.0.2.1]"; bare, it must not reach a resolver or a relay
        # that would read it as an address (Postfix: resolve_numeric_domain = no).
        raise PathError(f"553 5.1.3 Malformed address: {domain} is an IP address, not a "
                        "domain (an address literal needs brackets)")
    return f"{local}@{domain}"


def _split(argument: str, keyword: str) -> tuple[str, str]:
    """("<path>", "params") after the "FROM:" / "TO:" keyword."""
    head = argument[:len(keyword)]
    if head.upper() != keyword:
        raise PathError(f"501 5.5.4 Syntax: {'MAIL FROM' if keyword == 'FROM:' else 'RCPT TO'}"
                        ":<address> [parameters]")
    rest = argument[len(keyword):].lstrip(" ")  # DEVIATION (RFC 5321): "FROM: <a>" accepted
    if rest.startswith("<"):
        end = rest.find(">")
        if end < 0:
            raise PathError("501 5.1.3 Syntax: missing > after the address")
        return rest[1:end], rest[end + 1:]
    # DEVIATION (RFC 5321 §4.1.2 wants angle brackets): a bare address is accepted, as
    # Postfix and most servers do, but then nothing may precede the parameters.
    path, _, params = rest.partition(" ")
    return path, " " + params if params else ""


def _params(text: str) -> dict[str, str | None]:
    if text and not text.startswith(" "):
        raise PathError("501 5.5.4 Syntax: parameters must follow the address after a space")
    out: dict[str, str | None] = {}
    for token in text.split():
        m = _PARAM.fullmatch(token)
        if m is None:
            raise PathError("501 5.5.4 Syntax: bad parameter")
        key = m.group(1).upper()
        if key in out:
            raise PathError(f"501 5.5.4 Parameter {key} given twice")
        out[key] = m.group(2)
    return out


def _parse(argument: str, keyword: str, utf8: bool, allow_null: bool) -> PathArgument:
    if _CONTROL.search(argument):
        raise PathError("501 5.5.2 Syntax: control characters are not allowed")
    path, rest = _split(argument, keyword)
    params = _params(rest)
    if path == "":
        if not allow_null:
            raise PathError("501 5.1.3 Syntax: a recipient cannot be empty")
        return PathArgument("", params)
    if path.startswith("@"):
        # RFC 5321 §4.1.1.3: a source route "MUST BE accepted, SHOULD NOT be used, and
        # SHOULD be ignored": what follows the colon is the mailbox.
        _route, colon, path = path.partition(":")
        if not colon:
            raise PathError("553 5.1.3 Malformed address: source route without ':'")
    if path.lower() == "postmaster" and keyword == "TO:":
        return PathArgument("postmaster", params)  # RFC 5321 §4.1.1.3: <Postmaster>
    if not utf8 and not path.isascii():
        # RFC 6531 §3.5: an internationalized address needs SMTPUTF8 on MAIL.
        raise PathError("553 5.6.7 Non-ASCII address: MAIL FROM must say SMTPUTF8")
    return PathArgument(_mailbox(path, utf8), params)


def parse_mail_argument(argument: str, *, utf8: bool) -> PathArgument:
    """The argument of MAIL ("FROM:<path> params"); <> is the null reverse-path."""
    return _parse(argument, "FROM:", utf8, allow_null=True)


def parse_rcpt_argument(argument: str, *, utf8: bool) -> PathArgument:
    """The argument of RCPT ("TO:<path> params")."""
    return _parse(argument, "TO:", utf8, allow_null=False)
