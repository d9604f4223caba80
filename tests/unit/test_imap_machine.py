"""Unit tests of the IMAP machine, its executor and the pure helpers (no sockets)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.config.load import parse_config
from mailkeep.config.model import ImapConfig
from mailkeep.proto.imap import listing
from mailkeep.proto.imap.events import Outcome, State
from mailkeep.proto.imap.fetch import date_time, needs_message
from mailkeep.proto.imap.grammar import FetchItem
from mailkeep.proto.imap.machine import COMMANDS_BY_STATE, ImapMachine, command_word
from mailkeep.proto.imap.mime import parse_message
from mailkeep.proto.imap.mimecache import MimeCache
from mailkeep.proto.imap.session import Selected
from mailkeep.store.memory import MemoryStore
from tests.support.imap_driver import FakeImapDriver, new_driver, run_sync, seeded_store

LOGIN = b"a LOGIN alice alice-pw\r\n"


def lines(d: FakeImapDriver) -> list[str]:
    text = d.out.decode("utf-8", "replace")
    d.out.clear()
    return text.split("\r\n")[:-1]


def logged_in(store: MemoryStore | None = None, select: str | None = "INBOX",
              **kwargs: object) -> FakeImapDriver:
    d = new_driver(store=store, **kwargs)  # type: ignore[arg-type]
    d.feed(LOGIN)
    if select:
        d.feed(f"s SELECT {select}\r\n".encode())
    d.out.clear()
    return d


# -- state table, TLS, budgets ---------------------------------------------------------------

def test_state_table_covers_every_rfc3501_command() -> None:
    rfc3501 = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE", "LOGIN", "SELECT",
               "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST",
               "LSUB", "STATUS", "APPEND", "CHECK", "CLOSE", "EXPUNGE", "SEARCH", "FETCH",
               "STORE", "COPY"}
    assert rfc3501 <= set().union(*COMMANDS_BY_STATE.values())
    assert COMMANDS_BY_STATE[State.LOGOUT] == frozenset()


def test_command_word() -> None:
    assert command_word(b"a1 APPEND INBOX {12}\r\n") == "APPEND"
    assert command_word(b"a1 login {5}\r\n") == "LOGIN"
    assert command_word(b"a1") == ""


def test_starttls_with_pipelined_commands_is_refused_and_closes() -> None:
    d = new_driver(tls=False, starttls=True)
    lines(d)
    d.feed(b"a STARTTLS\r\nb LOGIN alice alice-pw\r\n")
    assert lines(d) == ["a BAD Commands pipelined behind STARTTLS refused."]
    assert d.closed == "plaintext pipelined behind STARTTLS"
    assert d.tls_upgrades == 0 and d.executor is None


def test_starttls_not_offered_on_implicit_tls() -> None:
    d = new_driver(tls=True, starttls=False)
    lines(d)
    d.feed(b"a STARTTLS\r\n")
    assert lines(d) == ["a BAD TLS is already active."]


def test_login_literal_before_tls_is_refused_before_the_password() -> None:
    d = new_driver(tls=False, starttls=True)
    lines(d)
    d.feed(b"a LOGIN {5}\r\n")
    assert lines(d) == ["a NO [PRIVACYREQUIRED] Login only after STARTTLS."]
    d.feed(b"b NOOP\r\n")  # the next line is a command again, not literal data
    assert lines(d) == ["b OK NOOP completed."]


def test_append_literal_refused_before_login() -> None:
    d = new_driver()
    lines(d)
    d.feed(b"a APPEND INBOX {5}\r\n")
    assert lines(d) == ["a BAD APPEND not allowed in the not authenticated state."]


@pytest.mark.parametrize("limit", [1, 3, 20])
def test_bad_command_budget_at_limit_and_below(limit: int) -> None:
    d = new_driver(max_errors=limit)
    lines(d)
    for i in range(limit - 1):
        d.feed(b"x%d FROB\r\n" % i)
    assert d.closed is None
    d.feed(b"y NOOP\r\n")  # resets the count
    for i in range(limit - 1):
        d.feed(b"z%d FROB\r\n" % i)
    assert d.closed is None
    d.feed(b"last FROB\r\n")
    assert d.closed == "too many bad commands"
    assert lines(d)[-1] == "* BYE Too many invalid commands."


def test_oversized_non_synchronizing_literal_closes() -> None:
    d = logged_in(select=None, max_literal=10)
    d.feed(b"a APPEND INBOX {11+}\r\n")
    assert lines(d) == ["a BAD [TOOBIG] Literal too large"]
    assert d.closed is not None


def test_append_at_limit_and_one_past() -> None:
    d = logged_in(select=None, max_literal=12)
    d.feed(b"a APPEND INBOX {12}\r\n")
    assert lines(d) == ["+ Ready for literal data"]
    d.feed(b"Subject: y\r\n\r\n")
    assert lines(d) == ["a OK [APPENDUID 3857529045 4] APPEND completed."]
    d.feed(b"b APPEND INBOX {13}\r\n")
    assert lines(d) == ["b NO [TOOBIG] Literal too large"]


def test_end_of_input_closes() -> None:
    d = new_driver()
    d.feed(b"")
    assert d.closed == "connection closed by client"


def test_machine_refuses_answers_it_did_not_ask_for() -> None:
    m = ImapMachine(tls_active=True, starttls_offered=False)
    with pytest.raises(RuntimeError):
        m.tls_started()
    with pytest.raises(RuntimeError):
        m.executed(Outcome("OK", "done"))


# -- totality --------------------------------------------------------------------------------

_TOKENS = [b"a", b"b1", b"*", b" ", b"\r\n", b"\n", b"{3}\r\n", b"{2+}\r\n", b"{99999999999}\r\n",
           b"(", b")", b"[", b"]", b"<0.5>", b"\"", b"\\", b"1:*", b"UID", b"FETCH", b"STORE",
           b"SEARCH", b"COPY", b"LIST", b"LSUB", b"STATUS", b"APPEND", b"SELECT", b"EXAMINE",
           b"CREATE", b"DELETE", b"RENAME", b"EXPUNGE", b"CLOSE", b"LOGIN", b"AUTHENTICATE",
           b"PLAIN", b"LOGOUT", b"STARTTLS", b"BODY[]", b"BODY.PEEK[1.MIME]", b"FLAGS",
           b"+FLAGS", b"(\\Seen)", b"INBOX", b"Archive", b"%", b"\xff\x00", b"OR", b"NOT",
           b"ALL", b"TEXT", b"\"x\"", b"UNSELECT", b"NOOP", b"CHECK", b"IDLE", b"ENABLE"]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=8)), max_size=60),
       selected=st.booleans(), tls=st.booleans())
def test_totality_any_bytes_give_replies_never_exceptions(parts: list[bytes], selected: bool,
                                                          tls: bool) -> None:
    d = new_driver(tls=tls, starttls=not tls)
    if tls:
        d.feed(LOGIN)
        if selected:
            d.feed(b"s SELECT INBOX\r\n")
    for part in parts:
        if part:
            d.feed(part)
    d.feed(b"")
    assert d.closed is not None


# -- the session view and concurrency (RFC 3501 §5.2, §7.4.1) -----------------------------

def test_other_sessions_changes_are_reported_at_noop() -> None:
    store = seeded_store()
    a, b = logged_in(store), logged_in(store)
    b.feed(b"1 STORE 1 +FLAGS (\\Flagged)\r\n2 STORE 2 +FLAGS (\\Deleted)\r\n3 EXPUNGE\r\n")
    run_sync(store.append("alice", "INBOX", b"Subject: new\r\n\r\nx\r\n"))
    lines(b)
    a.feed(b"n NOOP\r\n")
    # a selected first: it holds \Recent for the first three, and now for the new one.
    assert lines(a) == ["* 2 EXPUNGE", "* 1 FETCH (FLAGS (\\Flagged \\Seen \\Recent))",
                        "* 3 EXISTS", "* 3 RECENT", "n OK NOOP completed."]


def test_no_expunge_during_fetch_store_search_without_uid() -> None:
    store = seeded_store()
    a, b = logged_in(store), logged_in(store)
    b.feed(b"1 STORE 2 +FLAGS (\\Deleted)\r\n2 EXPUNGE\r\n")
    for command in (b"f FETCH 1 FLAGS\r\n", b"s SEARCH ALL\r\n", b"t STORE 1 +FLAGS (x)\r\n"):
        a.feed(command)
        assert not any("EXPUNGE" in line for line in lines(a))
    a.feed(b"f FETCH 2 BODY[]\r\n")  # the gone message keeps its number until told
    assert lines(a)[-1] == "f NO Some messages were expunged."
    a.feed(b"u UID FETCH 1 FLAGS\r\n")
    out = lines(a)
    assert "* 2 EXPUNGE" in out and out[-1] == "u OK FETCH completed."


def test_selected_mailbox_deleted_by_another_session_ends_with_bye() -> None:
    store = seeded_store()
    a = logged_in(store, select="Archive")
    run_sync(store.delete_folder("alice", "Archive"))
    a.feed(b"n NOOP\r\n")
    assert lines(a)[0] == "* BYE The selected mailbox was deleted."
    assert d_closed(a) == "selected mailbox deleted"


def test_batched_reads_skip_messages_gone_in_the_middle_of_a_batch() -> None:
    store = MemoryStore()
    for i in range(1, 151):
        run_sync(store.append("alice", "INBOX", b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i)))
    a, b = logged_in(store), logged_in(store)
    b.feed(b"1 STORE 70,140 +FLAGS (\\Deleted)\r\n2 EXPUNGE\r\n")
    lines(b)
    a.feed(b"s SEARCH SUBJECT m1\r\n")
    out = lines(a)
    wanted = [i for i in range(1, 151) if str(i).startswith("1") and i != 140]
    assert out == ["* SEARCH " + " ".join(map(str, wanted)), "s OK SEARCH completed."]
    a.feed(b"f FETCH 1:* BODY.PEEK[TEXT]\r\n")
    out = lines(a)
    fetched = [int(line.split()[1]) for line in out if line.startswith("* ")
               and "FETCH" in line]
    assert fetched == [i for i in range(1, 151) if i not in (70, 140)]
    assert out[-1] == "f NO Some messages were expunged."


def d_closed(d: FakeImapDriver) -> str | None:
    return d.closed


class _NoBodies(MemoryStore):
    async def read_message(self, account: str, folder: str, key: str) -> bytes:
        raise AssertionError("a message body was read")


def test_select_and_fetch_flags_uid_size_read_no_message() -> None:
    store = _NoBodies()
    for i in range(200):
        run_sync(store.append("alice", "INBOX", b"Subject: %d\r\n\r\nbody\r\n" % i))
    d = logged_in(store)
    d.feed(b"f FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE)\r\n")
    out = lines(d)
    assert len(out) == 201 and out[-1] == "f OK FETCH completed."
    d.feed(b"s SEARCH UNSEEN SMALLER 100 UID 1:*\r\n")
    assert lines(d)[-1] == "s OK SEARCH completed."


def test_examine_keeps_recent_for_select() -> None:
    store = seeded_store()
    a = logged_in(store, select="INBOX")
    assert isinstance(a.machine.session, Selected)  # the view lives in the state
    store2 = seeded_store()
    b = logged_in(store2, select=None)
    b.feed(b"e EXAMINE INBOX\r\n")
    assert "* 3 RECENT" in lines(b)
    b.feed(b"s SELECT INBOX\r\n")
    assert "* 3 RECENT" in lines(b)
    b.feed(b"t SELECT INBOX\r\n")
    assert "* 0 RECENT" in lines(b)


def test_fetch_sets_seen_only_without_peek_and_not_in_examine() -> None:
    d = logged_in()
    d.feed(b"p FETCH 2 BODY.PEEK[]\r\n")
    assert "\\Seen" not in "".join(lines(d))
    d.feed(b"b FETCH 2 BODY[TEXT]\r\n")
    assert "FLAGS (\\Seen \\Recent)" in "".join(lines(d))
    d.feed(b"e EXAMINE INBOX\r\nr FETCH 3 RFC822\r\nf FETCH 3 FLAGS\r\n")
    assert "* 3 FETCH (FLAGS (\\Flagged))" in lines(d)  # SELECT claimed \\Recent


def test_rename_inbox_moves_messages() -> None:
    d = logged_in(select=None)
    d.feed(b"r RENAME INBOX Old\r\ns STATUS Old (MESSAGES)\r\nt STATUS INBOX (MESSAGES)\r\n")
    out = lines(d)
    assert '* STATUS "Old" (MESSAGES 3)' in out and '* STATUS "INBOX" (MESSAGES 0)' in out


# -- pure helpers ------------------------------------------------------------------------------

def test_date_time_format() -> None:
    tz = dt.timezone(dt.timedelta(hours=-7))
    assert date_time(dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz)) == \
        "17-Jul-1996 02:44:25 -0700"
    assert date_time(dt.datetime(2026, 2, 1, 0, 0, 0, tzinfo=dt.UTC)) == \
        " 1-Feb-2026 00:00:00 +0000"


def test_needs_message() -> None:
    assert not needs_message([FetchItem("FLAGS"), FetchItem("UID"), FetchItem("RFC822.SIZE"),
                              FetchItem("INTERNALDATE")])
    assert needs_message([FetchItem("ENVELOPE")])


@pytest.mark.parametrize(("reference", "pattern", "name", "hit"), [
    ("", "*", "Archive.2026", True),
    ("", "%", "Archive.2026", False),
    ("", "%", "Archive", True),
    ("Archive.", "%", "Archive.2026", True),
    ("Archive", ".%", "Archive.2026", True),
    ("", "inbox", "INBOX", True),
    ("", "iNbOx*", "INBOX", True),
    ("", "archive", "Archive", False),
    ("", "A*6", "Archive.2026", True),
    ("", "a.b", "aXb", False),
])
def test_list_patterns(reference: str, pattern: str, name: str, hit: bool) -> None:
    regex = listing.compile_pattern(listing.canonical_pattern(reference, pattern))
    assert listing.matches(regex, name) is hit


def test_mime_cache_bounds() -> None:
    cache = MimeCache(max_entries=2, max_octets=100)
    parts = [parse_message(b"Subject: %d\r\n\r\n" % i + b"x" * 30) for i in range(4)]
    for i, part in enumerate(parts[:3]):
        cache.put(("a", "INBOX", 1, i), part)
    assert len(cache) == 2 and cache.get(("a", "INBOX", 1, 0)) is None
    assert cache.get(("a", "INBOX", 1, 2)) is parts[2]
    cache.put(("a", "INBOX", 1, 9), parse_message(b"x" * 101))  # larger than the cache
    assert cache.get(("a", "INBOX", 1, 9)) is None
    assert cache.octets <= 100


def test_imap_config_defaults_and_limits(tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    base = {"hostname": "mail.example.test", "domains": ["example.test"], "data_dir": "d",
            "tls": {"cert": "c", "key": "k"},
            "listeners": {"imaps": {"protocol": "imap", "tls": "implicit",
                                    "bind": ["127.0.0.1:0"]}}}
    cfg = parse_config(base, Path("/tmp/x.toml"))
    assert cfg.imap == ImapConfig()
    assert cfg.imap.idle_timeout >= 1800  # RFC 3501 §5.4
    from mailkeep.config.load import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError) as err:
        parse_config({**base, "imap": {"max_line_length": 8191, "bogus": 1}},
                     Path("/tmp/x.toml"))
    assert sorted(p.split(":")[0] for p in err.value.problems) == [
        "imap.bogus", "imap.max_line_length"]
