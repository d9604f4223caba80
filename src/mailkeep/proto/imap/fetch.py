"""FETCH response data (RFC 3501 §6.4.5, §7.4.2) for one message, as value trees.

    needs_message(items)        False for FLAGS / UID / INTERNALDATE / RFC822.SIZE only:
                                FETCH 1:* (FLAGS UID RFC822.SIZE) never opens a file
    fetch_items(items, ...)     [(name, value)] for render.fetch_response()

The message, when needed, is a parsed mime.MimePart (the driver caches them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import cast

from mailkeep.proto.imap import sections
from mailkeep.proto.imap.bodystructure import body, bodystructure
from mailkeep.proto.imap.envelope import envelope
from mailkeep.proto.imap.fetch_att import FetchItem
from mailkeep.proto.imap.mailboxview import flags_value
from mailkeep.proto.imap.mime import MimePart
from mailkeep.proto.imap.render import render
from mailkeep.proto.imap.values import Rendered, Value

# Items answered from the index alone (store.base.MessageRecord).
INDEX_ITEMS = frozenset({"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def needs_message(items: Sequence[FetchItem]) -> bool:
    return any(item.name not in INDEX_ITEMS for item in items)


def date_time(when: dt.datetime) -> str:
    """RFC 3501 §9 date-time: "17-Jul-1996 02:44:25 -0700" (date-day-fixed: space-padded)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (f"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
            f"{sign}{minutes // 60:02d}{minutes % 60:02d}")


def section_data(item: FetchItem, part: MimePart) -> Value:
    """BODY[section]<partial>: the octets (a literal), or NIL for a part that does not exist
    (like Dovecot: RFC 3501 leaves it open)."""
    assert item.section is not None
    spec = sections.Section(item.section.part, item.section.text, item.section.fields)
    data = sections.section_bytes(part, spec, item.partial)
    return None if data is None else data


def fetch_items(items: Sequence[FetchItem], *, uid: int, flags: frozenset[str],
                internaldate: dt.datetime, size: int,
                part: MimePart | None, modseq: int = 0) -> list[tuple[str, Value]]:
    """The (name, value) pairs for one message, in the order asked (duplicates dropped)."""
    out: list[tuple[str, Value]] = []
    seen: set[str] = set()
    for item in items:
        name = item.response_name()
        if name in seen:
            continue
        seen.add(name)
        if name == "MODSEQ":  # RFC 7162 §3.1.4.2: MODSEQ (n)
            out.append((name, [modseq]))
            continue
        out.append((name, _value(item, uid=uid, flags=flags, internaldate=internaldate,
                                 size=size, part=part)))
    return out


# FETCH items computed from the parsed message alone: kept on it (MimePart.derived).
_DERIVED: dict[str, Callable[[MimePart], Value]] = {
    "ENVELOPE": envelope, "BODYSTRUCTURE": bodystructure, "BODY": body}


def _value(item: FetchItem, *, uid: int, flags: frozenset[str], internaldate: dt.datetime,
           size: int, part: MimePart | None) -> Value:
    name = item.name
    if name == "UID":
        return uid
    if name == "FLAGS":
        return flags_value(flags)
    if name == "INTERNALDATE":
        return date_time(internaldate)
    if name == "RFC822.SIZE":
        return size
    if part is None:  # a driver bug: needs_message() said so
        raise ValueError(f"{name} needs the message")
    if item.section is not None:
        return section_data(item, part)
    if name in _DERIVED:
        found = part.derived.get(name)
        if found is None:
            # Kept rendered: a client refreshing its message list re-renders nothing.
            found = part.derived[name] = Rendered(render(_DERIVED[name](part)))
        return cast(Value, found)
    if name == "RFC822":
        return sections.rfc822(part)
    if name == "RFC822.HEADER":
        return sections.rfc822_header(part)
    if name == "RFC822.TEXT":
        return sections.rfc822_text(part)
    raise ValueError(f"unknown fetch item {name}")  # the grammar admits no other
