"""APPEND to the selected mailbox puts the parsed message in the session's cache
(server/imap_append.py _keep_parsed): what a FETCH then serves from it must be byte for byte
what a read of the stored message gives, bare LF line ends included."""

from __future__ import annotations

import re

from mailkeep.proto.imap.mimecache import MimeCache
from mailkeep.server.imap_commands import ImapExecutor
from tests.support.imap_driver import FakeImapDriver, new_driver

# Bare LF line ends, as scripts send them: stored as given, served with CRLF (to_crlf).
DRAFT = b"From: alice@example.test\nSubject: draft\n\nline one\nline two\r\n"


def logged_in(d: FakeImapDriver) -> ImapExecutor:
    d.feed(b"a LOGIN alice alice-pw\r\n")
    d.feed(b"b SELECT INBOX\r\n")
    assert d.executor is not None
    return d.executor


def append(d: FakeImapDriver, mailbox: str, data: bytes) -> tuple[int, int]:
    """UIDVALIDITY and UID of the appended message."""
    d.out.clear()
    d.feed(b"c APPEND %s {%d+}\r\n" % (mailbox.encode(), len(data)) + data + b"\r\n")
    found = re.search(rb"c OK \[APPENDUID (\d+) (\d+)\]", bytes(d.out))
    assert found, bytes(d.out)
    return int(found.group(1)), int(found.group(2))


def fetch_body(d: FakeImapDriver, uid: int) -> bytes:
    d.out.clear()
    d.feed(b"f UID FETCH %d (BODY.PEEK[] RFC822.SIZE)\r\n" % uid)
    return bytes(d.out)


def test_an_appended_message_is_served_from_the_cache_as_a_read_would_serve_it() -> None:
    d = new_driver()
    ex = logged_in(d)
    validity, uid = append(d, "INBOX", DRAFT)
    assert ex.cache.get(("alice", "INBOX", validity, uid)) is not None
    from_cache = fetch_body(d, uid)
    assert b"line one\r\nline two\r\n" in from_cache
    # The same FETCH with an empty cache: the message is read from the store instead.
    ex.cache = MimeCache()
    assert fetch_body(d, uid) == from_cache


def test_nothing_is_kept_for_another_mailbox() -> None:
    d = new_driver()
    ex = logged_in(d)
    before = len(ex.cache)
    append(d, "Archive", DRAFT)
    assert len(ex.cache) == before
