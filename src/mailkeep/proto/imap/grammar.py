"""IMAP4rev1 commands (RFC 3501 §6, formal syntax §9) parsed into frozen dataclasses.

    try:
        command = parse_command(receiver_event.data)
    except ParseError as exc:     # the only exception: reply f"{exc.tag or '*'} BAD ..."
        ...

Parsing knows nothing of state: the machine checks `command.name` against its per-state
table (DESIGN.md habit 2). Mailbox names arrive as modified UTF-7 (RFC 3501 §5.1.3) and
leave here as str; "INBOX" in any case is "INBOX" (RFC 3501 §5.1).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, TypeAlias

from mailkeep.proto.imap import condstore
from mailkeep.proto.imap import grammar_ext as ext
from mailkeep.proto.imap.arguments import (
    date_time,
    flag,
    flag_list,
    list_mailbox,
    mailbox,
    sequence_set,
)
from mailkeep.proto.imap.fetch_att import (
    FETCH_MACROS,
    ITEM_NAME_CHARS,
    BodySection,
    FetchItem,
    fetch_item,
    fetch_items,
)
from mailkeep.proto.imap.lexer import TAG_CHARS, Cursor, ParseError
from mailkeep.proto.imap.search import SearchKey, parse_search
from mailkeep.proto.imap.sequence import SequenceSet

__all__ = ["FETCH_MACROS", "BodySection", "FetchItem", "ParseError", "date_time", "fetch_item",
           "fetch_items", "flag", "flag_list", "list_mailbox", "mailbox", "parse_command",
           "sequence_set"]


# -- commands ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Capability:
    name: ClassVar[str] = "CAPABILITY"
    tag: str


@dataclass(frozen=True, slots=True)
class Noop:
    name: ClassVar[str] = "NOOP"
    tag: str


@dataclass(frozen=True, slots=True)
class Logout:
    name: ClassVar[str] = "LOGOUT"
    tag: str


@dataclass(frozen=True, slots=True)
class StartTls:
    name: ClassVar[str] = "STARTTLS"
    tag: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    """RFC 3501 §6.2.2; `initial_response` per RFC 4959 SASL-IR ("=" is b"")."""

    name: ClassVar[str] = "AUTHENTICATE"
    tag: str
    mechanism: str  # upper case
    initial_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Login:
    name: ClassVar[str] = "LOGIN"
    tag: str
    userid: str
    password: str = field(repr=False)  # habit 8


@dataclass(frozen=True, slots=True)
class Select:
    name: ClassVar[str] = "SELECT"
    tag: str
    mailbox: str
    params: condstore.SelectParams = condstore.NO_SELECT_PARAMS  # RFC 7162 select-params


@dataclass(frozen=True, slots=True)
class Examine:
    name: ClassVar[str] = "EXAMINE"
    tag: str
    mailbox: str
    params: condstore.SelectParams = condstore.NO_SELECT_PARAMS


@dataclass(frozen=True, slots=True)
class Create:
    name: ClassVar[str] = "CREATE"
    tag: str
    mailbox: str
    uses: tuple[str, ...] | None = None  # RFC 6154 CREATE ... (USE (\Sent)); None: no USE


@dataclass(frozen=True, slots=True)
class Delete:
    name: ClassVar[str] = "DELETE"
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename:
    name: ClassVar[str] = "RENAME"
    tag: str
    mailbox: str
    new_name: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    name: ClassVar[str] = "SUBSCRIBE"
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    name: ClassVar[str] = "UNSUBSCRIBE"
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class ListMailboxes:
    """RFC 3501 §6.3.8 LIST: `pattern` keeps its wildcards "*" and "%". An RFC 5258 extended
    LIST has `options` (selection and return options) and may have several `patterns`
    (`pattern` is the first)."""

    name: ClassVar[str] = "LIST"
    tag: str
    reference: str
    pattern: str
    patterns: tuple[str, ...] = ()
    options: ext.ListOptions | None = None  # None: a plain RFC 3501 LIST


@dataclass(frozen=True, slots=True)
class Lsub:
    name: ClassVar[str] = "LSUB"
    tag: str
    reference: str
    pattern: str


STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",  # RFC 3501 §6.3.10
                "HIGHESTMODSEQ",  # RFC 7162 §3.1.6
                "DELETED", "DELETED-STORAGE")  # RFC 9051 §6.3.11, RFC 9208 §4.2


@dataclass(frozen=True, slots=True)
class Status:
    name: ClassVar[str] = "STATUS"
    tag: str
    mailbox: str
    items: tuple[str, ...]  # upper case, from STATUS_ITEMS, in the client's order


@dataclass(frozen=True, slots=True)
class Append:
    """APPEND; RFC 3502 MULTIAPPEND: `more` holds the messages after the first."""

    name: ClassVar[str] = "APPEND"
    tag: str
    mailbox: str
    flags: tuple[str, ...]
    internaldate: dt.datetime | None
    message: bytes = field(repr=False)
    more: tuple[ext.AppendMessage, ...] = ()
    utf8: bool = False  # the first message came as RFC 6855 "UTF8 (~{n}...)"

    @property
    def messages(self) -> tuple[ext.AppendMessage, ...]:
        return (ext.AppendMessage(self.flags, self.internaldate, self.message, self.utf8),
                *self.more)


@dataclass(frozen=True, slots=True)
class Check:
    name: ClassVar[str] = "CHECK"
    tag: str


@dataclass(frozen=True, slots=True)
class Close:
    name: ClassVar[str] = "CLOSE"
    tag: str


@dataclass(frozen=True, slots=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE uid-set (RFC 4315 §2.1) when `uids` is set."""

    name: ClassVar[str] = "EXPUNGE"
    tag: str
    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search:
    name: ClassVar[str] = "SEARCH"
    tag: str
    charset: str | None
    key: SearchKey
    uid: bool = False
    returns: tuple[str, ...] | None = None  # RFC 4731 SEARCH RETURN (...): ESEARCH


