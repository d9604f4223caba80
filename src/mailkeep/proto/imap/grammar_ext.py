"""Commands and arguments of the IMAP extensions, parsed like grammar.py's base commands.

    MOVE / UID MOVE            RFC 6851
    ID                         RFC 2971
    GETQUOTA, GETQUOTAROOT     RFC 9208 (SETQUOTA needs QUOTASET, which is not offered)
    COMPRESS                   RFC 4978
    LIST options               RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154
    CREATE ... (USE (...))     RFC 6154 CREATE-SPECIAL-USE
    APPEND of several messages RFC 3502 MULTIAPPEND; "UTF8 (~{n}...)" RFC 6855 §4

grammar.py imports this module (never the other way round) and puts its parsers into the
command table; the shared arguments come from arguments.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from mailkeep.proto.imap.arguments import date_time, flag_list, list_mailbox, mailbox, sequence_set
from mailkeep.proto.imap.lexer import Cursor
from mailkeep.proto.imap.sequence import SequenceSet

# RFC 2971 §3.3: field strings of at most 30 octets, values of at most 1024, at most 30
# pairs; a client sending more is in error.
ID_MAX_FIELD_OCTETS = 30
ID_MAX_VALUE_OCTETS = 1024
ID_MAX_PAIRS = 30

# RFC 5258 §3.1 selection options (+ RFC 6154 §2 SPECIAL-USE) and §3.2 return options
# (+ RFC 6154 SPECIAL-USE, RFC 5819 STATUS) that we know; any other is BAD (§3: "MUST
# reject ... with a BAD response").
SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
# RFC 6154 §2: the special-use attributes.
USE_ATTRIBUTES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent",
                            "\\Trash"})
_USES_BY_UPPER = {u.upper(): u for u in USE_ATTRIBUTES}


@dataclass(frozen=True, slots=True)
class Move:
    """RFC 6851 §3.1: MOVE sequence-set mailbox (UID MOVE when `uid`)."""

    name: ClassVar[str] = "MOVE"
    tag: str
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Id:
    """RFC 2971 §3.1: the client's identification, None for NIL (values None for NIL)."""

    name: ClassVar[str] = "ID"
    tag: str
    fields: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class GetQuota:
    """RFC 9208 §4.1.1."""

    name: ClassVar[str] = "GETQUOTA"
    tag: str
    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot:
    """RFC 9208 §4.1.2."""

    name: ClassVar[str] = "GETQUOTAROOT"
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class Compress:
    """RFC 4978 §3: COMPRESS mechanism (upper case)."""

    name: ClassVar[str] = "COMPRESS"
    tag: str
    mechanism: str


ExtensionCommand = Move | Id | GetQuota | GetQuotaRoot | Compress


