"""Issue 7 (outside testing), the sans-IO side and the executor without sockets: a failed
SELECT deselects (item 9), keywords announced before a FETCH shows them (item 11), names that
are not modified UTF-7 get NO (item 12), and SEARCH's CPU budget (item 3). The same faults
are attacked over TLS in tests/integration/test_imap_hardening.py; SEARCH's own limits are in
test_imap_search_limits.py, LIST patterns in test_imap_list_patterns.py."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from mailkeep.proto.imap.mailboxview import MailboxView
from mailkeep.server import imap_search
from tests.support.imap_driver import FakeImapDriver, new_driver

UTC = dt.UTC


def lines(d: FakeImapDriver) -> list[str]:
    text = d.out.decode("utf-8", "replace")
    d.out.clear()
    return text.split("\r\n")[:-1]


def logged_in(select: str | None = "INBOX") -> FakeImapDriver:
    d = new_driver()
    d.feed(b"a LOGIN alice alice-pw\r\n")
    if select:
        d.feed(f"s SELECT {select}\r\n".encode())
    d.out.clear()
    return d


# -- keyword announcements (item 11) ---------------------------------------------------------

@dataclass(frozen=True)
class Rec:
    uid: int
    flags: frozenset[str] = frozenset()
    key: str = ""
    internaldate: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=UTC)
    size: int = 10


def view(*records: Rec, readonly: bool = False) -> MailboxView:
    return MailboxView("INBOX", readonly=readonly, uidvalidity=1, uidnext=10,
                       records=list(records), recent=())


def test_announce_once_per_new_keyword() -> None:
    v = view(Rec(1, frozenset({"$Old", "\\Seen"})))
    assert v.flags_response() == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Old)\r\n"
    assert v.announce([frozenset({"$Old", "\\Flagged"})]) == []
    out = v.announce([frozenset({"$New"}), frozenset({"$Newer", "$Old"})])
    assert out == [b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New $Newer $Old)\r\n",
                   b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $New "
                   b"$Newer $Old \\*)] Flags permitted.\r\n"]
    assert v.announce([frozenset({"$New"})]) == []
    ro = view(Rec(1), readonly=True)
    assert ro.announce([frozenset({"$X"})])[1] == b"* OK [PERMANENTFLAGS ()] Flags permitted.\r\n"


def test_update_announces_before_the_fetch_and_the_exists() -> None:
    v = view(Rec(1), Rec(2))
    out = v.update([Rec(1, frozenset({"$Shared"})), Rec(2), Rec(3, frozenset({"$Fresh"}))],
                   allow_expunge=True)
    assert out[0].startswith(b"* FLAGS (") and b"$Fresh $Shared)" in out[0]
    assert out[1].startswith(b"* OK [PERMANENTFLAGS (")
    assert out[2:] == [b"* 1 FETCH (FLAGS ($Shared))\r\n", b"* 3 EXISTS\r\n", b"* 0 RECENT\r\n"]
    # Nothing new: no FLAGS
    assert v.update([Rec(1, frozenset({"$Fresh"})), Rec(2), Rec(3, frozenset({"$Fresh"}))],
                    allow_expunge=True) == [b"* 1 FETCH (FLAGS ($Fresh))\r\n"]


def test_store_of_a_new_keyword_announces_it_first() -> None:
    d = logged_in()
    d.feed(b"t1 STORE 2 +FLAGS ($Brand)\r\n")
    out = lines(d)
    assert out[0] == "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Brand)"
    assert out[1].startswith("* OK [PERMANENTFLAGS (") and "$Brand \\*)]" in out[1]
    assert out[2].startswith("* 2 FETCH (FLAGS (") and out[3].startswith("t1 OK")
    d.feed(b"t2 STORE 1 +FLAGS.SILENT ($Quiet)\r\n")
    out = lines(d)
    assert "$Quiet" in out[0] and out[0].startswith("* FLAGS") and out[-1].startswith("t2 OK")
    d.feed(b"t3 STORE 1:2 +FLAGS ($Brand)\r\n")
    assert not any(x.startswith("* FLAGS") for x in lines(d))


def test_append_into_the_selected_mailbox_announces_its_keyword() -> None:
    d = logged_in()
    d.feed(b"t1 APPEND INBOX ($Appended) {14+}\r\nSubject: x\r\n\r\n\r\n")
    out = lines(d)
    flags = [i for i, x in enumerate(out) if x.startswith("* FLAGS") and "$Appended" in x]
    exists = [i for i, x in enumerate(out) if x.endswith(" EXISTS")]
    assert flags and exists and flags[0] < exists[0], out


# -- a failed SELECT deselects (item 9) -------------------------------------------------------

@pytest.mark.parametrize("bad", ["SELECT a..b", "EXAMINE ~x", "SELECT Nonexistent",
                                 "SELECT &Jjo!", 'EXAMINE "Entw\xfcrfe"'])
def test_failed_select_leaves_no_mailbox_selected(bad: str) -> None:
    d = logged_in()
    d.feed(f"t1 {bad}\r\n".encode())
    assert lines(d)[-1].startswith("t1 NO")
    d.feed(b"t2 FETCH 1 FLAGS\r\n")
    assert lines(d) == ["t2 BAD FETCH not allowed in the authenticated state."]
    d.feed(b"t3 SELECT INBOX\r\nt4 FETCH 1 FLAGS\r\n")
    assert lines(d)[-1] == "t4 OK FETCH completed."


# -- names that are not modified UTF-7 (item 12) ----------------------------------------------

@pytest.mark.parametrize("command", [
    "SELECT &Jjo!", 'SELECT "Entw\xfcrfe"', "CREATE &Jjo!", 'CREATE "Entw\xfcrfe"',
    'DELETE "Entw\xfcrfe"', 'RENAME Archive "Entw\xfcrfe"', 'RENAME "Entw\xfcrfe" X',
    'SUBSCRIBE "Entw\xfcrfe"', 'UNSUBSCRIBE "Entw\xfcrfe"',
    'STATUS "Entw\xfcrfe" (MESSAGES)', "COPY 1 &Jjo!", 'APPEND "Entw\xfcrfe" {1+}\r\nx',
])
def test_invalid_names_get_no(command: str) -> None:
    d = logged_in()
    d.feed(f"t1 {command}\r\n".encode())
    out = lines(d)
    assert out[-1] == "t1 NO [CANNOT] Mailbox name is not valid modified UTF-7.", out
    d.feed(b't2 LIST "" *\r\n')
    assert not any("Entw" in x or "&Jjo" in x for x in lines(d))


@pytest.mark.parametrize("command", ['LIST "" "Entw\xfcrfe"', 'LIST "" &Jjo!*',
                                     'LSUB "" "Entw\xfcrfe*"', 'LIST "Entw\xfcrfe" *'])
def test_list_with_an_invalid_pattern_lists_nothing(command: str) -> None:
    d = logged_in()
    d.feed(f"t1 {command}\r\n".encode())
    assert lines(d) == [f"t1 OK {command.split(maxsplit=1)[0]} completed."]


# -- SEARCH's CPU budget (item 3) -------------------------------------------------------------

def test_search_over_budget_says_limit_and_the_session_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    d = logged_in()
    monkeypatch.setattr(imap_search, "SEARCH_CPU_SECONDS", -1.0)  # spent before it starts
    d.feed(b"t1 SEARCH BODY hello\r\nt2 UID SEARCH ALL\r\n")
    assert lines(d) == ["t1 NO [LIMIT] SEARCH too expensive, narrow it down.",
                        "t2 NO [LIMIT] SEARCH too expensive, narrow it down."]
    monkeypatch.setattr(imap_search, "SEARCH_CPU_SECONDS", 10.0)
    d.feed(b"t3 SEARCH BODY pizza\r\nt4 NOOP\r\n")
    assert lines(d) == ["* SEARCH 2", "t3 OK SEARCH completed.", "t4 OK NOOP completed."]
