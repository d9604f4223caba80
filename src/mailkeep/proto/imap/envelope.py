"""ENVELOPE (RFC 3501 §7.4.2) from the raw header of a message.

RFC 3501 §7.4.2: the envelope's strings are the header's own text, so encoded words
(RFC 2047) are NOT decoded here; the client decodes them. Values are unfolded (RFC 5322
§2.2.3) and returned in the shared value tree (values.py): `str` for 7-bit text, `bytes`
for 8-bit text, so the renderer sends 8-bit octets exactly as stored, as a literal.

Addresses are parsed with our own lenient RFC 5322 §3.4 reader rather than
email.utils.getaddresses, because IMAP needs what that function drops: the source route
(adl), group syntax, and the phrase exactly as written.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailkeep.proto.imap.mime import MimePart
from mailkeep.proto.imap.values import Value

# Dovecot's placeholders for an address without a local part or domain (message-address.c,
# fill_missing), so a broken address still reads as an address and never as a group
# marker (a NIL host means group syntax, RFC 3501 §7.4.2).
MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

MAX_ADDRESSES = 1000  # per header field; bounds the envelope of a hostile To: line


def nstring(text: str | None) -> Value:
    """A header-derived string as a value: NIL, 7-bit str, or the original 8-bit bytes.

    CR, LF and NUL cannot appear in an IMAP string (RFC 3501 §4.3, §9 CHAR8/TEXT-CHAR), so
    stray ones left after unfolding are dropped."""
    if text is None:
        return None
    if "\r" in text or "\n" in text or "\0" in text:
        text = text.replace("\r", "").replace("\n", "").replace("\0", "")
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Address:
    """RFC 3501 §7.4.2 address: (name adl mailbox host); host None marks group syntax."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    def value(self) -> Value:
        return [nstring(self.name), nstring(self.adl), nstring(self.mailbox), nstring(self.host)]


def envelope(part: MimePart) -> Value:
    """The ENVELOPE of a message (a top-level MimePart, or `part.message` of a
    message/rfc822 part): (date subject from sender reply-to to cc bcc in-reply-to
    message-id)."""

    def text(key: str) -> str | None:
        f = part.first(key)
        return None if f is None else f.unfolded

    def addrs(key: str) -> list[Address]:
        f = part.first(key)
        return [] if f is None else parse_address_list(f.unfolded)

    from_ = addrs("from")
    # RFC 3501 §7.4.2: sender and reply-to default to from when absent (or empty).
    sender = addrs("sender") or from_
    reply_to = addrs("reply-to") or from_
    return [
        nstring(text("date")),
        nstring(text("subject")),
        address_list_value(from_),
        address_list_value(sender),
        address_list_value(reply_to),
        address_list_value(addrs("to")),
        address_list_value(addrs("cc")),
        address_list_value(addrs("bcc")),
        nstring(text("in-reply-to")),
        nstring(text("message-id")),
    ]


def address_list_value(addresses: list[Address]) -> Value:
    if not addresses:
        return None  # RFC 3501 §9: env-from etc. are "(" 1*address ")" / nil
    return [a.value() for a in addresses]


# -- RFC 5322 §3.4 address-list, leniently -------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "atom", "qs" (quoted string), "comment", "dlit" (domain literal), "special"
    text: str  # atom text, unescaped quoted/comment content, the literal with brackets
    space: bool  # white space (or a comment) before it


_SPECIALS = frozenset('()<>[]:;@\\,."')


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(text)
    space = False
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            space = True
            i += 1
        elif c == "(":
            depth, j, chars = 0, i, []
            while j < n:
                ch = text[j]
                if ch == "\\" and j + 1 < n:
                    j += 1
                    chars.append(text[j])
                elif ch == "(":
                    depth += 1
                    if depth > 1:
                        chars.append(ch)
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                    chars.append(ch)
                else:
                    chars.append(ch)
                j += 1
            toks.append(_Tok("comment", "".join(chars), space))
            space = True
            i = j + 1
        elif c == '"':
            j, chars = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(text[j])
                j += 1
            toks.append(_Tok("qs", "".join(chars), space))
            space = False
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            toks.append(_Tok("dlit", text[i : j + 1], space))
            space = False
            i = j + 1
        elif c in _SPECIALS:
            toks.append(_Tok("special", c, space))
            space = False
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and text[j] not in " \t\r\n":
                j += 1
            toks.append(_Tok("atom", text[i:j], space))
            space = False
            i = j
    return toks


