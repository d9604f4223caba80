"""IMAP4rev1 command parsing (grammar.py): RFC 3501 §6 and §8 examples, errors, totality."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.imap import grammar as g
from mailkeep.proto.imap import search as s
from mailkeep.proto.imap.grammar import BodySection, FetchItem, ParseError, parse_command
from mailkeep.proto.imap.mutf7 import InvalidMailboxName
from mailkeep.proto.imap.receiver import NEED_DATA, Command, LiteralRequest, Receiver
from mailkeep.proto.imap.sequence import SequenceSet


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


def test_rfc3501_section8_session() -> None:
    assert parse_command(b"a001 login mrc secret") == g.Login("a001", "mrc", "secret")
    assert parse_command(b"a002 select inbox") == g.Select("a002", "INBOX")
    full = parse_command(b"a003 fetch 12 full")
    assert full == g.Fetch("a003", seq("12"), tuple(FetchItem(n) for n in (
        "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")))
    assert parse_command(b"a004 fetch 12 body[header]") == g.Fetch(
        "a004", seq("12"), (FetchItem("BODY", BodySection((), "HEADER")),))
    assert parse_command(b"a005 store 12 +flags \\deleted") == g.Store(
        "a005", seq("12"), g.StoreMode.ADD, False, ("\\Deleted",))
    assert parse_command(b"a006 logout") == g.Logout("a006")


RFC3501_SECTION6 = [
    (b"abcd CAPABILITY", g.Capability("abcd")),
    (b"a002 NOOP", g.Noop("a002")),
    (b"A023 LOGOUT", g.Logout("A023")),
    (b"a001 STARTTLS", g.StartTls("a001")),
    (b"A001 AUTHENTICATE GSSAPI", g.Authenticate("A001", "GSSAPI")),
    (b"a001 LOGIN SMITH SESAME", g.Login("a001", "SMITH", "SESAME")),
    (b"A142 SELECT INBOX", g.Select("A142", "INBOX")),
    (b"A932 EXAMINE blurdybloop", g.Examine("A932", "blurdybloop")),
    (b"A003 CREATE owatagusiam/", g.Create("A003", "owatagusiam/")),
    (b"A682 DELETE blurdybloop", g.Delete("A682", "blurdybloop")),
    (b"A683 RENAME blurdybloop sarasoop", g.Rename("A683", "blurdybloop", "sarasoop")),
    (b"A002 SUBSCRIBE #news.comp.mail.mime", g.Subscribe("A002", "#news.comp.mail.mime")),
    (b"A002 UNSUBSCRIBE #news.comp.mail.mime", g.Unsubscribe("A002", "#news.comp.mail.mime")),
    (b'A101 LIST "" ""', g.ListMailboxes("A101", "", "")),
    (b'A102 LIST #news.comp.mail.misc ""', g.ListMailboxes("A102", "#news.comp.mail.misc", "")),
    (b"A202 LIST ~/Mail/ %", g.ListMailboxes("A202", "~/Mail/", "%")),
    (b'A002 LSUB "#news." "comp.mail.*"', g.Lsub("A002", "#news.", "comp.mail.*")),
    (b'A003 LSUB "#news." comp.%', g.Lsub("A003", "#news.", "comp.%")),
    (b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)",
     g.Status("A042", "blurdybloop", ("UIDNEXT", "MESSAGES"))),
    (b"FXXZ CHECK", g.Check("FXXZ")),
    (b"A341 CLOSE", g.Close("A341")),
    (b"A202 EXPUNGE", g.Expunge("A202")),
    (b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
     g.Search("A282", None, s.And((s.Flag("\\Flagged"), s.Date("SINCE", dt.date(1994, 2, 1)),
                                   s.Not(s.Envelope("From", "Smith")))))),
    (b'A283 SEARCH TEXT "string not in mailbox"',
     g.Search("A283", None, s.Text("string not in mailbox"))),
    (b"A284 SEARCH CHARSET UTF-8 TEXT {6}\r\n\xe5\x8f\xb0\xe5\x8c\x97",
     g.Search("A284", "UTF-8", s.Text("台北"))),
    (b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
     g.Fetch("A654", seq("2:4"), (FetchItem("FLAGS"), FetchItem(
         "BODY", BodySection((), "HEADER.FIELDS", ("DATE", "FROM")))))),
    (b"A003 STORE 2:4 +FLAGS (\\Deleted)",
     g.Store("A003", seq("2:4"), g.StoreMode.ADD, False, ("\\Deleted",))),
    (b"A003 COPY 2:4 MEETING", g.Copy("A003", seq("2:4"), "MEETING")),
    (b"A999 UID FETCH 4827313:4828442 FLAGS",
     g.Fetch("A999", seq("4827313:4828442"), (FetchItem("FLAGS"),), uid=True)),
]


@pytest.mark.parametrize(("line", "expected"), RFC3501_SECTION6)
def test_rfc3501_section6_examples(line: bytes, expected: g.CommandType) -> None:
    assert parse_command(line) == expected


def test_append_rfc_example() -> None:
    msg = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar\r\n"
           b"Subject: afternoon meeting\r\n\r\nHello Joe, do you think we can meet at 3:30?\r\n")
    line = b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(msg) + msg
    assert parse_command(line) == g.Append("A003", "saved-messages", ("\\Seen",), None, msg)


def test_append_with_date_time() -> None:
    cmd = parse_command(b'a APPEND INBOX (\\Seen $Work) " 7-Feb-1994 21:52:25 -0800" {2+}\r\nhi')
    assert isinstance(cmd, g.Append)
    assert cmd.flags == ("\\Seen", "$Work")
    assert cmd.internaldate == dt.datetime(1994, 2, 7, 21, 52, 25,
                                           tzinfo=dt.timezone(dt.timedelta(hours=-8)))
    assert cmd.message == b"hi"
    assert parse_command(b'a APPEND x "17-jul-1996 02:44:25 +0530" {0}\r\n') == g.Append(
        "a", "x", (), dt.datetime(1996, 7, 17, 2, 44, 25,
                                  tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))), b"")


@pytest.mark.parametrize("when", [b'"31-Feb-1994 21:52:25 -0800"', b'"7-Feb-1994 21:52:25 -0800"',
                                  b'"07-Foo-1994 21:52:25 -0800"', b'"07-Feb-1994 25:52:25 -0800"',
                                  b'"07-Feb-1994 21:52:25 -9999"', b'"07-Feb-1994 21:52:25"'])
def test_append_bad_date_time(when: bytes) -> None:
    with pytest.raises(ParseError):
        parse_command(b"a APPEND x " + when + b" {1+}\r\nx")


def test_append_needs_a_literal() -> None:
    with pytest.raises(ParseError):
        parse_command(b'a APPEND x "message"')


def test_login_with_literals_and_quotes() -> None:
    cmd = parse_command(b'a LOGIN {4}\r\nj\xc3\xb6e "p a\\"ss\\\\"')
    assert cmd == g.Login("a", "jöe", 'p a"ss\\')
    assert "p a" not in repr(cmd)


def test_authenticate_sasl_ir() -> None:
    assert parse_command(b"a AUTHENTICATE plain AGJvYgBwdw==") == g.Authenticate(
        "a", "PLAIN", b"\0bob\0pw")
    assert parse_command(b"a AUTHENTICATE PLAIN =") == g.Authenticate("a", "PLAIN", b"")
    with pytest.raises(ParseError):
        parse_command(b"a AUTHENTICATE PLAIN AG!")


def test_mailbox_names() -> None:
    assert parse_command(b"a SELECT ~peter/mail/&U,BTFw-/&ZeVnLIqe-") == g.Select(
        "a", "~peter/mail/台北/日本語")
    assert parse_command(b'a SELECT "InBoX"') == g.Select("a", "INBOX")
    assert parse_command(b"a SELECT INBOX.Sub") == g.Select("a", "INBOX.Sub")
    assert parse_command(b'a RENAME "a b" {3}\r\nc d') == g.Rename("a", "a b", "c d")
    # Well-formed IMAP but not modified UTF-7 (8-bit names included, quoted as mbsync sends
    # them or in a literal): parsed, marked, and refused with NO by the executor (issue 7.12).
    for raw in (b"a SELECT &U,BTFw", b"a SELECT {2}\r\n\xc3\xa9", b'a SELECT "Entw\xc3\xbcrfe"',
                b'a SELECT "\xff"'):
        cmd = parse_command(raw)
        assert isinstance(cmd, g.Select) and isinstance(cmd.mailbox, InvalidMailboxName)
    cmd = parse_command(b'a LIST "" "Entw\xc3\xbcrfe*"')
    assert isinstance(cmd, g.ListMailboxes) and isinstance(cmd.pattern, InvalidMailboxName)
    with pytest.raises(ParseError):
        parse_command(b"a SELECT Entw\xc3\xbcrfe")  # 8-bit is no atom: still a syntax error
    with pytest.raises(ParseError):
        parse_command(b'a LOGIN "J\xc3\xbcrgen" pw')  # other quoted strings stay 7-bit


def test_list_wildcards_and_reference() -> None:
    assert parse_command(b'a LIST "" *') == g.ListMailboxes("a", "", "*")
    assert parse_command(b"a LIST Archive %.2026") == g.ListMailboxes("a", "Archive", "%.2026")
    assert parse_command(b'a LIST "" "Entw&APw-rfe*"') == g.ListMailboxes("a", "", "Entwürfe*")


def test_status_items() -> None:
    cmd = parse_command(b"a STATUS INBOX (messages recent uidnext uidvalidity unseen)")
    assert cmd == g.Status("a", "INBOX", ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY",
                                          "UNSEEN"))
    for bad in (b"a STATUS INBOX ()", b"a STATUS INBOX (SIZE)", b"a STATUS INBOX MESSAGES"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_fetch_sections_and_partials() -> None:
    cmd = parse_command(b"a FETCH 1:* (BODY.PEEK[1.2.HEADER]<0.1024> BODY[] BODY[3] "
                        b"BODY[1.2.3.MIME] BODY[TEXT]<10.5> BODY[HEADER.FIELDS.NOT (X-A \"b c\")] "
                        b"BODYSTRUCTURE RFC822 RFC822.HEADER RFC822.TEXT UID body)")
    assert isinstance(cmd, g.Fetch)
    assert cmd.items == (
        FetchItem("BODY", BodySection((1, 2), "HEADER"), peek=True, partial=(0, 1024)),
        FetchItem("BODY", BodySection()),
        FetchItem("BODY", BodySection((3,))),
        FetchItem("BODY", BodySection((1, 2, 3), "MIME")),
        FetchItem("BODY", BodySection((), "TEXT"), partial=(10, 5)),
        FetchItem("BODY", BodySection((), "HEADER.FIELDS.NOT", ("X-A", "b c"))),
        FetchItem("BODYSTRUCTURE"), FetchItem("RFC822"), FetchItem("RFC822.HEADER"),
        FetchItem("RFC822.TEXT"), FetchItem("UID"), FetchItem("BODY"))
    names = [i.response_name() for i in cmd.items]
    assert names[0] == "BODY[1.2.HEADER]<0>"
    assert names[1] == "BODY[]"
    assert names[5] == 'BODY[HEADER.FIELDS.NOT (X-A "b c")]'
    assert [i.sets_seen for i in cmd.items][:3] == [False, True, True]
    assert cmd.items[7].sets_seen and not cmd.items[8].sets_seen


def test_fetch_macros() -> None:
    for macro, items in g.FETCH_MACROS.items():
        cmd = parse_command(b"a FETCH 1 " + macro.lower().encode())
        assert isinstance(cmd, g.Fetch)
        assert tuple(i.name for i in cmd.items) == items


@pytest.mark.parametrize("bad", [
    b"a FETCH 1 (ALL)", b"a FETCH 1 ()", b"a FETCH 1 BODY[MIME]", b"a FETCH 1 BODY[0]",
    b"a FETCH 1 BODY[1.]", b"a FETCH 1 BODY[HEADER.FIELDS]", b"a FETCH 1 BODY[HEADER.FIELDS ()]",
    b"a FETCH 1 BODY[TEXT]<1.0>", b"a FETCH 1 BODY[TEXT]<1>", b"a FETCH 1 RFC822.PEEK",
    b"a FETCH 0 FLAGS", b"a FETCH 1 FLAGS extra", b"a FETCH 1 BODY.PEEK", b"a FETCH 1:x FLAGS",
])
def test_fetch_errors(bad: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(bad)
    assert info.value.tag == "a" and info.value.status == "BAD"


def test_store_forms() -> None:
    assert parse_command(b"a STORE 1 FLAGS.SILENT (\\Seen \\Answered)") == g.Store(
        "a", seq("1"), g.StoreMode.REPLACE, True, ("\\Seen", "\\Answered"))
    assert parse_command(b"a UID STORE 5:* -FLAGS \\Seen $Label1") == g.Store(
        "a", seq("5:*"), g.StoreMode.REMOVE, False, ("\\Seen", "$Label1"), uid=True)
    assert parse_command(b"a STORE 1 FLAGS ()") == g.Store(
        "a", seq("1"), g.StoreMode.REPLACE, False, ())
    for bad in (b"a STORE 1 *FLAGS (x)", b"a STORE 1 +FLAGS", b"a STORE 1 LABELS (x)"):
        with pytest.raises(ParseError):
            parse_command(bad)


def test_uid_forms() -> None:
    assert parse_command(b"a UID COPY 1:3 Trash") == g.Copy("a", seq("1:3"), "Trash", uid=True)
    assert parse_command(b"a UID SEARCH UID 1:*") == g.Search(
        "a", None, s.Uid(seq("1:*")), uid=True)
    assert parse_command(b"a UID EXPUNGE 4:7") == g.Expunge("a", seq("4:7"))
    with pytest.raises(ParseError):
        parse_command(b"a UID SELECT INBOX")


def test_extensions() -> None:
    assert parse_command(b"a IDLE") == g.Idle("a")
    assert parse_command(b"a ENABLE condstore utf8=accept") == g.Enable(
        "a", ("CONDSTORE", "UTF8=ACCEPT"))
    assert parse_command(b"a NAMESPACE") == g.Namespace("a")
    assert parse_command(b"a UNSELECT") == g.Unselect("a")


@pytest.mark.parametrize(("line", "tag"), [
    (b"", None), (b" NOOP", None), (b"+ NOOP", None), (b"a{ NOOP", None),
    (b"a1", "a1"), (b"a1 ", "a1"), (b"a1 FROB", "a1"), (b"a1 NOOP x", "a1"),
    (b"a1  NOOP", "a1"), (b'a1 LOGIN "b\xc3\xa9" x', "a1"), (b'a1 LOGIN "a\\b" x', "a1"),
    (b"a1 LOGIN {5}\r\nab", "a1"), (b"a1 LOGIN {1}\r\n\x00 x", "a1"),
    (b"a1 LOGIN a", "a1"), (b"a1 SELECT", "a1"), (b"a1 CAPABILITY\r\n", "a1"),
])
def test_syntax_errors_carry_the_tag(line: bytes, tag: str | None) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(line)
    assert info.value.tag == tag
    assert info.value.message


def test_unsupported_charset_is_a_refusal() -> None:
    with pytest.raises(ParseError) as info:
        parse_command(b"a SEARCH CHARSET KOI8-R TEXT x")
    assert info.value.status == "NO"
    assert info.value.code == "BADCHARSET (UTF-8 US-ASCII)"


# -- totality ---------------------------------------------------------------------------

_TOKENS = [b"a1 ", b"UID ", b"FETCH ", b"STORE ", b"SEARCH ", b"APPEND ", b"LOGIN ", b"LIST ",
           b"STATUS ", b"SELECT ", b"AUTHENTICATE ", b"1:*", b"5,3:2", b"*", b"(", b")", b" ",
           b"BODY[", b"BODY.PEEK[", b"]", b"<0.5>", b"HEADER.FIELDS (", b"1.2.", b"MIME",
           b"TEXT", b"\\Seen", b"+FLAGS", b'"', b'"a\\"', b"{3}\r\nabc", b"{2+}\r\n", b"{9}\r\n",
           b"NOT ", b"OR ", b"SINCE 1-Feb-1994", b'" 1-Jan-2000 00:00:00 +0000"', b"&U,BTFw-",
           b"CHARSET UTF-8 ", b"\xff", b"\x00", b"\r\n", b"HEADER ", b"LARGER 99999999999",
           b"MESSAGES", b"INBOX", b"=", b"AGJvYg==", b"ALL", b"FULL", b"-"]


@settings(max_examples=1000)
@given(st.one_of(st.binary(max_size=200),
                 st.lists(st.sampled_from(_TOKENS), max_size=25).map(b"".join)))
def test_parse_command_is_total(data: bytes) -> None:
    try:
        parse_command(data)
    except ParseError as exc:
        assert exc.status in ("BAD", "NO")
        assert exc.tag is None or data.startswith(exc.tag.encode())


def test_deep_search_nesting_is_refused() -> None:
    with pytest.raises(ParseError):
        parse_command(b"a SEARCH " + b"NOT " * 5000 + b"ALL")
    with pytest.raises(ParseError):
        parse_command(b"a SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000)


def test_session_through_the_receiver() -> None:
    """RFC 3501 §8 client side, framed by the receiver, then parsed."""
    wire = (b"a001 login {3}\r\nmrc secret\r\na002 select inbox\r\na003 fetch 12 full\r\n"
            b"a004 fetch 12 body[header]\r\na005 store 12 +flags \\deleted\r\na006 logout\r\n")
    r = Receiver()
    names = []
    for i in range(len(wire)):
        r.feed(wire[i:i + 1])
        while (ev := r.next_event()) is not NEED_DATA:
            if isinstance(ev, LiteralRequest):
                r.accept_literal()
                continue
            assert isinstance(ev, Command)
            names.append(parse_command(ev.data).name)
    assert names == ["LOGIN", "SELECT", "FETCH", "FETCH", "STORE", "LOGOUT"]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_TOKENS), max_size=40).map(b"".join))
def test_receiver_then_grammar_is_total(data: bytes) -> None:
    r = Receiver(max_line=256, max_literal=64)
    r.feed(data)
    r.feed(b"")
    while (ev := r.next_event()) is not NEED_DATA:
        if isinstance(ev, LiteralRequest):
            r.accept_literal()
        elif isinstance(ev, Command):
            with contextlib.suppress(ParseError):
                parse_command(ev.data)
