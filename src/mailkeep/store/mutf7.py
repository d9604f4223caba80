"""Modified UTF-7 (RFC 3501 §5.1.3), the encoding of mailbox names on disk.

Dovecot (mailbox_list_utf8 = no, the default) names Maildir++ folders in modified UTF-7:
"Entwürfe" is the directory ".Entw&APw-rfe", "a&b" is ".a&-b". The store keeps names as
str and converts here, in one place. The IMAP parser decodes the wire form itself; this copy
is private to the store (proto/ must not be imported by store/, nor store/ by proto/).
"""

from __future__ import annotations

import base64
import re


class MUtf7Error(ValueError):
    """Not valid modified UTF-7."""


def _b64(text: str) -> str:
    raw = text.encode("utf-16-be")
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """str -> modified UTF-7: printable ASCII as itself ("&" as "&-"), the rest in &...-."""
    out: list[str] = []
    pending: list[str] = []
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            if pending:
                out.append("&" + _b64("".join(pending)) + "-")
                pending = []
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    if pending:
        out.append("&" + _b64("".join(pending)) + "-")
    return "".join(out)


_RUN = re.compile(r"&([^-]*)-")
_B64_CHARS = re.compile(r"^[A-Za-z0-9+,]+$")


def decode(text: str) -> str:
    """modified UTF-7 -> str; MUtf7Error for anything an encoder would not have written."""
    out: list[str] = []
    pos = 0
    for m in _RUN.finditer(text):
        out.append(_printable(text[pos:m.start()]))
        body = m.group(1)
        if body == "":
            out.append("&")
        else:
            if not _B64_CHARS.match(body):
                raise MUtf7Error(f"bad base64 in {text!r}")
            padded = body.replace(",", "/") + "=" * (-len(body) % 4)
            try:
                raw = base64.b64decode(padded, validate=True)
                decoded = raw.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                raise MUtf7Error(f"bad UTF-16 in {text!r}") from None
            # RFC 3501 §5.1.3: printable ASCII must not be base64-encoded; and the encoder
            # never writes padding bits, so re-encoding must give the same text.
            if any(0x20 <= ord(c) <= 0x7E for c in decoded) or _b64(decoded) != body:
                raise MUtf7Error(f"non-canonical modified UTF-7 {text!r}")
            out.append(decoded)
        pos = m.end()
    out.append(_printable(text[pos:]))
    return "".join(out)


def _printable(chunk: str) -> str:
    if "&" in chunk or any(not 0x20 <= ord(c) <= 0x7E for c in chunk):
        raise MUtf7Error(f"not modified UTF-7: {chunk!r}")
    return chunk
