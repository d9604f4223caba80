"""CONDSTORE and QRESYNC (RFC 7162), ENABLE (RFC 5161) and ESEARCH (RFC 4731): the syntax
they add to commands, and the pure decisions behind their responses.

grammar.py calls the parsers here for the pieces these extensions add to SELECT/EXAMINE,
FETCH, STORE and SEARCH; the executor (server/imap_commands.py, server/imap_sync.py) asks
the helpers here what to answer. Sans-IO like the rest of proto/.

    SELECT INBOX (CONDSTORE)
    SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))
    UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)
    STORE 1:7 (UNCHANGEDSINCE 12345) +FLAGS.SILENT (\\Deleted)
    SEARCH RETURN (MIN COUNT) MODSEQ 620162338
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailkeep.proto.imap.enable import UTF8_ACCEPT
from mailkeep.proto.imap.lexer import Cursor
from mailkeep.proto.imap.render import untagged
from mailkeep.proto.imap.sequence import (
    MAX_NUMBER,
    SEQUENCE_CHARS,
    SequenceError,
    SequenceSet,
    compress,
)
from mailkeep.proto.imap.values import Atom, Value

CONDSTORE = "CONDSTORE"
QRESYNC = "QRESYNC"
# RFC 5161 §3.1: what ENABLE may turn on here; any other name is ignored ("the server MUST
# ignore ... capabilities it does not support"). Other extensions add theirs (UTF8=ACCEPT).
ENABLEABLE = frozenset({CONDSTORE, QRESYNC, UTF8_ACCEPT})
# RFC 7162 §7 mod-sequence-value = 1*DIGIT ;; "Positive unsigned 63-bit integer".
MAX_MODSEQ = 2**63 - 1
# RFC 4731 §3.1 search-return-opt (SAVE, RFC 5182, is not offered).
SEARCH_RETURN_OPTIONS = ("MIN", "MAX", "ALL", "COUNT")
_DIGITS = frozenset(b"0123456789")

Spans = list[tuple[int, int]]
"""Ascending, disjoint, inclusive (first, last) UID ranges."""


def enable(requested: Iterable[str], enabled: frozenset[str]) -> tuple[frozenset[str],
                                                                       list[str]]:
    """RFC 5161 ENABLE: the session's new enabled set, and what to list in "* ENABLED":
    the known capabilities this command turned on (unknown ones are ignored, RFC 5161
    §3.1). RFC 7162 §3.2.3: enabling QRESYNC enables CONDSTORE too."""
    now = set(enabled)
    listed: list[str] = []
    for name in requested:
        cap = name.upper()
        if cap in ENABLEABLE and cap not in now:
            now.add(cap)
            listed.append(cap)
        if cap == QRESYNC:
            now.add(CONDSTORE)
    return frozenset(now), listed


def enabled_response(listed: Sequence[str]) -> bytes:
    """RFC 5161 §3.2: "* ENABLED" with the capabilities enabled (possibly none)."""
    return untagged(" ".join(["ENABLED", *listed]))


# -- parsing ------------------------------------------------------------------------------

def modseq_value(cur: Cursor, *, zero: bool = True) -> int:
    """RFC 7162 §7 mod-sequence-value (or mod-sequence-valzer when `zero`)."""
    raw = cur.take(_DIGITS)
    if not raw:
        raise cur.error("expected a mod-sequence")
    if len(raw) > 19 or int(raw) > MAX_MODSEQ:
        raise cur.error("mod-sequence above 2^63-1")
    value = int(raw)
    if value == 0 and not zero:
        raise cur.error("mod-sequence must not be zero")
    return value


def _known_set(cur: Cursor, what: str) -> SequenceSet:
    raw = cur.take(SEQUENCE_CHARS)
    try:
        numbers = SequenceSet.parse(raw.decode("ascii"))
    except SequenceError as exc:
        raise cur.error(str(exc)) from None
    if numbers.uses_star:
        # RFC 7162 §7: known-uids and seq-match-data are sequence-sets without "*".
        raise cur.error(f"{what} must not contain *")
    return numbers


@dataclass(frozen=True, slots=True)
class Qresync:
    """RFC 7162 §3.2.5 QRESYNC parameter: what the client knew when it last saw the
    mailbox."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # RFC 7162 §3.2.5.2 message sequence match data: (sequence numbers, their UIDs).
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class SelectParams:
    condstore: bool = False
    qresync: Qresync | None = None


NO_SELECT_PARAMS = SelectParams()