@dataclass(frozen=True, slots=True)
class Fetch:
    name: ClassVar[str] = "FETCH"
    tag: str
    sequence_set: SequenceSet
    items: tuple[FetchItem, ...]  # macros expanded
    uid: bool = False
    modifiers: condstore.FetchModifiers = condstore.NO_FETCH_MODIFIERS  # RFC 7162


class StoreMode(Enum):
    REPLACE = ""
    ADD = "+"
    REMOVE = "-"


@dataclass(frozen=True, slots=True)
class Store:
    name: ClassVar[str] = "STORE"
    tag: str
    sequence_set: SequenceSet
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    uid: bool = False
    unchangedsince: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True, slots=True)
class Copy:
    name: ClassVar[str] = "COPY"
    tag: str
    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Idle:  # RFC 2177
    name: ClassVar[str] = "IDLE"
    tag: str


@dataclass(frozen=True, slots=True)
class Enable:  # RFC 5161
    name: ClassVar[str] = "ENABLE"
    tag: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Namespace:  # RFC 2342
    name: ClassVar[str] = "NAMESPACE"
    tag: str


@dataclass(frozen=True, slots=True)
class Unselect:  # RFC 3691
    name: ClassVar[str] = "UNSELECT"
    tag: str


CommandType: TypeAlias = (
    Capability | Noop | Logout | StartTls | Authenticate | Login | Select | Examine | Create
    | Delete | Rename | Subscribe | Unsubscribe | ListMailboxes | Lsub | Status | Append
    | Check | Close | Expunge | Search | Fetch | Store | Copy | Idle | Enable | Namespace
    | Unselect | ext.ExtensionCommand)


# -- the commands -----------------------------------------------------------------------

def _no_args(cls: Callable[[str], CommandType]) -> Callable[[Cursor, str], CommandType]:
    return lambda cur, tag: cls(tag)


def _one_mailbox(cls: Callable[[str, str], CommandType]) -> Callable[[Cursor, str], CommandType]:
    def parse(cur: Cursor, tag: str) -> CommandType:
        cur.sp()
        return cls(tag, mailbox(cur))
    return parse


def _authenticate(cur: Cursor, tag: str) -> CommandType:
    cur.sp()
    mechanism = cur.keyword()
    response: bytes | None = None
    if cur.skip_sp():
        raw = cur.take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 b"0123456789+/="))
        try:  # RFC 4959 §3: "=" is an empty initial response
            response = b"" if raw == b"=" else base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise cur.error("initial response is not base64") from None
        if not raw:
            raise cur.error("expected a base64 initial response")
    return Authenticate(tag, mechanism, response)


