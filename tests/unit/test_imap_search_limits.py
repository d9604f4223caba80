"""What one SEARCH may cost (issue 7, item 3) and envelope address matching (item 10):
the key limit, text decoded once per message, the compiled program against a naive
evaluator, pausing points, and FROM/TO/CC/BCC on parsed addresses."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.imap import search as s
from mailkeep.proto.imap import searchprogram as sp
from mailkeep.proto.imap import textsearch
from mailkeep.proto.imap.lexer import Cursor, ParseError
from mailkeep.proto.imap.mime import parse_message
from mailkeep.proto.imap.sequence import SequenceSet
from mailkeep.proto.imap.textsearch import address_texts
from mailkeep.server.imap_search import SearchMessage

UTC = dt.UTC


@dataclass
class CountingView:
    """A MessageView that counts every text request."""

    seq: int
    uid: int
    flags: frozenset[str] = frozenset()
    internaldate: dt.datetime = dt.datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
    size: int = 1000
    headers: dict[str, list[str]] = field(default_factory=dict)
    addrs: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    calls: dict[str, int] = field(default_factory=dict)

    def _count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def header(self, name: str) -> Sequence[str]:
        self._count("header:" + name.lower())
        return self.headers.get(name.lower(), [])

    def addresses(self, name: str) -> Sequence[str]:
        self._count("addresses:" + name.lower())
        return self.addrs.get(name.lower(), [])

    def header_text(self) -> str:
        self._count("header_text")
        return "\n".join(f"{k}: {v}" for k, vs in self.headers.items() for v in vs)

    def body_text(self) -> str:
        self._count("body_text")
        return self.body


def key(text: str) -> s.SearchKey:
    return s.parse_search(Cursor(text.encode(), "t"))[1]


# -- MAX_SEARCH_KEYS ----------------------------------------------------------------------

def test_key_limit_at_and_past() -> None:
    limit = s.MAX_SEARCH_KEYS
    at = key(" ".join(["SEEN"] * limit))
    assert isinstance(at, s.And) and len(at.keys) == limit
    with pytest.raises(ParseError) as info:
        key(" ".join(["SEEN"] * (limit + 1)))
    assert info.value.status == "NO" and info.value.code == "LIMIT"
    # NOT, OR and parentheses are keys too: "NOT SEEN" is two.
    key(" ".join(["NOT SEEN"] * (limit // 2)))
    with pytest.raises(ParseError):
        key(" ".join(["NOT SEEN"] * (limit // 2)) + " SEEN")
    with pytest.raises(ParseError):
        key("OR " * (limit // 2) + "SEEN " * (limit // 2 + 1))


# -- text decoded at most once per message --------------------------------------------------

def test_each_text_is_asked_for_once_per_message() -> None:
    view = CountingView(1, 1, headers={"from": ["Joe <joe@example.org>"],
                                       "subject": ["Hello"]},
                        addrs={"from": ["Joe", "joe@example.org"]}, body="Body TEXT here")
    criteria = " ".join([f"NOT BODY w{i}" for i in range(200)]
                        + [f"NOT TEXT t{i}" for i in range(50)]
                        + [f"NOT FROM f{i}" for i in range(50)]
                        + [f"NOT SUBJECT x{i}" for i in range(50)]
                        + [f"NOT HEADER From y{i}" for i in range(50)])
    program = sp.SearchProgram(key(criteria), messages=1, largest_uid=1)
    assert program.matches(view)
    assert view.calls == {"body_text": 1, "header_text": 1, "header:from": 1,
                          "addresses:from": 1, "header:subject": 1}


def test_cheap_keys_first_and_no_text_for_index_keys() -> None:
    view = CountingView(1, 1, body="x")
    program = sp.SearchProgram(key("BODY x TEXT y FROM z SEEN"), messages=1, largest_uid=1)
    assert not program.matches(view)
    assert view.calls == {}
    # OR tries its cheap side first too
    assert sp.SearchProgram(key("OR BODY x ALL"), messages=1, largest_uid=1).matches(view)
    assert view.calls == {}


def test_run_yields_before_every_text_scan() -> None:
    view = CountingView(1, 1, body="nothing")
    n = 300
    program = sp.SearchProgram(key(" ".join(f"NOT BODY w{i}" for i in range(n))),
                               messages=1, largest_uid=1)
    steps = program.run(program.text(view))
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            assert done.value is True
            break
        pauses += 1
    assert pauses == n
    # A caller that stops half way simply drops the generator: nothing else happens.
    steps = program.run(program.text(CountingView(1, 1, body="nothing")))
    for _ in range(10):
        next(steps)
    steps.close()


def test_prepare_decodes_what_the_program_reads() -> None:
    view = CountingView(1, 1, body="b")
    program = sp.SearchProgram(key("OR TEXT a BODY b"), messages=1, largest_uid=1)
    text = program.text(view)
    program.prepare(text)
    assert view.calls == {"body_text": 1, "header_text": 1}
    steps = program.run(text)
    with pytest.raises(StopIteration):
        while True:
            next(steps)
    assert view.calls == {"body_text": 1, "header_text": 1}


# -- the compiled program against a naive evaluator -----------------------------------------

def naive(k: s.SearchKey, m: CountingView, messages: int, largest: int) -> bool:
    """The pre-compilation evaluator: the RFC 3501 §6.4.4 meaning, key by key."""
    def has(hay: str, needle: str) -> bool:
        return needle.casefold() in hay.casefold()
    if isinstance(k, s.All):
        return True
    if isinstance(k, s.Flag):
        return any(f.casefold() == k.flag.casefold() for f in m.flags) == k.present
    if isinstance(k, s.Size):
        return m.size > k.octets if k.larger else m.size < k.octets
    if isinstance(k, s.Uid):
        return k.uids.contains(m.uid, largest)
    if isinstance(k, s.Seq):
        return k.numbers.contains(m.seq, messages)
    if isinstance(k, s.Date):
        day = sp.sent_date(m) if k.sent else m.internaldate.date()
        return {"BEFORE": day < k.date, "ON": day == k.date, "SINCE": day >= k.date}[k.relation]
    if isinstance(k, s.Header):
        return any(has(v, k.value) for v in m.header(k.field))
    if isinstance(k, s.Envelope):
        return any(has(v, k.value) for v in [*m.header(k.field), *m.addresses(k.field)])
    if isinstance(k, s.Body):
        return has(m.body_text(), k.value)
    if isinstance(k, s.Text):
        return has(m.header_text(), k.value) or has(m.body_text(), k.value)
    if isinstance(k, s.Not):
        return not naive(k.key, m, messages, largest)
    if isinstance(k, s.Or):
        return naive(k.left, m, messages, largest) or naive(k.right, m, messages, largest)
    assert isinstance(k, s.And)
    return all(naive(x, m, messages, largest) for x in k.keys)


WORDS = ["a", "joe", "Ünï", "ß", "ss", "x@y", ""]


def lit(word: str) -> str:
    return f"{{{len(word.encode())}}}\r\n{word}"


leaf = st.one_of(
    st.just("ALL"), st.sampled_from(["SEEN", "UNSEEN", "FLAGGED", "KEYWORD $a", "UNKEYWORD $A"]),
    st.builds(lambda w: f"BODY {lit(w)}", st.sampled_from(WORDS)),
    st.builds(lambda w: f"TEXT {lit(w)}", st.sampled_from(WORDS)),
    st.builds(lambda w: f"FROM {lit(w)}", st.sampled_from(WORDS)),
    st.builds(lambda w: f"SUBJECT {lit(w)}", st.sampled_from(WORDS)),
    st.builds(lambda n: f"LARGER {n}", st.integers(0, 3000)),
    st.builds(lambda a, b: f"{a}:{b}", st.integers(1, 6), st.sampled_from(["1", "3", "*"])),
    st.builds(lambda a, b: f"UID {a},{b}:*", st.integers(1, 40), st.integers(1, 40)),
    st.sampled_from(["SENTON 11-Mar-2024", "SENTBEFORE 11-Mar-2024", "SINCE 10-Mar-2024"]),
)
criteria = st.recursive(leaf, lambda inner: st.one_of(
    st.builds(lambda k: f"NOT {k}", inner),
    st.builds(lambda a, b: f"OR {a} {b}", inner, inner),
    st.builds(lambda ks: "(" + " ".join(ks) + ")", st.lists(inner, min_size=1, max_size=4)),
), max_leaves=12)
views = st.builds(
    CountingView, st.integers(1, 5), st.integers(1, 40),
    st.frozensets(st.sampled_from(["\\Seen", "\\Flagged", "$a", "$b"])),
    st.just(dt.datetime(2024, 3, 10, 12, 0, tzinfo=UTC)), st.integers(0, 3000),
    st.fixed_dictionaries({"from": st.lists(st.sampled_from(WORDS), max_size=2),
                           "subject": st.lists(st.sampled_from(WORDS), max_size=2),
                           "date": st.sampled_from([[], ["Mon, 11 Mar 2024 01:00:00 +0100"],
                                                    ["garbage"]])}),
    st.fixed_dictionaries({"from": st.lists(st.sampled_from(WORDS), max_size=2)}),
    st.sampled_from(WORDS))


@settings(max_examples=300, deadline=None)
@given(st.lists(criteria, min_size=1, max_size=3), views)
def test_program_agrees_with_the_naive_evaluator(keys: list[str], view: CountingView) -> None:
    k = key(" ".join(keys))
    expected = naive(k, view, 5, 40)
    program = sp.SearchProgram(k, messages=5, largest_uid=40)
    assert program.matches(view) is expected
    # Stepping through it (as the server does for big messages) gives the same answer.
    steps = program.run(program.text(view))
    while True:
        try:
            next(steps)
        except StopIteration as done:
            assert done.value is expected
            break
    # The flags-only answer (the server's shortcut for UNSEEN and the like), where offered,
    # is the same; it is offered exactly when the criteria read nothing but flags.
    flags_only = all(word in {"ALL", "SEEN", "UNSEEN", "FLAGGED", "KEYWORD", "UNKEYWORD",
                              "$a", "$A", "NOT", "OR"}
                     for word in " ".join(keys).replace("(", " ").replace(")", " ").split())
    assert (program.on_flags is not None) is flags_only
    if program.on_flags is not None:
        assert program.on_flags(view.flags) is expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.one_of(st.none(), st.integers(1, 60))),
                min_size=1, max_size=8),
       st.integers(0, 50), st.integers(1, 60))
def test_sequence_sets_as_intervals(ranges: list[tuple[int, int | None]], largest: int,
                                    n: int) -> None:
    text = ",".join(f"{a}:{'*' if b is None else b}" for a, b in ranges)
    numbers = SequenceSet.parse(text)
    view = CountingView(n, n)
    for k in (s.Seq(numbers), s.Uid(numbers)):
        got = sp.SearchProgram(k, messages=largest, largest_uid=largest).matches(view)
        assert got is numbers.contains(n, largest)


# -- FROM / TO / CC / BCC on the envelope's addresses (RFC 3501 §6.4.4) ----------------------

MESSAGE = (b"From: <user (comment)@ (comment) domain.org>\r\n"
           b"To: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>, "
           b"\"Doe, Jane\" <jane (work) @ example.com>\r\n"
           b"Cc: friends: ann@example.org, bob@example.org;\r\n"
           b"Bcc: hidden@example.net (Hidden Person)\r\n"
           b"Subject: addresses\r\n\r\nbody\r\n")


def test_address_texts() -> None:
    part = parse_message(MESSAGE)
    assert address_texts(part, "From") == ["user@domain.org"]
    assert address_texts(part, "to") == ["Jürgen Müller", "juergen@example.de",
                                         "Doe, Jane", "jane@example.com"]
    assert address_texts(part, "Cc") == ["friends", "ann@example.org", "bob@example.org"]
    assert address_texts(part, "Bcc") == ["Hidden Person", "hidden@example.net"]
    assert address_texts(part, "Reply-To") == []


@pytest.mark.parametrize(("criteria", "hit"), [
    ("FROM user@domain.org", True),      # the case: comments inside the address
    ("FROM USER@DOMAIN.ORG", True),
    ("FROM comment", True),              # still found in the header text
    ("FROM r@do", True),                 # substring of mailbox@host
    ("FROM other@domain.org", False),
    ("TO jane@example.com", True), ("TO {7}\r\njürgen", True), ("TO juergen@", True),
    ("CC friends", True), ("CC bob@example.org", True),
    ("BCC hidden@example.net", True), ("BCC person", True),
    ("HEADER From user@domain.org", False),   # HEADER is the raw field text only
    ("SUBJECT user@domain.org", False),
])
def test_envelope_keys(criteria: str, hit: bool) -> None:
    part = parse_message(MESSAGE)
    view = SearchMessage(1, 1, frozenset(), dt.datetime(2024, 1, 1, tzinfo=UTC), len(MESSAGE),
                         part)
    assert sp.matches(key(criteria), view, messages=1, largest_uid=1) is hit


# -- base64 bodies: the fast path decodes exactly as the lenient one ------------------------

@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"", b"\r\n", b" ", b"=", b"!", b"==A"]),
       st.integers(0, 300))
def test_base64_fast_path_agrees_with_the_lenient_decoder(raw: bytes, junk: bytes,
                                                          at: int) -> None:
    encoded = base64.encodebytes(raw)
    for data in (encoded, encoded[:at] + junk + encoded[at:], encoded.rstrip(b"=\n")):
        assert textsearch.decode_base64(data) == lenient_base64(data)
    assert textsearch.decode_base64(encoded) == raw


def lenient_base64(data: bytes) -> bytes:
    """The decoder before its fast path (RFC 2045 §6.8, leniently)."""
    out = []
    for run in re.split(rb"=+", re.sub(rb"[^A-Za-z0-9+/=]", b"", data)):
        rest = len(run) % 4
        chunk = run[:-1] if rest == 1 else run + b"=" * ((4 - rest) % 4)
        try:
            out.append(binascii.a2b_base64(chunk))
        except binascii.Error:
            continue
    return b"".join(out)


def test_the_servers_folded_text_is_kept_with_the_message_and_matches_the_plain_fold() -> None:
    raw = (b"From: =?utf-8?q?Stra=C3=9Fe?= <Joe@Example.ORG>\r\n"
           b"Subject: =?utf-8?b?R1LDnFNTRQ==?= and more\r\n\r\nbody\r\n")
    part = parse_message(raw)
    message = SearchMessage(1, 1, frozenset(), dt.datetime(2024, 3, 10, tzinfo=UTC), len(raw),
                            part)
    text = sp.MessageText(message)
    assert list(text.header("Subject")) == [v.casefold() for v in message.header("Subject")]
    assert list(text.addresses("From")) == [a.casefold() for a in message.addresses("From")]
    assert "strasse" in text.addresses("From")  # full case folding: ß -> ss
    assert "joe@example.org" in text.addresses("From")
    # Kept with the parsed message: a second SEARCH finds them there.
    assert "fold:subject" in part.derived and "fold-addresses:from" in part.derived
    again = sp.SearchProgram(key(f"FROM STRASSE SUBJECT {lit('grüsse')}"), messages=1,
                             largest_uid=1)
    assert again.matches(message)