def select_params(cur: Cursor) -> SelectParams:
    """RFC 7162 §7 select-params: "(" select-param *(SP select-param) ")" where
    select-param is CONDSTORE or QRESYNC (...)."""
    cur.expect(b"(")
    condstore = False
    qresync: Qresync | None = None
    while True:
        name = cur.keyword()
        if name == CONDSTORE:
            condstore = True
        elif name == QRESYNC and qresync is None:
            cur.sp()
            qresync = _qresync(cur)
        else:
            raise cur.error(f"unknown SELECT parameter {name[:40]}")
        if not cur.skip_sp():
            break
    cur.expect(b")")
    return SelectParams(condstore, qresync)


def _qresync(cur: Cursor) -> Qresync:
    """"(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")"."""
    cur.expect(b"(")
    uidvalidity = cur.nz_number("a UIDVALIDITY")
    cur.sp()
    modseq = modseq_value(cur, zero=False)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if cur.skip_sp():
        if cur.peek() != ord("("):
            known = _known_set(cur, "known-uids")
            cur.skip_sp()
        if cur.parenthesized():
            seqs = _known_set(cur, "known-sequence-set")
            cur.sp()
            uids = _known_set(cur, "known-uid-set")
            cur.expect(b")")
            match = (seqs, uids)
    cur.expect(b")")
    return Qresync(uidvalidity, modseq, known, match)


@dataclass(frozen=True, slots=True)
class FetchModifiers:
    changedsince: int | None = None
    vanished: bool = False


NO_FETCH_MODIFIERS = FetchModifiers()


def fetch_modifiers(cur: Cursor) -> FetchModifiers:
    """RFC 7162 §3.1.4.1 CHANGEDSINCE and §3.2.6 VANISHED: "(" fetch-modifier *(SP ...) ")"."""
    cur.expect(b"(")
    changedsince: int | None = None
    vanished = False
    while True:
        name = cur.keyword()
        if name == "CHANGEDSINCE" and changedsince is None:
            cur.sp()
            changedsince = modseq_value(cur, zero=False)
        elif name == "VANISHED" and not vanished:
            vanished = True
        else:
            raise cur.error(f"unknown FETCH modifier {name[:40]}")
        if not cur.skip_sp():
            break
    cur.expect(b")")
    if vanished and changedsince is None:
        # RFC 7162 §3.2.6: VANISHED without CHANGEDSINCE is a BAD.
        raise cur.error("VANISHED needs CHANGEDSINCE")
    return FetchModifiers(changedsince, vanished)


def store_modifiers(cur: Cursor) -> int:
    """RFC 7162 §3.1.3: "(UNCHANGEDSINCE" SP mod-sequence-valzer ")"; the value."""
    cur.expect(b"(")
    name = cur.keyword()
    if name != "UNCHANGEDSINCE":
        raise cur.error(f"unknown STORE modifier {name[:40]}")
    cur.sp()
    value = modseq_value(cur)
    cur.expect(b")")
    return value


def search_return(cur: Cursor) -> tuple[str, ...]:
    """RFC 4731 §3.1: "RETURN" SP "(" [search-return-opt *(SP ...)] ")"; RETURN () is
    RETURN (ALL)."""
    cur.expect(b"(")
    options: list[str] = []
    if cur.peek() != ord(")"):
        while True:
            name = cur.keyword()
            if name not in SEARCH_RETURN_OPTIONS:
                raise cur.error(f"unknown SEARCH RETURN option {name[:40]}")
            if name not in options:
                options.append(name)
            if not cur.skip_sp():
                break
    cur.expect(b")")
    return tuple(options) or ("ALL",)


# -- responses ----------------------------------------------------------------------------

def modseq_item(modseq: int) -> tuple[str, Value]:
    """RFC 7162 §3.1.4.2 FETCH data item: MODSEQ (n)."""
    return ("MODSEQ", [modseq])


def vanished_response(uid_set: str, *, earlier: bool) -> bytes:
    """RFC 7162 §3.2.10: "* VANISHED [(EARLIER)] uid-set" (compress() or spans_text())."""
    head = "VANISHED (EARLIER)" if earlier else "VANISHED"
    return untagged(f"{head} {uid_set}")


def esearch_response(tag: str, hits: Sequence[int], options: Sequence[str], *, uid: bool,
                     modseq: int | None = None) -> bytes:
    """RFC 4731 §3.1: * ESEARCH (TAG "t") [UID] MIN n MAX n ALL set COUNT n; MIN, MAX and
    ALL are left out when nothing matched. RFC 7162 §3.1.5: MODSEQ n last."""
    data: list[Value] = [[Atom("TAG"), tag]]
    if uid:
        data.append(Atom("UID"))
    for option in options:
        if option == "MIN" and hits:
            data += [Atom("MIN"), hits[0]]
        elif option == "MAX" and hits:
            data += [Atom("MAX"), hits[-1]]
        elif option == "ALL" and hits:
            data += [Atom("ALL"), Atom(compress(hits))]
        elif option == "COUNT":
            data += [Atom("COUNT"), len(hits)]
    if modseq is not None and hits:
        data += [Atom("MODSEQ"), modseq]
    return untagged("ESEARCH", *data)