@dataclass(frozen=True, slots=True)
class ListOptions:
    """RFC 5258: what an extended LIST asked for. `selection` and `returns` hold option
    names (upper case); `status` the RFC 5819 STATUS items (validated by grammar.py)."""

    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status: tuple[str, ...] = ()

    def selects(self, option: str) -> bool:
        return option in self.selection

    def wants(self, option: str) -> bool:
        """Is the return option asked for, directly or implied by a selection option
        (RFC 5258 §3.1: SUBSCRIBED implies RETURN (SUBSCRIBED); RFC 6154 §2: SPECIAL-USE
        implies RETURN (SPECIAL-USE))?"""
        return option in self.returns or (option in ("SUBSCRIBED", "SPECIAL-USE")
                                          and option in self.selection)


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of an APPEND (RFC 3502: there may be several). `utf8`: sent as
    "UTF8 (~{n}...)" (RFC 6855 §4)."""

    flags: tuple[str, ...]
    internaldate: dt.datetime | None
    message: bytes = field(repr=False)
    utf8: bool = False


# -- parsers ----------------------------------------------------------------------------

def parse_move(cur: Cursor, tag: str, uid: bool = False) -> Move:
    cur.sp()
    numbers = sequence_set(cur)
    cur.sp()
    return Move(tag, numbers, mailbox(cur), uid)


def _string_text(cur: Cursor, what: str, limit: int) -> str:
    raw = cur.string(eight_bit=True)
    if len(raw) > limit:
        raise cur.error(f"ID {what} longer than {limit} octets")  # RFC 2971 §3.3
    return raw.decode("utf-8", "replace")


def parse_id(cur: Cursor, tag: str) -> Id:
    """RFC 2971 §4: id = "ID" SP id-params-list; id-params-list = "(" *(string SP nstring)
    ")" / nil."""
    cur.sp()
    if cur.nil():
        return Id(tag, None)
    cur.expect(b"(")
    pairs: list[tuple[str, str | None]] = []
    while cur.peek() != ord(")"):
        if pairs:
            cur.sp()
        if len(pairs) == ID_MAX_PAIRS:
            raise cur.error(f"more than {ID_MAX_PAIRS} ID pairs (RFC 2971 §3.3)")
        key = _string_text(cur, "field", ID_MAX_FIELD_OCTETS)
        cur.sp()
        value = None if cur.nil() else _string_text(cur, "value", ID_MAX_VALUE_OCTETS)
        pairs.append((key, value))
    cur.expect(b")")
    return Id(tag, tuple(pairs))


def parse_getquota(cur: Cursor, tag: str) -> GetQuota:
    cur.sp()
    return GetQuota(tag, cur.astring("quota root name"))


def parse_getquotaroot(cur: Cursor, tag: str) -> GetQuotaRoot:
    cur.sp()
    return GetQuotaRoot(tag, mailbox(cur))


def parse_compress(cur: Cursor, tag: str) -> Compress:
    cur.sp()
    return Compress(tag, cur.keyword())


PARSERS: dict[str, Callable[[Cursor, str], ExtensionCommand]] = {
    "ID": parse_id, "GETQUOTA": parse_getquota, "GETQUOTAROOT": parse_getquotaroot,
    "COMPRESS": parse_compress, "MOVE": parse_move,
}


# -- LIST-EXTENDED (RFC 5258 §6) ---------------------------------------------------------

def list_selection(cur: Cursor) -> frozenset[str]:
    """list-select-opts = "(" [list-select-opt *(SP list-select-opt)] ")"."""
    cur.expect(b"(")
    found: list[str] = []
    while cur.peek() != ord(")"):
        if found:
            cur.sp()
        option = cur.keyword()
        if option not in SELECTION_OPTIONS:
            raise cur.error(f"unknown LIST selection option {option[:40]}")
        found.append(option)
    cur.expect(b")")
    chosen = frozenset(found)
    # RFC 5258 §3.1: RECURSIVEMATCH needs another selection option that it can apply to
    # ("MUST NOT occur as the only selection option, or only with REMOTE"); of ours only
    # SUBSCRIBED defines CHILDINFO (RFC 6154 gives SPECIAL-USE none).
    if "RECURSIVEMATCH" in chosen and "SUBSCRIBED" not in chosen:
        raise cur.error("RECURSIVEMATCH needs the SUBSCRIBED selection option")
    return chosen


def list_patterns(cur: Cursor) -> tuple[tuple[str, ...], bool]:
    """mbox-or-pat = list-mailbox / patterns; patterns = "(" list-mailbox *(SP ...) ")".
    The patterns, and whether they came as a parenthesized list (an extended LIST)."""
    if not cur.parenthesized():
        return (list_mailbox(cur),), False
    found = [list_mailbox(cur)]
    while cur.skip_sp():
        found.append(list_mailbox(cur))
    cur.expect(b")")
    return tuple(found), True


def list_returns(cur: Cursor) -> tuple[frozenset[str], tuple[str, ...]]:
    """list-return-opts = "RETURN" SP "(" [return-option *(SP return-option)] ")"; the
    options and the STATUS items (RFC 5819 §2: "STATUS" SP "(" status-att-list ")")."""
    word = cur.keyword()
    if word != "RETURN":
        raise cur.error("expected RETURN (...) after the LIST pattern")
    cur.sp()
    cur.expect(b"(")
    found: list[str] = []
    status: list[str] = []
    while cur.peek() != ord(")"):
        if found:
            cur.sp()
        option = cur.keyword()
        if option not in RETURN_OPTIONS:
            raise cur.error(f"unknown LIST return option {option[:40]}")
        if option == "STATUS":
            if "STATUS" in found:
                raise cur.error("STATUS given twice in RETURN")
            cur.sp()
            cur.expect(b"(")
            status.append(cur.keyword())
            while cur.skip_sp():
                status.append(cur.keyword())
            cur.expect(b")")
        found.append(option)
    cur.expect(b")")
    return frozenset(found), tuple(dict.fromkeys(status))


# -- CREATE-SPECIAL-USE (RFC 6154 §6, RFC 4466 create-params) ----------------------------

def create_params(cur: Cursor) -> tuple[str, ...]:
    """create-params = SP "(" create-param *(SP create-param) ")"; the only create-param we
    know is RFC 6154 "USE" SP "(" [use-attr *(SP use-attr)] ")". Returns the use attributes
    (canonical case; unknown "\\" atoms as given, for the executor to refuse)."""
    cur.expect(b"(")
    uses: list[str] = []
    seen_use = False
    while True:
        param = cur.keyword()
        if param != "USE" or seen_use:
            raise cur.error(f"unknown or repeated CREATE parameter {param[:40]}")
        seen_use = True
        cur.sp()
        cur.expect(b"(")
        while cur.peek() != ord(")"):
            if uses:
                cur.sp()
            cur.expect(b"\\", "a use attribute like \\Sent")
            name = "\\" + cur.atom("a use attribute")
            uses.append(_USES_BY_UPPER.get(name.upper(), name))
        cur.expect(b")")
        if not cur.skip_sp():
            break
    cur.expect(b")")
    return tuple(dict.fromkeys(uses))


# -- APPEND (RFC 3502 §6.3.11, RFC 6855 §4) ---------------------------------------------

def append_message(cur: Cursor) -> AppendMessage:
    """append-message = append-opts SP append-data, append-opts = [flag-list SP]
    [date-time SP]; append-data = literal / "UTF8" SP "(" literal8 ")" (RFC 6855 §4:
    only once the client enabled UTF8=ACCEPT)."""
    flags: tuple[str, ...] = ()
    when = None
    if cur.peek() == ord("("):
        flags = flag_list(cur)
        cur.sp()
    if cur.peek() == ord('"'):
        when = date_time(cur)
        cur.sp()
    if cur.peek() in (ord("U"), ord("u")):
        word = cur.keyword()
        if word != "UTF8" or not cur.utf8:
            raise cur.error("UTF8 APPEND data needs ENABLE UTF8=ACCEPT (RFC 6855 §4)")
        cur.sp()
        cur.expect(b"(")
        cur.expect(b"~", "a literal8 (~{n})")
        data = cur.literal()
        cur.expect(b")")
        return AppendMessage(flags, when, data, utf8=True)
    return AppendMessage(flags, when, cur.literal())