def _login(cur: Cursor, tag: str) -> CommandType:
    cur.sp()
    userid = cur.astring("user name")
    cur.sp()
    return Login(tag, userid, cur.astring("password"))


def _select(cls: type[Select] | type[Examine]) -> Callable[[Cursor, str], CommandType]:
    def parse(cur: Cursor, tag: str) -> CommandType:
        cur.sp()
        box = mailbox(cur)
        if cur.skip_sp():
            return cls(tag, box, condstore.select_params(cur))  # RFC 7162 §3.1.8, §3.2.5
        return cls(tag, box)
    return parse


def _rename(cur: Cursor, tag: str) -> CommandType:
    cur.sp()
    old = mailbox(cur)
    cur.sp()
    return Rename(tag, old, mailbox(cur))


def _create(cur: Cursor, tag: str) -> CommandType:
    cur.sp()
    name = mailbox(cur)
    if not cur.skip_sp():
        return Create(tag, name)
    return Create(tag, name, ext.create_params(cur))  # RFC 6154 §3 CREATE-SPECIAL-USE


def _lsub(cur: Cursor, tag: str) -> CommandType:
    cur.sp()
    reference = mailbox(cur)
    cur.sp()
    return Lsub(tag, reference, list_mailbox(cur))


def _list(cur: Cursor, tag: str) -> CommandType:
    """RFC 5258 §6: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    [SP list-return-opts]; without the extensions, RFC 3501's LIST."""
    cur.sp()
    selection = ext.list_selection(cur) if cur.peek() == ord("(") else None
    if selection is not None:
        cur.sp()
    reference = mailbox(cur)
    cur.sp()
    patterns, listed = ext.list_patterns(cur)
    returns: frozenset[str] | None = None
    status: tuple[str, ...] = ()
    if cur.skip_sp():
        returns, status = ext.list_returns(cur)
        for item in status:
            if item not in STATUS_ITEMS:
                raise cur.error(f"unknown STATUS item {item[:40]}")
    if selection is None and returns is None and not listed:
        return ListMailboxes(tag, reference, patterns[0])
    options = ext.ListOptions(selection or frozenset(), returns or frozenset(), status)
    return ListMailboxes(tag, reference, patterns[0], patterns, options)


def _status(cur: Cursor, tag: str) -> CommandType:
    cur.sp()
    box = mailbox(cur)
    cur.sp()
    cur.expect(b"(")
    items = [cur.keyword()]
    while cur.skip_sp():
        items.append(cur.keyword())
    cur.expect(b")")
    for item in items:
        if item not in STATUS_ITEMS:
            raise cur.error(f"unknown STATUS item {item[:40]}")
    return Status(tag, box, tuple(items))


def _append(cur: Cursor, tag: str) -> CommandType:
    """RFC 3502 §6.3.11: append = "APPEND" SP mailbox 1*append-message."""
    cur.sp()
    box = mailbox(cur)
    cur.sp()
    first = ext.append_message(cur)
    more: list[ext.AppendMessage] = []
    while cur.skip_sp():
        more.append(ext.append_message(cur))
    return Append(tag, box, first.flags, first.internaldate, first.message, tuple(more),
                  first.utf8)


def _search(cur: Cursor, tag: str, uid: bool = False) -> CommandType:
    cur.sp()
    returns = None
    start = cur.pos
    if cur.take(ITEM_NAME_CHARS).upper() == b"RETURN" and cur.peek() == ord(" "):
        cur.sp()
        returns = condstore.search_return(cur)  # RFC 4731 §3.1
        cur.sp()
    else:
        cur.pos = start
    charset, key = parse_search(cur)
    return Search(tag, charset, key, uid, returns)


def _fetch(cur: Cursor, tag: str, uid: bool = False) -> CommandType:
    cur.sp()
    numbers = sequence_set(cur)
    cur.sp()
    items = fetch_items(cur)
    if cur.skip_sp():
        return Fetch(tag, numbers, items, uid, condstore.fetch_modifiers(cur))
    return Fetch(tag, numbers, items, uid)