def search_modseq(hits: Sequence[int], options: Sequence[str] | None,
                  modseq_of: dict[int, int]) -> int:
    """RFC 7162 §3.1.5: the highest MODSEQ of the messages the response reports (with
    ESEARCH MIN/MAX alone, of those one or two; otherwise of every match)."""
    if options is not None and hits and not {"ALL", "COUNT"} & set(options):
        chosen = [hits[0]] if "MIN" in options else []
        if "MAX" in options:
            chosen.append(hits[-1])
        return max(modseq_of.get(h, 0) for h in chosen)
    return max((modseq_of.get(h, 0) for h in hits), default=0)


# -- QRESYNC resynchronisation ------------------------------------------------------------

def known_floor(seq_match: tuple[SequenceSet, SequenceSet] | None,
                uids: Sequence[int]) -> int:
    """RFC 7162 §3.2.5.2 message sequence match data: the client vouches that it knows every
    expunge up to and including each pair (sequence number, UID) that still matches the
    mailbox ("if the Nth message number in the first set in the list is 4, and the Nth UID
    in the second set in the list is 8, and the mailbox's fourth message has UID 8, then no
    UIDs equal to or less than 8 are present in the VANISHED response"). The UID of the last
    pair of the unbroken run of matches from the start (0: none matches, or no data); the
    sets are walked lazily and the walk stops at the first mismatch."""
    if seq_match is None:
        return 0
    seqs, known = seq_match
    if seqs.count(MAX_NUMBER) != known.count(MAX_NUMBER):
        return 0  # not corresponding sets: ignored, as if absent
    floor = 0
    for seq, uid in zip(seqs.iterate(MAX_NUMBER), known.iterate(MAX_NUMBER), strict=True):
        if seq > len(uids) or uids[seq - 1] != uid:
            break
        floor = uid
    return floor



def _runs(numbers: Sequence[int]) -> Spans:
    out: Spans = []
    for n in sorted(set(numbers)):
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _intersect(a: Spans, b: Spans) -> Spans:
    out: Spans = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _minus(spans: Spans, present: Sequence[int]) -> Spans:
    """`spans` without the (ascending) UIDs in `present`: cost by present UIDs, never by the
    width of a span ("1:4294967295" is one step)."""
    out: Spans = []
    for lo, hi in spans:
        start = lo
        for u in present[bisect.bisect_left(present, lo):bisect.bisect_right(present, hi)]:
            if u > start:
                out.append((start, u - 1))
            start = u + 1
        if start <= hi:
            out.append((start, hi))
    return out


def earlier_vanished(*, logged: Sequence[int], complete: bool, current: Sequence[int],
                     uidnext: int, known: SequenceSet | None, floor: int) -> Spans:
    """The UIDs for "* VANISHED (EARLIER)" on SELECT ... (QRESYNC ...) and UID FETCH ...
    (VANISHED), as ascending inclusive spans (RFC 7162 §3.2.5, §3.2.6).

    `logged`: UIDs the store's expunge log has after the client's mod-sequence; `complete`:
    whether that log reaches back that far. When it does not, the server cannot tell which
    UIDs went when, and falls back on what RFC 7162 §3.2.5.2 assumes of a server that does
    not keep expunged mod-sequences for long (message sequence match data exists "even if
    the mod-sequence-value provided by the client is too old for the server to have data of
    when those messages were expunged") and what §5 allows it (it may "return all expunged
    messages specified in the UID set ... without paying attention to the specified
    CHANGEDSINCE mod-sequence"): every UID the client may know -- `known`, else
    1:UIDNEXT-1 -- that no longer exists, above the sequence match data's `floor`.
    `current`: the UIDs that exist, ascending."""
    if uidnext <= 1:
        return []
    scope: Spans = [(floor + 1, uidnext - 1)] if floor + 1 <= uidnext - 1 else []
    if known is not None:
        scope = _intersect(scope, known.intervals(MAX_NUMBER))
    if complete:
        gone = set(logged) - set(current)
        return _intersect(scope, _runs(list(gone)))
    return _minus(scope, current)


def spans_text(spans: Spans) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in spans)


def span_count(spans: Spans) -> int:
    return sum(hi - lo + 1 for lo, hi in spans)
