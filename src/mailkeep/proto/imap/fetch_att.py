"""RFC 3501 §6.4.5 fetch-att: what a FETCH asks for, parsed into frozen FetchItems.

    fetch_items(cursor)   "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.100>)", or a macro
                          (ALL, FAST, FULL) expanded, or one item

BodySection renders back to the section text the response names (RFC 3501 §7.4.2). The
commands themselves are in grammar.py, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailkeep.proto.imap.lexer import ASTRING_CHARS, Cursor


@dataclass(frozen=True, slots=True)
class BodySection:
    """RFC 3501 §6.4.5 section-spec: `part` (() for the whole message) then `text`, one of
    None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"."""

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()  # for HEADER.FIELDS (.NOT), as the client wrote them

    def __str__(self) -> str:
        spec = ".".join(str(p) for p in self.part)
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.fields:
            spec += " (" + " ".join(_field_name(f) for f in self.fields) + ")"
        return spec


def _field_name(name: str) -> str:
    raw = name.encode("utf-8", "replace")
    if raw and all(c in ASTRING_CHARS for c in raw):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One fetch-att. `name`: FLAGS, INTERNALDATE, RFC822.SIZE, RFC822, RFC822.HEADER,
    RFC822.TEXT, ENVELOPE, BODY, BODYSTRUCTURE, UID; BODY with a `section` for
    BODY[...] and BODY.PEEK[...] (peek=True), `partial` = (origin, length)."""

    name: str
    section: BodySection | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> str:
        """The item name in the FETCH response (RFC 3501 §7.4.2): no .PEEK, only the
        origin of a partial."""
        if self.section is None:
            return self.name
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{self.section}]{origin}"

    @property
    def sets_seen(self) -> bool:
        """RFC 3501 §6.4.5: BODY[...], RFC822 and RFC822.TEXT set \\Seen."""
        return (self.section is not None and not self.peek) or self.name in (
            "RFC822", "RFC822.TEXT")


# RFC 3501 §6.4.5 macros.
FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_FETCH = frozenset({"FLAGS", "INTERNALDATE", "RFC822.SIZE", "RFC822", "RFC822.HEADER",
                           "RFC822.TEXT", "ENVELOPE", "BODY", "BODYSTRUCTURE", "UID",
                           "MODSEQ"})  # RFC 7162 §3.1.4.2


ITEM_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")


def fetch_items(cur: Cursor) -> tuple[FetchItem, ...]:
    if cur.parenthesized():
        items = [fetch_item(cur)]
        while cur.skip_sp():
            items.append(fetch_item(cur))
        cur.expect(b")")
        return tuple(items)
    start = cur.pos
    word = cur.take(ITEM_NAME_CHARS).decode("ascii").upper()
    if word in FETCH_MACROS:
        return tuple(FetchItem(n) for n in FETCH_MACROS[word])
    cur.pos = start
    return (fetch_item(cur),)


def fetch_item(cur: Cursor) -> FetchItem:
    name = cur.take(ITEM_NAME_CHARS).decode("ascii").upper()
    if name in ("BODY", "BODY.PEEK") and cur.peek() == ord("["):
        cur.pos += 1
        section = BodySection() if cur.peek() == ord("]") else _section_spec(cur)
        cur.expect(b"]")
        partial = None
        if cur.peek() == ord("<"):
            cur.pos += 1
            origin = cur.number("a partial origin")
            cur.expect(b".")
            partial = (origin, cur.nz_number("a partial length"))
            cur.expect(b">")
        return FetchItem("BODY", section, name == "BODY.PEEK", partial)
    if name not in _SIMPLE_FETCH:
        raise cur.error(f"unknown fetch item {name[:40] or 'at ' + str(cur.pos)}")
    return FetchItem(name)


def _section_spec(cur: Cursor) -> BodySection:
    part: list[int] = []
    while ord("0") <= cur.peek() <= ord("9"):
        part.append(cur.nz_number("a part number"))
        if not cur.peek_is(b"."):
            return BodySection(tuple(part))
        cur.pos += 1
    text = cur.take(ITEM_NAME_CHARS).decode("ascii").upper()
    if text in ("HEADER", "TEXT") or (text == "MIME" and part):
        return BodySection(tuple(part), text)
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        cur.sp()
        cur.expect(b"(")
        fields = [cur.astring("header field name")]
        while cur.skip_sp():
            fields.append(cur.astring("header field name"))
        cur.expect(b")")
        return BodySection(tuple(part), text, tuple(fields))
    raise cur.error("bad section in BODY[...]")
