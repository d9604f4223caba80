"""IMAP4rev1 (RFC 3501) over real TLS with imaplib and a raw client, under asyncio and uvloop.

Mail reaches the server the way it does in production: submitted on 587 (STARTTLS + AUTH)
by smtplib, so the stored message carries the daemon's Received line; or APPENDed.
"""

from __future__ import annotations

import imaplib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon
from tests.support.imap import (
    ATTACHMENT_BODY,
    BARE_ACCOUNT,
    HTML_BODY,
    MULTIPART,
    PLAIN_BODY,
    RawImap,
    append,
    imaps,
    login,
    message,
    mutf7,
    parse,
    password,
    plain_b64,
    running_imap_daemon,
    session,
    submit,
    upper,
)


@pytest.fixture
def imapd(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    # A bare account: these tests count folders. The default folders a new account gets
    # (RFC 6154) are tested in test_imap_extensions.py.
    yield from running_imap_daemon(tmp_path, ca, loop_kind, imap=BARE_ACCOUNT)


def internaldate(value: bytes | str) -> datetime:
    text = value.decode() if isinstance(value, bytes) else value
    return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")


def names_of(im: imaplib.IMAP4, pattern: str = "*") -> set[str]:
    typ, data = im.list('""', pattern)
    assert typ == "OK"
    out = set()
    for line in data:
        name = parse(line)[-1] if line else None
        if name is not None:
            out.add(name.decode() if isinstance(name, bytes) else str(name))
    return out


def stored(d: RunningDaemon, account: str = "bob") -> list[bytes]:
    return [f.read_bytes() for f in d.maildir_files(account)]


# -- connection state -------------------------------------------------------------------------

def test_capability_before_and_after_starttls(imapd: RunningDaemon) -> None:
    im = imapd.imap()
    before = set(im.capabilities)
    assert {"IMAP4REV1", "STARTTLS", "LOGINDISABLED"} <= before
    assert not [c for c in before if c.startswith("AUTH=")]  # RFC 3501 §6.2.3 / §11.1
    im.starttls(ssl_context=imapd.client_context())
    after = set(im.capabilities)  # imaplib asks again after the upgrade
    assert "IMAP4REV1" in after and "AUTH=PLAIN" in after
    assert "STARTTLS" not in after and "LOGINDISABLED" not in after
    assert im.login("bob", password("bob"))[0] == "OK"
    im.logout()


def test_capability_on_implicit_tls(imapd: RunningDaemon) -> None:
    im = imaps(imapd)
    caps = set(im.capabilities)
    assert {"IMAP4REV1", "AUTH=PLAIN"} <= caps
    assert "LOGINDISABLED" not in caps and "STARTTLS" not in caps
    typ, data = im.capability()
    assert typ == "OK" and b"IMAP4rev1".upper() in data[0].upper()
    with pytest.raises(imaplib.IMAP4.error):
        im._simple_command("STARTTLS")  # RFC 3501 §6.2.1: TLS is already active
    assert im.noop()[0] == "OK"
    assert im.logout()[0] == "BYE"


def test_login_and_wrong_password(imapd: RunningDaemon) -> None:
    im = imaps(imapd)
    with pytest.raises(imaplib.IMAP4.error) as wrong:
        im.login("bob", "not-the-password")
    with pytest.raises(imaplib.IMAP4.error) as unknown:
        im.login("nobody-here", "not-the-password")
    # no user enumeration: an unknown user gets the same answer as a wrong password
    assert str(wrong.value) == str(unknown.value)
    assert im.state == "NONAUTH"
    assert im.login("bob", password("bob"))[0] == "OK"  # the session is still usable
    assert im.select("INBOX")[0] == "OK"
    im.logout()


def test_commands_need_authentication(imapd: RunningDaemon) -> None:
    c = RawImap.tls(imapd)
    c.greeting()
    for cmd in ("SELECT INBOX", "LIST \"\" *", "STATUS INBOX (MESSAGES)", "CREATE X"):
        assert c.command(cmd).status in ("BAD", "NO"), cmd
    assert c.command("FETCH 1 FLAGS").status == "BAD"
    assert c.command("LOGOUT").untagged_named("BYE")
    assert c.closed()


def test_authenticate_plain(imapd: RunningDaemon) -> None:
    im = imaps(imapd)
    blob = b"\0bob\0" + password("bob").encode()
    typ, _ = im.authenticate("PLAIN", lambda _challenge: blob)
    assert typ == "OK" and im.state == "AUTH"
    assert im.select("INBOX")[0] == "OK"
    im.logout()


def test_authenticate_plain_with_initial_response_and_cancel(imapd: RunningDaemon) -> None:
    c = RawImap.tls(imapd)
    c.greeting()
    # RFC 3501 §6.2.2: "*" cancels the exchange and the server MUST answer BAD
    tag = c.next_tag()
    c.send(f"{tag} AUTHENTICATE PLAIN\r\n".encode())
    assert c.continuation().startswith(b"+")
    c.send(b"*\r\n")
    assert c.until_tagged(tag).status == "BAD"
    # unknown mechanism: NO
    assert c.command("AUTHENTICATE X-UNKNOWN-MECH").status in ("NO", "BAD")
    # wrong password in an initial response (RFC 4959 SASL-IR): NO
    assert c.command(f"AUTHENTICATE PLAIN {plain_b64('bob', 'wrong')}").status == "NO"
    # the right one, in the initial response
    r = c.command(f"AUTHENTICATE PLAIN {plain_b64('bob')}")
    assert r.status == "OK", r
    assert c.command("SELECT INBOX").status == "OK"
    # already authenticated: LOGIN and AUTHENTICATE are not valid in this state
    assert c.command(f'LOGIN bob "{password("bob")}"').status == "BAD"
    c.close()


def test_authorization_identity_of_another_user_is_refused(imapd: RunningDaemon) -> None:
    c = RawImap.tls(imapd)
    c.greeting()
    r = c.command(f"AUTHENTICATE PLAIN {plain_b64('bob', authzid='alice')}")
    assert r.status == "NO"
    c.close()


# -- mailboxes --------------------------------------------------------------------------------

def test_select_and_examine_responses(imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"m{i}"))
    c = session(imapd, select=None)
    r = c.command("SELECT INBOX")
    assert r.status == "OK" and r.code == "READ-WRITE"
    assert r.number("EXISTS") == 3
    assert r.number("RECENT") == 3  # first session to see them
    flags = [line for line in r.untagged if line.upper().startswith(b"FLAGS ")]
    assert len(flags) == 1
    for f in (b"\\Seen", b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Draft"):
        assert f in flags[0]
    uidvalidity = r.ok_code("UIDVALIDITY")
    assert uidvalidity is not None and int(uidvalidity) > 0
    uidnext = r.ok_code("UIDNEXT")
    assert uidnext is not None and int(uidnext) == 4
    permanent = r.ok_code("PERMANENTFLAGS")
    assert permanent is not None and b"\\Seen" in permanent and b"\\Deleted" in permanent
    assert b"\\*" in permanent  # keywords can be created
    unseen = r.ok_code("UNSEEN")
    assert unseen is not None and int(unseen) == 1

    r = c.command("EXAMINE INBOX")
    assert r.status == "OK" and r.code == "READ-ONLY"
    assert r.number("EXISTS") == 3 and r.number("RECENT") == 0
    assert r.ok_code("UIDVALIDITY") == uidvalidity
    # read-only: STORE refused, and a FETCH of BODY[] does not set \Seen
    assert c.command("STORE 1 +FLAGS (\\Flagged)").status == "NO"
    c.ok("FETCH 1 BODY[]")
    flags1 = c.ok("FETCH 1 FLAGS").fetches()[1]["FLAGS"]
    assert "\\Seen" not in flags1

    assert c.command("SELECT Nonexistent").status == "NO"
    # a failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1)
    assert c.command("FETCH 1 FLAGS").status == "BAD"
    r = c.command("SELECT inbox")  # INBOX is case-insensitive (§5.1)
    assert r.status == "OK" and r.number("EXISTS") == 3
    c.close()


def test_create_delete_rename(imapd: RunningDaemon) -> None:
    im = login(imapd)
    assert im.create("Work")[0] == "OK"
    assert im.create("Work.Projects")[0] == "OK"
    assert im.create("Deep.Er.Est")[0] == "OK"  # intermediate levels come with it
    assert im.create("Work")[0] == "NO"  # exists
    assert im.create("INBOX")[0] == "NO"  # §6.3.3
    assert (imapd.data_dir / "mail/bob/.Work.Projects/cur").is_dir()  # Maildir++

    im.select("Work")
    im.append("Work", None, None, message("in work"))
    im.close()
    assert {"INBOX", "Work", "Work.Projects", "Deep", "Deep.Er", "Deep.Er.Est"} <= names_of(im)

    assert im.rename("Work", "Play")[0] == "OK"
    assert im.select("Play")[1] == [b"1"]
    im.close()
    names = names_of(im)
    # §6.3.5: inferior hierarchical names are renamed too
    assert "Play.Projects" in names and "Work" not in names and "Work.Projects" not in names
    assert im.rename("Play", "INBOX")[0] == "NO"
    assert im.rename("Nope", "Other")[0] == "NO"
    assert im.create("Other")[0] == "OK"
    assert im.rename("Play", "Other")[0] == "NO"  # target exists

    assert im.delete("Other")[0] == "OK"
    assert im.delete("Other")[0] == "NO"
    assert im.delete("INBOX")[0] == "NO"  # §6.3.4
    im.delete("Play")  # it has an inferior: OK (becomes \Noselect) or NO, either way ...
    assert "Play.Projects" in names_of(im)  # ... MUST NOT remove it
    im.logout()


def test_rename_inbox_moves_messages_and_leaves_inbox_empty(imapd: RunningDaemon) -> None:
    for i in range(2):
        submit(imapd, message(f"old {i}"))
    im = login(imapd)
    im.create("Keep")
    assert im.rename("INBOX", "Old-Inbox")[0] == "OK"  # §6.3.5 special case
    typ, data = im.select("Old-Inbox")
    assert data == [b"2"]
    typ, data = im.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = sorted(x[1].strip() for x in data if isinstance(x, tuple))
    assert subjects == [b"Subject: old 0", b"Subject: old 1"]
    typ, data = im.select("INBOX")
    assert typ == "OK" and data == [b"0"]
    submit(imapd, message("new after rename"))
    assert im.noop()[0] == "OK"
    assert im.select("INBOX")[1] == [b"1"]
    assert {"Keep", "INBOX", "Old-Inbox"} <= names_of(im)
    im.logout()


def list_names(c: RawImap, ref: str, pattern: str, cmd: str = "LIST") -> dict[str, list[str]]:
    r = c.ok(f'{cmd} "{ref}" "{pattern}"')
    out = {}
    for line in r.untagged_named(cmd):
        v = parse(line)
        assert str(v[0]).upper() == cmd
        attrs, delim, name = v[1], v[2], v[3]
        assert delim == b"."
        out[name.decode() if isinstance(name, bytes) else str(name)] = [a.upper() for a in attrs]
    return out


def test_list_lsub_wildcards_and_subscriptions(imapd: RunningDaemon) -> None:
    c = session(imapd, select=None)
    for name in ("Sent", "Archive", "Archive.2026", "Archive.2026.Q1", "Trash"):
        c.ok(f"CREATE {name}")
    # the hierarchy delimiter: LIST "" "" (§6.3.8)
    r = c.ok('LIST "" ""')
    [line] = r.untagged_named("LIST")
    v = parse(line)
    assert "\\NOSELECT" in [a.upper() for a in v[1]] and v[2] == b"." and v[3] in (b"", "")
    everything = list_names(c, "", "*")
    assert set(everything) == {"INBOX", "Sent", "Archive", "Archive.2026", "Archive.2026.Q1",
                               "Trash"}
    assert set(list_names(c, "", "%")) == {"INBOX", "Sent", "Archive", "Trash"}
    assert set(list_names(c, "", "Archive.%")) == {"Archive.2026"}
    assert set(list_names(c, "", "Archive.*")) == {"Archive.2026", "Archive.2026.Q1"}
    assert set(list_names(c, "Archive.", "%")) == {"Archive.2026"}  # reference name
    assert set(list_names(c, "", "inbox")) == {"INBOX"}
    assert set(list_names(c, "", "A%e")) == {"Archive"}
    assert list_names(c, "", "nothing*") == {}
    attrs = everything["Archive"]
    assert "\\NOSELECT" not in attrs

    assert list_names(c, "", "*", "LSUB") == {}
    c.ok("SUBSCRIBE Archive.2026")
    c.ok("SUBSCRIBE Sent")
    assert set(list_names(c, "", "*", "LSUB")) == {"Archive.2026", "Sent"}
    assert set(list_names(c, "", "%", "LSUB")) in ({"Sent", "Archive"}, {"Sent"})
    assert set(list_names(c, "", "Archive.%", "LSUB")) == {"Archive.2026"}
    c.ok("UNSUBSCRIBE Sent")
    assert set(list_names(c, "", "*", "LSUB")) == {"Archive.2026"}
    # the subscription survives a new session
    c.close()
    c = session(imapd, select=None)
    assert set(list_names(c, "", "*", "LSUB")) == {"Archive.2026"}
    c.close()


def test_non_ascii_mailbox_names_are_modified_utf7(imapd: RunningDaemon) -> None:
    assert mutf7("Entwürfe") == "Entw&APw-rfe"
    japanese = "&ZeVnLIqe-"  # RFC 3501 §5.1.3 example: 日本語
    c = session(imapd, select=None)
    c.ok('CREATE "Entw&APw-rfe"')
    c.ok(f'CREATE "{japanese}"')
    c.ok('CREATE "Tom &- Jerry"')
    names = list_names(c, "", "*")
    assert {"Entw&APw-rfe", japanese, "Tom &- Jerry"} <= set(names)
    assert (imapd.data_dir / "mail/bob/.Entw&APw-rfe").is_dir()  # Dovecot stores mUTF-7
    c.ok('SUBSCRIBE "Entw&APw-rfe"')
    assert set(list_names(c, "", "*", "LSUB")) == {"Entw&APw-rfe"}
    append(c, '"Entw&APw-rfe"', message("draft"))
    r = c.ok('STATUS "Entw&APw-rfe" (MESSAGES)')
    assert b"MESSAGES 1" in r.untagged_named("STATUS")[0]
    # raw 8-bit in a mailbox name is not IMAP4rev1 syntax (mUTF-7 is the only way)
    assert c.command("CREATE \"Gr\xc3\xbcn\"".encode("latin-1")).status in ("BAD", "NO")
    c.close()


def test_status(imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"s{i}"))
    c = session(imapd, select=None)
    r = c.ok("STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
    [line] = r.untagged_named("STATUS")
    v = parse(line)
    assert upper(v[1]) in ("INBOX", b"INBOX")
    items = {str(v[2][i]).upper(): v[2][i + 1] for i in range(0, len(v[2]), 2)}
    assert items["MESSAGES"] == 3 and items["UNSEEN"] == 3 and items["UIDNEXT"] == 4
    assert items["UIDVALIDITY"] > 0 and items["RECENT"] == 3
    c.ok("SELECT INBOX")
    c.ok("STORE 1 +FLAGS (\\Seen)")
    c.ok("SELECT INBOX")  # re-select: \Recent was claimed by the first SELECT
    r = c.ok("STATUS INBOX (UNSEEN RECENT)")
    assert b"UNSEEN 2" in r.untagged_named("STATUS")[0]
    assert b"RECENT 0" in r.untagged_named("STATUS")[0]
    assert c.command("STATUS Nope (MESSAGES)").status == "NO"
    assert c.command("STATUS INBOX (BOGUS)").status == "BAD"
    c.close()


# -- messages ---------------------------------------------------------------------------------

def test_append_with_flags_and_date_fetches_back_byte_for_byte(imapd: RunningDaemon) -> None:
    data = message("appended", b"line one\r\n\r\nline three\r\n", extra="X-Extra: yes\r\n")
    im = login(imapd)
    date = imaplib.Time2Internaldate(datetime(2024, 3, 5, 14, 30, tzinfo=UTC).timestamp())
    typ, resp = im.append("INBOX", r"(\Seen \Flagged $Label1)", date, data)
    assert typ == "OK"
    im.select("INBOX")
    typ, resp = im.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK"
    assert resp[0][1] == data
    typ, resp = im.fetch("1", "(INTERNALDATE RFC822.SIZE FLAGS)")
    v = parse(resp[0])[1]
    kv = {str(v[i]).upper(): v[i + 1] for i in range(0, len(v), 2)}
    assert internaldate(kv["INTERNALDATE"]) == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
    assert kv["RFC822.SIZE"] == len(data)
    assert {f.upper() for f in kv["FLAGS"]} >= {"\\SEEN", "\\FLAGGED", "$LABEL1"}
    assert stored(imapd) == [data]
    # no such mailbox: NO [TRYCREATE] (§6.3.11)
    c = session(imapd, select=None)
    r = c.with_literal("APPEND Nope", data)
    assert r.status == "NO" and r.code == "TRYCREATE"
    # a bad date is a syntax error
    r = c.with_literal('APPEND INBOX "31-Foo-2024 00:00:00 +0000"', data)
    assert r.status == "BAD"
    c.close()
    im.logout()


def test_append_8bit_and_empty_lines_round_trip(imapd: RunningDaemon) -> None:
    data = (b"From: a@example.test\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8"
            b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.\r\n..\r\n\r\n")
    c = session(imapd)
    append(c, "INBOX", data)
    assert c.ok("SEARCH ALL").search() == [1]
    f = c.ok("FETCH 1 (BODY.PEEK[] BODY.PEEK[TEXT])").fetches()[1]
    assert f["BODY[]"] == data
    assert f["BODY[TEXT]"] == b"Gr\xc3\xbc\xc3\x9fe\r\n.\r\n..\r\n\r\n"
    c.close()


def test_check_close_and_expunge(imapd: RunningDaemon) -> None:
    for i in range(5):
        submit(imapd, message(f"e{i}"))
    c = session(imapd)
    c.ok("CHECK")
    c.ok("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    r = c.ok("EXPUNGE")
    # §7.4.1: each EXPUNGE renumbers the rest: "2, 3" and "4, 2" both remove 2 and 4
    view = [1, 2, 3, 4, 5]
    for line in r.untagged:
        if line.upper().endswith(b" EXPUNGE"):
            del view[int(line.split()[0]) - 1]
    assert view == [1, 3, 5]
    assert len(imapd.maildir_files("bob")) == 3
    subjects = c.ok("FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]").fetches()
    assert [subjects[i]["BODY[HEADER.FIELDS (SUBJECT)]"] for i in (1, 2, 3)] == [
        b"Subject: e0\r\n\r\n", b"Subject: e2\r\n\r\n", b"Subject: e4\r\n\r\n"]

    # EXAMINE + CLOSE expunges nothing
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXAMINE INBOX")
    r = c.ok("CLOSE")
    assert not [x for x in r.untagged if x.upper().endswith(b"EXPUNGE")]
    assert len(imapd.maildir_files("bob")) == 3
    # SELECT + CLOSE expunges silently and leaves the selected state
    c.ok("SELECT INBOX")
    r = c.ok("CLOSE")
    assert not [x for x in r.untagged if x.upper().endswith(b"EXPUNGE")]
    assert len(imapd.maildir_files("bob")) == 2
    assert c.command("FETCH 1 FLAGS").status == "BAD"  # authenticated state again
    assert c.command("EXPUNGE").status == "BAD"
    c.close()


MESSAGES = [
    # (subject, from, flags, internal date, body, Date: header)
    ("apple pie", "Anna <anna@x.test>", "\\Seen", "01-Jan-2024 12:00:00 +0000",
     b"cinnamon and sugar\r\n", "Mon, 01 Jan 2024 10:00:00 +0000"),
    ("banana split", "Bert <bert@y.test>", "\\Flagged", "15-Feb-2024 12:00:00 +0000",
     "chocolate and Grüße\r\n".encode(), "Thu, 15 Feb 2024 10:00:00 +0000"),
    ("cherry tart", "Anna <anna@x.test>", "\\Seen \\Answered $Work", "10-Mar-2024 12:00:00 +0000",
     b"x" * 70 + b"\r\n" + (b"long body line\r\n" * 300), "Sun, 10 Mar 2024 10:00:00 +0000"),
    ("=?UTF-8?B?w5xiZXJyYXNjaHVuZw==?=", "=?UTF-8?Q?C=C3=A4sar?= <c@z.test>", "\\Deleted",
     "20-Mar-2024 12:00:00 +0000", b"plain\r\n", "Wed, 20 Mar 2024 10:00:00 +0000"),
]


def search_mailbox(imapd: RunningDaemon) -> RawImap:
    c = session(imapd)
    for subject, sender, flags, date, body, hdate in MESSAGES:
        data = (f"From: {sender}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
                f"Date: {hdate}\r\nX-Tag: {subject.split()[0]}\r\n"
                "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + body
        append(c, "INBOX", data, flags, date)
    assert c.ok("NOOP").number("EXISTS") in (4, None)
    return c


SEARCHES = [
    ("ALL", [1, 2, 3, 4]),
    ("SEEN", [1, 3]),
    ("UNSEEN", [2, 4]),
    ("FLAGGED", [2]),
    ("ANSWERED", [3]),
    ("DELETED", [4]),
    ("UNDELETED", [1, 2, 3]),
    ("KEYWORD $Work", [3]),
    ("UNKEYWORD $Work", [1, 2, 4]),
    ("OR SEEN FLAGGED", [1, 2, 3]),
    ("NOT SEEN", [2, 4]),
    ("OR (SEEN ANSWERED) DELETED", [3, 4]),
    ("NOT (OR SEEN (FLAGGED NOT DELETED))", [4]),
    ("SEEN NOT ANSWERED", [1]),
    ("HEADER X-Tag cherry", [3]),
    ("HEADER X-Nonexistent \"\"", []),
    ("HEADER X-Tag \"\"", [1, 2, 3, 4]),
    ("FROM anna", [1, 3]),
    ("FROM BERT", [2]),
    ("SUBJECT banana", [2]),
    ("TO bob@example", [1, 2, 3, 4]),
    ("BODY chocolate", [2]),
    ("BODY apple", []),       # only in the header
    ("TEXT apple", [1]),      # header or body
    ("TEXT cinnamon", [1]),
    ("BEFORE 1-Mar-2024", [1, 2]),
    ("ON 15-Feb-2024", [2]),
    ("SINCE 15-Feb-2024", [2, 3, 4]),
    ("SENTBEFORE 15-Feb-2024", [1]),
    ("SENTON 10-Mar-2024", [3]),
    ("SENTSINCE 10-Mar-2024", [3, 4]),
    ("LARGER 3000", [3]),
    ("SMALLER 3000", [1, 2, 4]),
    ("2:3", [2, 3]),
    ("3:*", [3, 4]),
    ("1,4", [1, 4]),
    ("UID 2:3", [2, 3]),
    ("UID 4:*", [4]),
    ("NEW", [2, 4]),          # \Recent and not \Seen
    ("OLD", []),
    ("RECENT", [1, 2, 3, 4]),
    ("CHARSET US-ASCII SUBJECT tart", [3]),
]


@pytest.mark.parametrize("loop_kind", ["asyncio"])
def test_search(imapd: RunningDaemon) -> None:
    c = search_mailbox(imapd)
    failures = []
    for criteria, expected in SEARCHES:
        r = c.command(f"SEARCH {criteria}")
        got = r.search() if r.status == "OK" else r.status
        if got != expected:
            failures.append((criteria, expected, got))
    assert not failures
    # UID SEARCH answers UIDs (here equal to sequence numbers) and honours UID sets
    assert c.ok("UID SEARCH SEEN").search() == [1, 3]
    # CHARSET UTF-8 with the search string as a literal
    assert c.with_literal("SEARCH CHARSET UTF-8 BODY", "Grüße".encode()).search() == [2]
    assert c.with_literal("SEARCH CHARSET UTF-8 SUBJECT", "Überraschung".encode()
                          ).search() == [4]                  # decoded encoded-word
    assert c.with_literal("SEARCH CHARSET UTF-8 FROM", "Cäsar".encode()).search() == [4]
    assert c.with_literal("SEARCH CHARSET UTF-8 TEXT", "grüne".encode()).search() == []
    r = c.command("SEARCH CHARSET KOI8-R BODY x")
    assert r.status == "NO" and r.code == "BADCHARSET"   # §6.4.4
    assert c.command("SEARCH BOGUSKEY").status == "BAD"
    assert c.command("SEARCH BEFORE 32-Jan-2024").status == "BAD"
    c.close()


def test_search_after_expunge_uses_new_numbers(imapd: RunningDaemon) -> None:
    c = search_mailbox(imapd)
    c.ok("EXPUNGE")  # removes 4 (\Deleted)
    c.ok("STORE 1 -FLAGS (\\Seen)")
    assert c.ok("SEARCH UNSEEN").search() == [1, 2]
    assert c.ok("UID SEARCH UID 1:*").search() == [1, 2, 3]
    assert c.ok("UID SEARCH UID 4").search() == []
    # §6.4.8: "*" in a UID range is the largest UID in use, so 10:* still matches UID 3
    assert c.ok("UID SEARCH UID 10:*").search() == [3]
    c.close()


def test_fetch_every_item_of_a_submitted_multipart(imapd: RunningDaemon) -> None:
    submit(imapd, MULTIPART)
    [on_disk] = stored(imapd)
    assert on_disk.startswith(b"Return-Path: <")  # RFC 5321 §4.4, then our Received
    assert on_disk.endswith(MULTIPART)
    header, _, text = on_disk.partition(b"\r\n\r\n")
    header += b"\r\n\r\n"
    c = session(imapd)

    f = c.ok("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE UID)").fetches()[1]
    assert [x.upper() for x in f["FLAGS"]] == ["\\RECENT"]
    assert abs((internaldate(f["INTERNALDATE"]) - datetime.now(UTC)).total_seconds()) < 3600
    assert f["RFC822.SIZE"] == len(on_disk)
    assert f["UID"] == 1

    f = c.ok("FETCH 1 RFC822.HEADER").fetches()[1]
    assert f["RFC822.HEADER"] == header  # like BODY.PEEK[HEADER]: \Seen unchanged
    assert "\\SEEN" not in [x.upper() for x in c.ok("FETCH 1 FLAGS").fetches()[1]["FLAGS"]]
    f = c.ok("FETCH 1 RFC822.TEXT").fetches()[1]
    assert f["RFC822.TEXT"] == text  # like BODY[TEXT]: sets \Seen (§6.4.5)
    assert "\\SEEN" in [x.upper() for x in c.ok("FETCH 1 FLAGS").fetches()[1]["FLAGS"]]
    c.ok("STORE 1 -FLAGS.SILENT (\\Seen)")

    env = c.ok("FETCH 1 ENVELOPE").fetches()[1]["ENVELOPE"]
    assert env[0] == b"Mon, 02 Feb 2026 10:00:00 +0000"
    assert env[1] == b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= multipart"   # not decoded (§7.4.2)
    alice = [[b"Alice Smith", None, b"alice", b"example.test"]]
    assert env[2] == alice and env[3] == alice and env[4] == alice  # sender, reply-to default
    assert env[5] == [[b"Bob", None, b"bob", b"example.test"],
                      [b"Carol C.", None, b"carol", b"example.test"]]
    assert env[6] == [[None, None, b"dave", b"example.test"]]
    assert env[7] is None and env[8] is None
    assert env[9] == b"<mp1@example.test>"

    bs = c.ok("FETCH 1 BODYSTRUCTURE").fetches()[1]["BODYSTRUCTURE"]
    alternative, attachment = bs[0], bs[1]
    assert upper(bs[2]) in ("MIXED", b"MIXED")
    assert upper(bs[3]) == [b"BOUNDARY", b"OUTER"]  # extension data: body parameters
    plain, html = alternative[0], alternative[1]
    assert upper(alternative[2]) in ("ALTERNATIVE", b"ALTERNATIVE")
    assert upper(plain[:6]) == [b"TEXT", b"PLAIN", [b"CHARSET", b"UTF-8"], None, None,
                                b"QUOTED-PRINTABLE"]
    assert plain[6] == len(PLAIN_BODY) and plain[7] == 2
    assert upper(html[:2]) == [b"TEXT", b"HTML"]
    assert html[6] == len(HTML_BODY) and html[7] == 1
    assert upper(attachment[:6]) == [b"APPLICATION", b"OCTET-STREAM", [b"NAME", b"DATA.BIN"],
                                     None, None, b"BASE64"]
    assert attachment[6] == len(ATTACHMENT_BODY)
    # extension data of a single part: md5, disposition, ...
    assert upper(attachment[8]) == [b"ATTACHMENT", [b"FILENAME", b"DATA.BIN"]]

    body = c.ok("FETCH 1 BODY").fetches()[1]["BODY"]
    assert len(body) == 3  # no extension data in BODY
    assert len(body[0]) == 3 and len(body[0][0]) == 8  # text/plain: 8 fields, no extensions
    assert body[0][0][:8] == bs[0][0][:8]

    f = c.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)] "
             "BODY.PEEK[HEADER.FIELDS.NOT (RECEIVED RETURN-PATH)] BODY.PEEK[1.2] BODY.PEEK[1.1] "
             "BODY.PEEK[2] BODY.PEEK[1.2.MIME] BODY.PEEK[TEXT]<0.10> BODY.PEEK[1] "
             "BODY.PEEK[HEADER])").fetches()[1]
    assert f["BODY[HEADER.FIELDS (FROM SUBJECT)]"] == (
        b"From: Alice Smith <alice@example.test>\r\n"
        b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= multipart\r\n\r\n")
    head = MULTIPART.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert f["BODY[HEADER.FIELDS.NOT (RECEIVED RETURN-PATH)]"] == head
    assert f["BODY[1.1]"] == PLAIN_BODY
    assert f["BODY[1.2]"] == HTML_BODY
    assert f["BODY[2]"] == ATTACHMENT_BODY
    assert f["BODY[1.2.MIME]"] == b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    assert f["BODY[TEXT]<0>"] == b"preamble\r\n"
    assert f["BODY[1]"].startswith(b"--INNER\r\n") and f["BODY[1]"].endswith(b"--INNER--")
    assert f["BODY[HEADER]"] == header
    assert "\\SEEN" not in [x.upper() for x in c.ok("FETCH 1 FLAGS").fetches()[1]["FLAGS"]]

    f = c.ok("FETCH 1 (BODY[]<5.7> BODY.PEEK[TEXT]<100000.10>)").fetches()[1]
    assert f["BODY[]<5>"] == on_disk[5:12]
    assert f["BODY[TEXT]<100000>"] == b""
    # a non-PEEK BODY[] sets \Seen, and the server reports the change (§6.4.5)
    assert "\\SEEN" in [x.upper() for x in f["FLAGS"]]

    f = c.ok("FETCH 1 (RFC822)").fetches()[1]
    assert f["RFC822"] == on_disk

    for macro, keys in (("ALL", {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"}),
                        ("FAST", {"FLAGS", "INTERNALDATE", "RFC822.SIZE"}),
                        ("FULL", {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE",
                                  "BODY"})):
        got = c.ok(f"FETCH 1 {macro}").fetches()[1]
        assert set(got) == keys, macro
    assert c.command("FETCH 1 (BODY[0])").status == "BAD"
    assert c.command("FETCH 1 BOGUS").status == "BAD"
    assert c.command("FETCH 2 FLAGS").status in ("NO", "BAD")  # no message 2
    c.close()


def test_store_flags_and_keywords(imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"f{i}"))
    c = session(imapd)
    r = c.ok("STORE 1 +FLAGS (\\Flagged \\Seen)")
    assert {x.upper() for x in r.fetches()[1]["FLAGS"]} == {"\\FLAGGED", "\\SEEN", "\\RECENT"}
    r = c.ok("STORE 1 -FLAGS (\\Seen)")
    assert {x.upper() for x in r.fetches()[1]["FLAGS"]} == {"\\FLAGGED", "\\RECENT"}
    r = c.ok("STORE 2 FLAGS (\\Answered $Important Work)")
    assert {x.upper() for x in r.fetches()[2]["FLAGS"]} == {"\\ANSWERED", "$IMPORTANT",
                                                            "WORK", "\\RECENT"}
    r = c.ok("STORE 1:3 +FLAGS.SILENT (\\Draft)")
    assert not r.fetches()  # .SILENT: no FETCH responses for our own change
    r = c.ok("STORE 3 FLAGS.SILENT ()")
    assert not r.fetches()
    # §2.3.2: \Recent "cannot be altered by the client" (refused, or ignored)
    other = session(imapd)
    assert other.ok("FETCH 3 FLAGS").fetches()[3]["FLAGS"] == []  # not \Recent there
    if other.command("STORE 3 +FLAGS (\\Recent)").status == "OK":
        assert other.ok("FETCH 3 FLAGS").fetches()[3]["FLAGS"] == []
    if c.command("STORE 3 -FLAGS (\\Recent)").status == "OK":
        assert [x.upper() for x in c.ok("FETCH 3 FLAGS").fetches()[3]["FLAGS"]] == ["\\RECENT"]
    other.close()
    assert c.command("STORE 1 +FLAGS (\\Bogus)").status in ("BAD", "NO")
    assert c.command("STORE 1 PLUSFLAGS (\\Seen)").status == "BAD"
    c.close()
    # persisted: a new session sees them, and the Maildir info suffix carries system flags
    c = session(imapd)
    f = c.ok("FETCH 1:3 FLAGS").fetches()
    assert {x.upper() for x in f[1]["FLAGS"]} == {"\\FLAGGED", "\\DRAFT"}
    assert {x.upper() for x in f[2]["FLAGS"]} == {"\\ANSWERED", "$IMPORTANT", "WORK",
                                                  "\\DRAFT"}
    assert f[3]["FLAGS"] == []
    names = sorted(p.name for p in imapd.maildir_files("bob"))
    assert any(n.endswith(":2,DF") for n in names)
    assert (imapd.data_dir / "mail/bob/dovecot-keywords").read_text().count("Work") == 1
    r = c.ok("SELECT INBOX")
    flags = next(x for x in r.untagged if x.upper().startswith(b"FLAGS "))
    assert b"$Important" in flags and b"Work" in flags  # defined keywords are listed
    c.close()


def test_copy_and_trycreate(imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"c{i}"))
    c = session(imapd)
    c.ok("CREATE Archive")
    c.ok("STORE 2 +FLAGS (\\Flagged $Keep)")
    c.ok("COPY 2:3 Archive")
    r = c.command("COPY 1 Nowhere")
    assert r.status == "NO" and r.code == "TRYCREATE"
    r = c.command("COPY 9 Archive")
    assert r.status in ("NO", "BAD")
    r = c.ok("STATUS Archive (MESSAGES RECENT UIDNEXT)")
    assert b"MESSAGES 2" in r.untagged_named("STATUS")[0]
    c.ok("SELECT Archive")
    f = c.ok("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])").fetches()
    assert f[1]["BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: c1\r\n\r\n"
    assert {"\\FLAGGED", "$KEEP"} <= {x.upper() for x in f[1]["FLAGS"]}
    assert f[2]["BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: c2\r\n\r\n"
    # the source is untouched
    c.ok("SELECT INBOX")
    assert c.ok("SEARCH ALL").search() == [1, 2, 3]
    c.close()


def test_uid_commands(imapd: RunningDaemon) -> None:
    for i in range(4):
        submit(imapd, message(f"u{i}"))
    c = session(imapd)
    c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.ok("EXPUNGE")  # UIDs 2,3,4 now at sequence 1,2,3
    f = c.ok("UID FETCH 3:4 (FLAGS)").fetches()
    assert {seq: item["UID"] for seq, item in f.items()} == {2: 3, 3: 4}  # UID always sent
    f = c.ok("UID FETCH 1 FLAGS").fetches()
    assert f == {}  # an expunged UID is silently ignored
    assert c.ok("UID FETCH 1:* UID").fetches()[1]["UID"] == 2
    assert c.ok("UID FETCH 99:* UID").fetches() == {3: {"UID": 4}}  # "*" = highest UID
    r = c.ok("UID STORE 3 +FLAGS (\\Seen)")
    assert r.fetches()[2]["UID"] == 3
    assert c.ok("UID SEARCH SEEN").search() == [3]
    assert c.ok("SEARCH SEEN").search() == [2]
    assert c.ok("UID SEARCH UID 3:4 UNSEEN").search() == [4]
    c.ok("CREATE Copied")
    c.ok("UID COPY 2,4 Copied")
    c.ok("SELECT Copied")
    subjects = c.ok("FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]").fetches()
    assert [s["BODY[HEADER.FIELDS (SUBJECT)]"] for _, s in sorted(subjects.items())] == [
        b"Subject: u1\r\n\r\n", b"Subject: u3\r\n\r\n"]
    assert c.command("UID BOGUS 1").status == "BAD"
    c.close()


def test_uidvalidity_and_uids_stable_across_sessions(imapd: RunningDaemon) -> None:
    for i in range(3):
        submit(imapd, message(f"k{i}"))
    c = session(imapd, select=None)
    r1 = c.ok("SELECT INBOX")
    uids1 = {s: i["UID"] for s, i in c.ok("FETCH 1:* UID").fetches().items()}
    c.close()
    submit(imapd, message("k3"))
    c = session(imapd, select=None)
    r2 = c.ok("SELECT INBOX")
    assert r1.ok_code("UIDVALIDITY") == r2.ok_code("UIDVALIDITY")
    uids2 = {s: i["UID"] for s, i in c.ok("FETCH 1:* UID").fetches().items()}
    assert {k: uids2[k] for k in uids1} == uids1 and uids2[4] > uids1[3]
    assert int(r2.ok_code("UIDNEXT") or 0) == uids2[4] + 1
    c.close()


def test_logout_and_noop(imapd: RunningDaemon) -> None:
    c = session(imapd)
    assert c.ok("NOOP").status == "OK"
    r = c.command("LOGOUT")
    assert r.status == "OK" and r.untagged_named("BYE")  # §6.1.3: BYE before the OK
    assert c.closed()


def test_pipelined_commands_answer_in_order(imapd: RunningDaemon) -> None:
    for i in range(2):
        submit(imapd, message(f"p{i}"))
    c = RawImap.tls(imapd)
    c.greeting()
    c.send(f'a LOGIN bob "{password("bob")}"\r\nb SELECT INBOX\r\nc FETCH 1:2 UID\r\n'
           'd NOOP\r\n'.encode())
    for tag in "abcd":
        assert c.until_tagged(tag).status == "OK"
    c.close()


def test_idle_is_usable_if_advertised(imapd: RunningDaemon) -> None:
    c = session(imapd)
    caps = c.ok("CAPABILITY").untagged_named("CAPABILITY")[0].upper().split()
    if b"IDLE" not in caps:
        pytest.skip("IDLE (RFC 2177) not advertised")
    tag = c.next_tag()
    c.send(f"{tag} IDLE\r\n".encode())
    assert c.continuation().startswith(b"+")
    submit(imapd, message("during idle"))
    line = c.read_response()
    deadline = time.monotonic() + 10
    while line is not None and not line.upper().startswith(b"* 1 EXISTS"):
        assert time.monotonic() < deadline
        line = c.read_response()
    assert line is not None
    c.send(b"DONE\r\n")
    assert c.until_tagged(tag).status == "OK"
    c.close()
