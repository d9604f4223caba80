"""The SEARCH evaluator (RFC 3501 §6.4.4): a key tree (search.py) compiled once per command
and run against each message.

    program = SearchProgram(key, messages=n, largest_uid=u)   # once per SEARCH
    hits = [m.seq for m in views if program.matches(m)]

The evaluator needs only a MessageView: flags, sizes and dates come from the index; header
and body text are asked for lazily, and needs_headers / needs_body tell the server in
advance whether a search must open message files at all.

What one SEARCH costs is bounded here and in the driver (server/imap_commands.py):
- the tree is compiled once: conjunctions ordered cheapest first, needles casefolded,
  sequence and UID sets turned into sorted intervals (a bisect per message, not a scan of
  every range), keys that need only the index folded into one plain predicate;
- each message's text (a header's values, its addresses, the whole header, the body) is
  asked of the view and casefolded at most once per SEARCH, however many keys read it
  (MessageText);
- `run()` is a generator that yields before every piece of text work, so the driver can
  pause the evaluation (let other sessions run) and charge it to a CPU budget, even in the
  middle of one big message.
"""

from __future__ import annotations

import bisect
import datetime as dt
import email.utils
from collections.abc import Callable, Generator, Sequence, Set
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from mailkeep.proto.imap.search import (
    All,
    And,
    Body,
    Date,
    Envelope,
    Flag,
    Header,
    Modseq,
    Not,
    Or,
    SearchKey,
    Seq,
    Size,
    Text,
    Uid,
    leaves,
)


