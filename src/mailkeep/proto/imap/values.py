"""The value tree shared by every IMAP module that produces response data.

Producers (ENVELOPE, BODYSTRUCTURE, FETCH items, STATUS, LIST) build trees of these Python
values; proto/imap/render.py alone turns them into bytes, choosing atom, quoted string or
literal (RFC 3501 §4):

    None            NIL
    int             number (RFC 3501 §4.2: 0 .. 2**32-1; 64-bit allowed by later RFCs)
    Atom("\\Seen")  an atom written as is (flags, keywords, "BODY[TEXT]" item names)
    str             a string; quoted when it is short 7-bit text, else a literal
    bytes           a string that is always sent as a literal (message data, 8-bit text)
    list / tuple    a parenthesized list
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class Atom:
    text: str

    def __str__(self) -> str:
        return self.text


class Rendered(bytes):
    """A value already in its wire form (render.render() output), written as it is: a
    FETCH item derived from a cached message (ENVELOPE, BODYSTRUCTURE) is rendered once,
    not at every FETCH of it."""

    __slots__ = ()


Value: TypeAlias = "int | Atom | str | bytes | list[Value] | tuple[Value, ...] | None"