def _is(tok: _Tok, char: str) -> bool:
    return tok.kind == "special" and tok.text == char


def parse_address_list(text: str) -> list[Address]:
    """address-list with group syntax; never fails, skips what names no one.

    A group becomes (NIL NIL "name" NIL), its members, then (NIL NIL NIL NIL)
    (RFC 3501 §7.4.2)."""
    out: list[Address] = []
    current: list[_Tok] = []
    in_group = False
    angle = False

    def flush() -> None:
        if current and len(out) < MAX_ADDRESSES:
            addr = _mailbox(current)
            if addr is not None:
                out.append(addr)
        current.clear()

    for tok in _lex(text):
        if len(out) >= MAX_ADDRESSES:
            break
        if tok.kind == "special" and not angle:
            if tok.text == ",":
                flush()
                continue
            if tok.text == ":" and not in_group:
                out.append(Address(None, None, _phrase(current) or "", None))
                current.clear()
                in_group = True
                continue
            if tok.text == ";":
                flush()
                if in_group:
                    out.append(Address(None, None, None, None))
                    in_group = False
                continue
        if _is(tok, "<"):
            angle = True
        elif _is(tok, ">"):
            angle = False
        current.append(tok)
    flush()
    if in_group:
        out.append(Address(None, None, None, None))
    return out


def _phrase(toks: list[_Tok]) -> str | None:
    """display-name: words kept as written (encoded words included), one space where the
    original had white space; quoted strings unquoted; comments dropped."""
    parts: list[str] = []
    for tok in toks:
        if tok.kind == "comment":
            continue
        if parts and tok.space:
            parts.append(" ")
        parts.append(tok.text)
    text = "".join(parts).strip()
    return text or None


def _addr_spec(toks: list[_Tok]) -> tuple[str | None, str | None]:
    """local-part "@" domain -> (mailbox, host); split at the last "@"."""
    toks = [t for t in toks if t.kind != "comment"]
    at = max((i for i, t in enumerate(toks) if _is(t, "@")), default=-1)
    local = toks if at < 0 else toks[:at]
    domain = [] if at < 0 else toks[at + 1 :]

    def join(ts: list[_Tok]) -> str:
        return "".join('"' + t.text.replace("\\", "\\\\").replace('"', '\\"') + '"'
                       if t.kind == "qs" else t.text for t in ts)

    return join(local) or None, join(domain) or None


def _mailbox(toks: list[_Tok]) -> Address | None:
    if all(t.kind == "comment" for t in toks):
        return None
    lt = next((i for i, t in enumerate(toks) if _is(t, "<")), -1)
    adl: str | None = None
    if lt >= 0:
        name = _phrase(toks[:lt])
        gt = next((i for i in range(lt + 1, len(toks)) if _is(toks[i], ">")), len(toks))
        inner = [t for t in toks[lt + 1 : gt] if t.kind != "comment"]
        if inner and _is(inner[0], "@"):
            # RFC 5322 §4.4 obs-route: "@a,@b:" before the addr-spec (RFC 3501: adl)
            colon = next((i for i, t in enumerate(inner) if _is(t, ":")), -1)
            if colon >= 0:
                adl = "".join(t.text for t in inner[:colon]) or None
                inner = inner[colon + 1 :]
        mailbox, host = _addr_spec(inner)
        if name is None:
            # "<a@b> (Name)": a trailing comment names the owner, as in RFC 822 usage
            name = next((t.text.strip() or None for t in toks[gt:] if t.kind == "comment"),
                        None)
    else:
        mailbox, host = _addr_spec(toks)
        # RFC 822 style "a@b (Real Name)": the comment is the only name there is
        name = next((t.text.strip() or None for t in toks if t.kind == "comment"), None)
    return Address(name, adl, mailbox or MISSING_MAILBOX, host or MISSING_DOMAIN)
