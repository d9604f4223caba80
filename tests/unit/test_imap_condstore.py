"""CONDSTORE / QRESYNC / ENABLE / ESEARCH pieces (proto/imap/condstore.py) and the mailbox
view's MODSEQ bookkeeping, without a driver. The RFC examples are in the transcripts
(tests/unit/transcripts/imap/{enable,condstore,qresync,esearch}.txt)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from mailkeep.proto.imap import condstore as cs
from mailkeep.proto.imap.grammar import Fetch, ParseError, Search, Select, Store, parse_command
from mailkeep.proto.imap.mailboxview import MailboxView
from mailkeep.proto.imap.sequence import SequenceSet

WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Rec:
    uid: int
    flags: frozenset[str] = frozenset()
    key: str = "k"
    internaldate: dt.datetime = WHEN
    size: int = 10


def test_enable_lists_only_what_it_turned_on() -> None:
    enabled, listed = cs.enable(["condstore", "X-GOOD-IDEA"], frozenset())
    assert enabled == {"CONDSTORE"} and listed == ["CONDSTORE"]
    enabled, listed = cs.enable(["CONDSTORE", "QRESYNC"], enabled)
    assert enabled == {"CONDSTORE", "QRESYNC"} and listed == ["QRESYNC"]
    # RFC 7162 §3.2.3: QRESYNC brings CONDSTORE along.
    assert cs.enable(["QRESYNC"], frozenset())[0] == {"CONDSTORE", "QRESYNC"}
    assert cs.enabled_response([]) == b"* ENABLED\r\n"


def test_select_params_parse() -> None:
    cmd = parse_command(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 "
                        b"41,43:211,214:541 (1:3 41:43)))")
    assert isinstance(cmd, Select)
    q = cmd.params.qresync
    assert q is not None and q.uidvalidity == 67890007 and q.modseq == 20050715194045000
    assert str(q.known_uids) == "41,43:211,214:541"
    assert q.seq_match is not None and str(q.seq_match[1]) == "41:43"
    plain = parse_command(b"a SELECT INBOX (CONDSTORE)")
    assert isinstance(plain, Select) and plain.params.condstore
    for bad in (b"a SELECT INBOX ()", b"a SELECT INBOX (QRESYNC (0 5))",
                b"a SELECT INBOX (QRESYNC (1 0))", b"a SELECT INBOX (FOO)",
                b"a SELECT INBOX (QRESYNC (1 5 (1:2)))"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_fetch_store_search_modifiers_parse() -> None:
    f = parse_command(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
    assert isinstance(f, Fetch) and f.modifiers == cs.FetchModifiers(12345, True)
    s = parse_command(b"a STORE 7,5,9 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Deleted)")
    assert isinstance(s, Store) and s.unchangedsince == 0 and s.silent
    e = parse_command(b"a SEARCH RETURN (MIN MIN COUNT) ALL")
    assert isinstance(e, Search) and e.returns == ("MIN", "COUNT")
    assert isinstance(r := parse_command(b"a SEARCH RETURN () ALL"), Search)
    assert r.returns == ("ALL",)
    m = parse_command(b"a SEARCH MODSEQ 9223372036854775807")
    assert isinstance(m, Search)
    for bad in (b"a FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)",
                b"a FETCH 1 (FLAGS) ()", b"a STORE 1 (UNCHANGEDSINCE) FLAGS (\\Seen)",
                b"a STORE 1 (FOO 1) FLAGS (\\Seen)", b"a SEARCH MODSEQ",
                b"a SEARCH MODSEQ \"/flags/\\\\seen\" nope 5"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_known_floor_stops_at_the_first_mismatch() -> None:
    uids = [2, 4, 8, 25, 30]
    match = (SequenceSet.parse("1,3,4"), SequenceSet.parse("2,8,24"))
    # RFC 7162 §3.2.5.2: pairs (1,2) and (3,8) match, (4,24) does not (UID 25 there).
    assert cs.known_floor(match, uids) == 8
    assert cs.known_floor((SequenceSet.parse("1"), SequenceSet.parse("3")), uids) == 0
    # sets of different sizes say nothing
    assert cs.known_floor((SequenceSet.parse("1:2"), SequenceSet.parse("2")), uids) == 0
    assert cs.known_floor(None, uids) == 0
    # a huge set is walked lazily: the walk stops at the first number past the mailbox
    wide = (SequenceSet.parse("1:4294967295"), SequenceSet.parse("1:4294967295"))
    assert cs.known_floor(wide, [1, 2, 3]) == 3


def test_earlier_vanished_from_a_complete_log() -> None:
    spans = cs.earlier_vanished(logged=[3, 5, 6, 9], complete=True, current=[1, 2, 4],
                                uidnext=10, known=SequenceSet.parse("1:6"), floor=0)
    assert cs.spans_text(spans) == "3,5:6"
    # a UID the session still numbers is not "earlier"
    assert cs.earlier_vanished(logged=[3], complete=True, current=[3], uidnext=4,
                               known=None, floor=0) == []


def test_earlier_vanished_without_the_history_reports_every_missing_known_uid() -> None:
    # RFC 7162 §3.2.5.2 / §5: the log does not reach back: every UID the client may know
    # that is not there now, above what the sequence match data vouches for.
    spans = cs.earlier_vanished(logged=[], complete=False, current=[2, 4, 8, 25],
                                uidnext=31, known=None, floor=0)
    assert cs.spans_text(spans) == "1,3,5:7,9:24,26:30"
    narrowed = cs.earlier_vanished(logged=[], complete=False, current=[2, 4, 8, 25],
                                   uidnext=31, known=SequenceSet.parse("1:20"), floor=8)
    assert cs.spans_text(narrowed) == "9:20"
    # cost by present UIDs, never by the width of the range
    huge = cs.earlier_vanished(logged=[], complete=False, current=[7], uidnext=4_000_000_000,
                               known=None, floor=0)
    assert huge == [(1, 6), (8, 3_999_999_999)]
    assert cs.span_count(huge) == 3_999_999_998


def test_esearch_response() -> None:
    assert cs.esearch_response("A282", [2, 10, 11], ("MIN", "COUNT"), uid=False) == \
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n'
    assert cs.esearch_response("A283", [2, 10, 11], ("ALL",), uid=True) == \
        b'* ESEARCH (TAG "A283") UID ALL 2,10:11\r\n'
    assert cs.esearch_response("A284", [], ("MIN", "MAX", "ALL"), uid=False) == \
        b'* ESEARCH (TAG "A284")\r\n'
    # RFC 7162 §3.1.5: MIN/MAX alone report the MODSEQ of those messages only
    by = {1: 5, 2: 9, 3: 7}
    assert cs.search_modseq([1, 2, 3], ("MIN", "MAX"), by) == 7
    assert cs.search_modseq([1, 2, 3], ("MIN", "COUNT"), by) == 9
    assert cs.search_modseq([1, 2, 3], None, by) == 9


def _view(condstore: bool = True, qresync: bool = False) -> MailboxView:
    v = MailboxView("INBOX", readonly=False, uidvalidity=1, uidnext=4,
                    records=[Rec(1), Rec(2), Rec(3)], recent=(), modseqs={1: 5, 2: 5, 3: 5},
                    highestmodseq=5)
    v.condstore, v.qresync = condstore, qresync
    return v


def test_view_tells_flag_changes_with_modseq_and_vanished_with_qresync() -> None:
    v = _view(qresync=True)
    out = v.update([Rec(1), Rec(2, frozenset({"\\Seen"}))], allow_expunge=True,
                   modseqs={1: 5, 2: 7}, highestmodseq=7)
    assert out == [b"* VANISHED 3\r\n", b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (7))\r\n",
                   b"* OK [HIGHESTMODSEQ 7] Highest\r\n"]
    assert v.modseqs == {1: 5, 2: 7}


def test_view_without_condstore_learns_modseqs_quietly() -> None:
    v = _view(condstore=False)
    out = v.update([Rec(1), Rec(2), Rec(3)], allow_expunge=True, modseqs={1: 6, 2: 5, 3: 5},
                   highestmodseq=6)
    assert out == []
    assert v.modseqs[1] == 6


def test_view_holds_back_expunges_and_says_the_safe_highestmodseq() -> None:
    # RFC 7162 §3.2 (errata 1810): FETCH with MODSEQ above a held-back expunge's is followed
    # by HIGHESTMODSEQ from before that expunge.
    v = _view()
    out = v.update([Rec(1, frozenset({"\\Flagged"})), Rec(2)], allow_expunge=False,
                   modseqs={1: 8, 2: 5}, highestmodseq=8)
    assert out == [b"* 1 FETCH (FLAGS (\\Flagged) MODSEQ (8))\r\n",
                   b"* OK [HIGHESTMODSEQ 5] Highest\r\n"]
    out = v.update([Rec(1, frozenset({"\\Flagged"})), Rec(2)], allow_expunge=True,
                   modseqs={1: 8, 2: 5}, highestmodseq=8)
    assert out == [b"* 3 EXPUNGE\r\n", b"* OK [HIGHESTMODSEQ 8] Highest\r\n"]
    assert v.pending_floor is None