class MessageView(Protocol):
    """What SEARCH needs of one message. Plain attributes satisfy the properties."""

    @property
    def seq(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def flags(self) -> Set[str]: ...           # system flags, keywords, and \Recent
    @property
    def internaldate(self) -> dt.datetime: ...
    @property
    def size(self) -> int: ...                 # RFC822.SIZE

    def header(self, name: str) -> Sequence[str]:
        """Decoded values (RFC 2047 undone, unfolded) of every field called `name`
        (case-insensitive); empty if there is none."""
        ...

    def addresses(self, name: str) -> Sequence[str]:
        """For every address in every `name` field: its display name (decoded) and its
        "mailbox@host" form, as the ENVELOPE structure would carry them."""
        ...

    def header_text(self) -> str:
        """The whole header section as text."""
        ...

    def body_text(self) -> str:
        """The body as text (transfer encodings undone where possible)."""
        ...


def _fold(text: str) -> str:
    # RFC 3501 §6.4.4: "case-insensitive" substring matches; full Unicode case folding.
    return text.casefold()


def sent_date(message: MessageView) -> dt.date:
    """The Date: header's day in its own zone; INTERNALDATE if it is missing or broken
    (as RFC 5256 §2.2 does for SORT)."""
    for value in message.header("Date"):
        try:
            return email.utils.parsedate_to_datetime(value).date()
        except (TypeError, ValueError, IndexError, OverflowError):
            continue
    return message.internaldate.date()


class MessageText:
    """One message's text as SEARCH reads it: every piece asked of the view at most once
    and casefolded once, however many keys read it. One per message per SEARCH."""

    __slots__ = ("_addresses", "_body", "_folded", "_folded_addresses", "_header_text",
                 "_headers", "_sent", "view")

    def __init__(self, view: MessageView) -> None:
        self.view = view
        # A view that keeps folded header values itself (the server's, on the cached
        # message) is asked for them: no decoding or folding per SEARCH.
        self._folded: Callable[[str], Sequence[str]] | None = \
            getattr(view, "folded_header", None)
        self._folded_addresses: Callable[[str], Sequence[str]] | None = \
            getattr(view, "folded_addresses", None)
        self._headers: dict[str, Sequence[str]] = {}
        self._addresses: dict[str, Sequence[str]] = {}
        self._header_text: str | None = None
        self._body: str | None = None
        self._sent: dt.date | None = None

    def header(self, name: str) -> Sequence[str]:
        key = name.lower()
        found = self._headers.get(key)
        if found is None:
            folded = self._folded
            found = self._headers[key] = [_fold(v) for v in self.view.header(name)] \
                if folded is None else folded(key)
        return found

    def addresses(self, name: str) -> Sequence[str]:
        key = name.lower()
        found = self._addresses.get(key)
        if found is None:
            folded = self._folded_addresses
            found = self._addresses[key] = [_fold(a) for a in self.view.addresses(name)] \
                if folded is None else folded(key)
        return found

    def header_text(self) -> str:
        if self._header_text is None:
            self._header_text = _fold(self.view.header_text())
        return self._header_text

    def body(self) -> str:
        if self._body is None:
            self._body = _fold(self.view.body_text())
        return self._body

    def sent_date(self) -> dt.date:
        if self._sent is None:
            self._sent = sent_date(self.view)
        return self._sent


def _compare(relation: str, day: dt.date, wanted: dt.date) -> bool:
    # RFC 3501 §6.4.4: dates compare by day, "disregarding time and timezone".
    if relation == "BEFORE":
        return day < wanted
    if relation == "ON":
        return day == wanted
    return day >= wanted


def _cost(key: SearchKey) -> int:
    """0: answered from the index; 1: reads the header; 2: reads the body."""
    if isinstance(key, Body | Text):
        return 2
    if isinstance(key, Header | Envelope) or (isinstance(key, Date) and key.sent):
        return 1
    if isinstance(key, Not):
        return _cost(key.key)
    if isinstance(key, Or):
        return max(_cost(key.left), _cost(key.right))
    if isinstance(key, And):
        return max((_cost(k) for k in key.keys), default=0)
    return 0


def needs_headers(key: SearchKey) -> bool:
    return _cost(key) >= 1


def needs_body(key: SearchKey) -> bool:
    return _cost(key) >= 2


def _reads_header_text(key: SearchKey) -> bool:
    return any(isinstance(k, Text) for k in leaves(key))


Steps: TypeAlias = Generator[None, None, bool]
"""A key's evaluation: yields before each piece of text work, returns the answer."""
_Quick: TypeAlias = Callable[[MessageView], bool]


_OnFlags: TypeAlias = Callable[[Set[str]], bool]


@dataclass(frozen=True, slots=True)
class _Plan:
    """A compiled key. `quick` answers it at once when it needs only the index (cost 0);
    `run` steps through any key; `on_flags` answers it from a message's flags alone, when
    nothing else matters (UNSEEN, FLAGGED, NOT DELETED, ...); `check` answers any key in
    one go, with no pause (what `run` does, without a generator per key and message)."""

    cost: int
    quick: _Quick | None
    run: Callable[[MessageText], Steps]
    check: Callable[[MessageText], bool]
    on_flags: _OnFlags | None = None


def _answer(value: bool) -> Steps:
    yield from ()
    return value


def _index(test: _Quick, on_flags: _OnFlags | None = None) -> _Plan:
    return _Plan(0, test, lambda t: _answer(test(t.view)), lambda t: test(t.view), on_flags)


def _leaf(cost: int, test: Callable[[MessageText], bool]) -> _Plan:
    def run(t: MessageText) -> Steps:
        yield  # the driver may pause or stop here, before the work
        return test(t)
    return _Plan(cost, None, run, test)


def _plan(key: SearchKey, messages: int, largest_uid: int) -> _Plan:
    if isinstance(key, All):
        return _index(lambda m: True, lambda flags: True)
    if isinstance(key, Flag):
        wanted, present = key.flag.casefold(), key.present

        def has(flags: Set[str]) -> bool:
            return any(f.casefold() == wanted for f in flags) == present
        return _index(lambda m: has(m.flags), has)
    if isinstance(key, Size):
        octets = key.octets
        if key.larger:
            return _index(lambda m: m.size > octets)
        return _index(lambda m: m.size < octets)
    if isinstance(key, Uid | Seq):
        numbers, largest = (key.uids, largest_uid) if isinstance(key, Uid) \
            else (key.numbers, messages)
        spans = numbers.intervals(largest)
        starts = [lo for lo, _ in spans]
        ends = [hi for _, hi in spans]

        def within(n: int) -> bool:
            i = bisect.bisect_right(starts, n) - 1
            return i >= 0 and n <= ends[i]

        if isinstance(key, Uid):
            return _index(lambda m: within(m.uid))
        return _index(lambda m: within(m.seq))
    if isinstance(key, Modseq):
        # RFC 7162 §3.1.5; a view without MODSEQs (modseq absent) counts as 0.
        floor = key.modseq
        return _index(lambda m: int(getattr(m, "modseq", 0)) >= floor)
    if isinstance(key, Date):
        relation, day = key.relation, key.date
        if key.sent:
            return _leaf(1, lambda t: _compare(relation, t.sent_date(), day))
        return _index(lambda m: _compare(relation, m.internaldate.date(), day))
    if isinstance(key, Header):
        field, needle = key.field, _fold(key.value)

        # RFC 3501 §6.4.4: HEADER with "" matches every message that has the field.
        def in_header(t: MessageText) -> bool:
            for value in t.header(field):  # noqa: SIM110 (no generator per message)
                if needle in value:
                    return True
            return False
        return _leaf(1, in_header)
    if isinstance(key, Envelope):
        field, needle = key.field, _fold(key.value)
        return _leaf(1, lambda t: any(needle in v for v in t.header(field))
                     or any(needle in a for a in t.addresses(field)))
    if isinstance(key, Body):
        needle = _fold(key.value)
        return _leaf(2, lambda t: needle in t.body())
    if isinstance(key, Text):
        return _text_plan(_fold(key.value))
    if isinstance(key, Not):
        return _not_plan(_plan(key.key, messages, largest_uid))
    if isinstance(key, Or):
        return _or_plan(_plan(key.left, messages, largest_uid),
                        _plan(key.right, messages, largest_uid))
    # Conjunctions run their cheap keys first (sorted once, here, not per message): a
    # failing flag test never reads a body.
    return _and_plan(sorted((_plan(k, messages, largest_uid) for k in key.keys),
                            key=lambda p: p.cost))


def _text_plan(needle: str) -> _Plan:
    def run(t: MessageText) -> Steps:
        yield
        if needle in t.header_text():
            return True
        yield
        return needle in t.body()
    return _Plan(2, None, run, lambda t: needle in t.header_text() or needle in t.body())


def _not_plan(inner: _Plan) -> _Plan:
    quick, on_flags = inner.quick, inner.on_flags
    if quick is not None:
        return _index(lambda m: not quick(m),
                      None if on_flags is None else lambda flags: not on_flags(flags))

    def run(t: MessageText) -> Steps:
        return not (yield from inner.run(t))
    check = inner.check
    return _Plan(inner.cost, None, run, lambda t: not check(t))


def _or_plan(left: _Plan, right: _Plan) -> _Plan:
    lq, rq = left.quick, right.quick
    lf, rf = left.on_flags, right.on_flags
    if lq is not None and rq is not None:
        return _index(lambda m: lq(m) or rq(m),
                      None if lf is None or rf is None else lambda fl: lf(fl) or rf(fl))
    if right.cost < left.cost:
        left, right = right, left

    def run(t: MessageText) -> Steps:
        return (yield from left.run(t)) or (yield from right.run(t))
    lc, rc = left.check, right.check
    return _Plan(max(left.cost, right.cost), None, run, lambda t: lc(t) or rc(t))


def _and_plan(plans: list[_Plan]) -> _Plan:
    quicks = [p.quick for p in plans if p.quick is not None]
    if len(quicks) == len(plans):
        tests = [p.on_flags for p in plans if p.on_flags is not None]
        return _index(lambda m: all(q(m) for q in quicks),
                      (lambda fl: all(t(fl) for t in tests)) if len(tests) == len(plans)
                      else None)
    slow = [p for p in plans if p.quick is None]

    def run(t: MessageText) -> Steps:
        view = t.view
        for q in quicks:
            if not q(view):
                return False
        for p in slow:
            if not (yield from p.run(t)):
                return False
        return True

    checks = [p.check for p in slow]

    def check(t: MessageText) -> bool:
        view = t.view
        for q in quicks:
            if not q(view):
                return False
        for c in checks:  # noqa: SIM110 (a loop: all() would cost a generator per message)
            if not c(t):
                return False
        return True
    return _Plan(max(p.cost for p in plans), None, run, check)


class SearchProgram:
    """One SEARCH, compiled once for a mailbox of `messages` messages whose largest UID is
    `largest_uid` ("*" in sequence and UID sets, RFC 3501 §6.4.8)."""

    def __init__(self, key: SearchKey, *, messages: int, largest_uid: int) -> None:
        self._plan = _plan(key, messages, largest_uid)
        # The answer from a message's flags alone (the same for every message with the same
        # flags: the driver asks once per distinct set), when the key reads nothing else.
        self.on_flags = self._plan.on_flags
        self.needs_headers = self._plan.cost >= 1
        self.needs_body = self._plan.cost >= 2
        self._header_text = _reads_header_text(key)

    def text(self, message: MessageView) -> MessageText:
        return MessageText(message)

    def prepare(self, text: MessageText) -> None:
        """Decode and fold now the text this search reads from every message it opens (the
        driver calls this in a worker thread for big messages)."""
        if self.needs_body:
            text.body()
        if self._header_text:
            text.header_text()

    def run(self, text: MessageText) -> Steps:
        """Step through the evaluation: each yield is a point where the caller may pause
        (the work between two yields is one scan or one decode of one message)."""
        return self._plan.run(text)

    def matches(self, message: MessageView) -> bool:
        quick = self._plan.quick
        if quick is not None:
            return quick(message)
        return self._plan.check(MessageText(message))


def matches(key: SearchKey, message: MessageView, *, messages: int, largest_uid: int) -> bool:
    """Whether `message` satisfies `key` (a one-off; a SEARCH compiles a SearchProgram)."""
    return SearchProgram(key, messages=messages, largest_uid=largest_uid).matches(message)
