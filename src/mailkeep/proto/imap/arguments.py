"""Arguments shared by many IMAP commands (RFC 3501 §9): mailbox names, sequence sets, flags,
dates. grammar.py (the base commands) and grammar_ext.py (the extensions) both read them.

Mailbox names arrive as modified UTF-7 (RFC 3501 §5.1.3), or as UTF-8 once the client has
enabled UTF8=ACCEPT (RFC 6855 §3; the Cursor says so), and leave here as str; "INBOX" in any
case is "INBOX" (RFC 3501 §5.1).
"""

from __future__ import annotations

import datetime as dt

from mailkeep.proto.imap import mutf7
from mailkeep.proto.imap.lexer import LIST_CHARS, Cursor
from mailkeep.proto.imap.search import MONTHS, SYSTEM_FLAGS
from mailkeep.proto.imap.sequence import SEQUENCE_CHARS, SequenceError, SequenceSet


def mailbox(cur: Cursor) -> str:
    """RFC 3501 §9 mailbox = "INBOX" / astring, decoded from modified UTF-7 (or UTF-8)."""
    return mailbox_name(cur.astring_bytes(eight_bit=True), utf8=cur.utf8)


def mailbox_name(raw: bytes, *, utf8: bool = False) -> str:
    """A mailbox name as the client sent it, decoded. Never raises: a name no mailbox can
    have comes back as mutf7.InvalidMailboxName (the executor answers NO)."""
    try:
        if utf8:
            # RFC 6855 §3: after ENABLE UTF8=ACCEPT names are UTF-8, not modified UTF-7
            # ("&" is itself); they must be valid UTF-8 (Net-Unicode, RFC 5198).
            name = raw.decode("utf-8")
            if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
                raise UnicodeDecodeError("utf-8", raw, 0, len(raw), "control character")
        else:
            name = mutf7.decode(raw.decode("ascii"))
    except (UnicodeDecodeError, mutf7.Mutf7Error):
        # Well-formed IMAP, but no mailbox can have this name: the executor answers NO
        # (and a SELECT deselects), not BAD. See mutf7.InvalidMailboxName.
        return mutf7.InvalidMailboxName(raw.decode("utf-8", "replace"))
    return "INBOX" if name.upper() == "INBOX" else name  # RFC 3501 §5.1


def list_mailbox(cur: Cursor) -> str:
    """RFC 3501 §9 list-mailbox = 1*list-char / string."""
    return mailbox_name(cur.astring_bytes(LIST_CHARS, eight_bit=True), utf8=cur.utf8)


def sequence_set(cur: Cursor) -> SequenceSet:
    raw = cur.take(SEQUENCE_CHARS)
    try:
        return SequenceSet.parse(raw.decode("ascii"))
    except SequenceError as exc:
        raise cur.error(str(exc)) from None


def flag(cur: Cursor) -> str:
    """RFC 3501 §9 flag: system flags in their canonical case, "\\" atom, or a keyword."""
    if cur.peek() == ord("\\"):
        cur.pos += 1
        name = "\\" + cur.atom("a flag name")
        return SYSTEM_FLAGS.get(name.upper(), name)
    return cur.atom("a flag")


def flag_list(cur: Cursor) -> tuple[str, ...]:
    """RFC 3501 §9 flag-list = "(" [flag *(SP flag)] ")"."""
    cur.expect(b"(")
    flags: list[str] = []
    if cur.peek() != ord(")"):
        flags.append(flag(cur))
        while cur.skip_sp():
            flags.append(flag(cur))
    cur.expect(b")")
    return tuple(dict.fromkeys(flags))


def date_time(cur: Cursor) -> dt.datetime:
    """RFC 3501 §9 date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time
    SP zone DQUOTE, e.g. "17-Jul-1996 02:44:25 -0700"."""
    raw = cur.quoted()
    text = raw.decode("ascii", "replace")
    if len(text) != 26 or text[2] != "-" or text[6] != "-" or text[11] != " " \
            or text[14] != ":" or text[17] != ":" or text[20] != " " or text[21] not in "+-":
        raise cur.error("expected a date-time like \"17-Jul-1996 02:44:25 -0700\"")
    day, month, year = text[0:2].lstrip(" "), text[3:6].upper(), text[7:11]
    numbers = (day, year, text[12:14], text[15:17], text[18:20], text[22:26])
    if month not in MONTHS or not all(n.isascii() and n.isdigit() for n in numbers):
        raise cur.error("bad date-time")
    zone = int(text[22:24]) * 60 + int(text[24:26])
    try:
        tz = dt.timezone(dt.timedelta(minutes=-zone if text[21] == "-" else zone))
        return dt.datetime(int(year), MONTHS.index(month) + 1, int(day), int(text[12:14]),
                           int(text[15:17]), int(text[18:20]), tzinfo=tz)
    except ValueError:
        raise cur.error("no such date-time") from None
