"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3).

Printable US-ASCII (0x20-0x7E) stands for itself, except "&" which is written "&-". Any
other run of characters is UTF-16BE, base64 with "," instead of "/", without padding,
between "&" and "-". Decoding is strict: a name has one spelling, so the store never sees
two names for one folder (RFC 3501 §5.1.3: "&" must be followed by base64 or "-";
printable ASCII must not be encoded; adjacent encoded runs are not allowed).
"""

from __future__ import annotations

import base64
import binascii


class Mutf7Error(ValueError):
    """The name is not valid modified UTF-7."""


class InvalidMailboxName(str):
    """A mailbox name that is well-formed IMAP (an astring) but not valid modified UTF-7
    (RFC 3501 §5.1.3), raw 8-bit UTF-8 included (as mbsync sends "Entwürfe"; UTF8=ACCEPT,
    RFC 6855, is not offered). The grammar passes it on instead of answering BAD so that the
    executor refuses the command with NO, as for any name no mailbox can have (and a SELECT
    deselects, RFC 3501 §6.3.1); LIST and LSUB list nothing for it. The text is the octets
    read as UTF-8, for messages only: it never reaches the store."""

    __slots__ = ()


def _direct(ch: str) -> bool:
    return 0x20 <= ord(ch) <= 0x7E


def _b64(run: str) -> str:
    try:
        raw = run.encode("utf-16-be")
    except UnicodeEncodeError:
        raise Mutf7Error("a lone surrogate cannot be encoded") from None
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def encode(name: str) -> str:
    """A str mailbox name as modified UTF-7 (7-bit ASCII) for the wire."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _direct(ch):
            if run:
                out.append("&" + _b64("".join(run)) + "-")
                run.clear()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append("&" + _b64("".join(run)) + "-")
    return "".join(out)


_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def _unb64(run: str) -> str:
    if not run or any(c not in _BASE64_CHARS for c in run):
        raise Mutf7Error("bad modified base64 in mailbox name")
    if len(run) % 4 == 1:
        raise Mutf7Error("truncated modified base64 in mailbox name")
    padded = run.replace(",", "/") + "=" * (-len(run) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise Mutf7Error("bad modified base64 in mailbox name") from None
    # Leftover bits must be zero and whole UTF-16 units present (one spelling per name).
    if len(raw) % 2 or _b64_raw(raw) != run:
        raise Mutf7Error("non-canonical modified base64 in mailbox name")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise Mutf7Error("invalid UTF-16 in mailbox name") from None
    if any(_direct(c) for c in text):
        raise Mutf7Error("printable ASCII must not be base64-encoded in a mailbox name")
    return text


def _b64_raw(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")


def decode(wire: str) -> str:
    """A modified UTF-7 name from the wire as str; Mutf7Error if it is not canonical."""
    out: list[str] = []
    i = 0
    n = len(wire)
    previous_run_end = -1
    while i < n:
        ch = wire[i]
        if not _direct(ch):
            raise Mutf7Error("mailbox name has characters outside printable US-ASCII")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = wire.find("-", i + 1)
        if end < 0:
            raise Mutf7Error("unterminated '&' sequence in mailbox name")
        if end == i + 1:
            out.append("&")
        else:
            if previous_run_end == i:
                raise Mutf7Error("adjacent encoded runs in mailbox name")
            out.append(_unb64(wire[i + 1:end]))
            previous_run_end = end + 1
        i = end + 1
    return "".join(out)