def _store(cur: Cursor, tag: str, uid: bool = False) -> CommandType:
    cur.sp()
    numbers = sequence_set(cur)
    cur.sp()
    unchangedsince = None
    if cur.peek() == ord("("):
        unchangedsince = condstore.store_modifiers(cur)
        cur.sp()
    mode = StoreMode.REPLACE
    if cur.peek() in (ord("+"), ord("-")):
        mode = StoreMode(chr(cur.peek()))
        cur.pos += 1
    item = cur.keyword()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise cur.error("expected FLAGS, +FLAGS or -FLAGS (with .SILENT)")
    cur.sp()
    if cur.peek() == ord("("):
        flags = flag_list(cur)
    else:  # RFC 3501 §9 store-att-flags: flag-list / (flag *(SP flag))
        found = [flag(cur)]
        while cur.skip_sp():
            found.append(flag(cur))
        flags = tuple(dict.fromkeys(found))
    return Store(tag, numbers, mode, item == "FLAGS.SILENT", flags, uid, unchangedsince)


def _copy(cur: Cursor, tag: str, uid: bool = False) -> CommandType:
    cur.sp()
    numbers = sequence_set(cur)
    cur.sp()
    return Copy(tag, numbers, mailbox(cur), uid)


def _uid(cur: Cursor, tag: str) -> CommandType:
    cur.sp()
    sub = cur.keyword()
    if sub == "EXPUNGE":
        cur.sp()
        return Expunge(tag, sequence_set(cur))
    parser = {"COPY": _copy, "FETCH": _fetch, "STORE": _store, "SEARCH": _search,
              "MOVE": ext.parse_move}.get(sub)  # RFC 6851 §3.2 UID MOVE
    if parser is None:
        raise cur.error("UID must be followed by COPY, MOVE, FETCH, STORE, SEARCH or EXPUNGE")
    return parser(cur, tag, True)


def _enable(cur: Cursor, tag: str) -> CommandType:
    names = []
    while cur.skip_sp():
        names.append(cur.keyword())
    if not names:
        raise cur.error("ENABLE needs at least one capability")
    return Enable(tag, tuple(names))


_PARSERS: dict[str, Callable[[Cursor, str], CommandType]] = {
    "CAPABILITY": _no_args(Capability), "NOOP": _no_args(Noop), "LOGOUT": _no_args(Logout),
    "STARTTLS": _no_args(StartTls), "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select(Select), "EXAMINE": _select(Examine),
    "CREATE": _create, "DELETE": _one_mailbox(Delete), "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe), "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list, "LSUB": _lsub, "STATUS": _status,
    "APPEND": _append, "CHECK": _no_args(Check), "CLOSE": _no_args(Close),
    "EXPUNGE": _no_args(Expunge), "SEARCH": _search, "FETCH": _fetch, "STORE": _store,
    "COPY": _copy, "UID": _uid, "IDLE": _no_args(Idle), "ENABLE": _enable,
    "NAMESPACE": _no_args(Namespace), "UNSELECT": _no_args(Unselect),
}
_PARSERS.update(ext.PARSERS)
COMMAND_NAMES = frozenset(_PARSERS)


def parse_tag(data: bytes) -> str | None:
    """The tag of a command line, or None if there is none (reply with "* BAD")."""
    cur = Cursor(data)
    raw = cur.take(TAG_CHARS)
    if not raw or cur.peek() not in (ord(" "), -1):
        return None
    return raw.decode("ascii")


def parse_command(data: bytes, *, utf8: bool = False) -> CommandType:
    """One framed command (receiver.Command.data) as a command dataclass. Raises only
    ParseError. `utf8`: the client enabled UTF8=ACCEPT (RFC 6855)."""
    tag = parse_tag(data)
    cur = Cursor(data, tag, utf8=utf8)
    if tag is None:
        raise cur.error("missing or invalid tag")
    cur.pos = len(tag)
    cur.sp()
    name = cur.keyword()
    parser = _PARSERS.get(name)
    if parser is None:
        raise cur.error(f"unknown command {name[:40]}")
    command = parser(cur, tag)
    cur.end()
    return command
