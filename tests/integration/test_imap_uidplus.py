"""RFC 4315 UIDPLUS: APPENDUID and COPYUID name the UIDs the server assigned."""

from __future__ import annotations

import re

from tests.support.daemon import RunningDaemon
from tests.support.imap import append, message, session


def test_appenduid_and_copyuid(imap_daemon: RunningDaemon) -> None:
    c = session(imap_daemon, select=None)
    assert b"UIDPLUS" in b" ".join(c.ok("CAPABILITY").untagged)
    c.ok("CREATE Archive")
    r = append(c, "INBOX", message("first"), flags="\\Seen")
    m = re.match(rb"\[APPENDUID (\d+) (\d+)\]", r.text)
    assert m, r.text
    validity, uid = int(m.group(1)), int(m.group(2))
    append(c, "INBOX", message("second"))
    selected = c.ok("SELECT INBOX")
    assert int(selected.ok_code("UIDVALIDITY") or b"0") == validity
    fetched = c.ok(f"UID FETCH {uid} (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: first" in b"".join(fetched.untagged)
    copied = c.ok("UID COPY 1:* Archive")
    m = re.match(rb"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]", copied.text)
    assert m, copied.text
    archive = c.ok("EXAMINE Archive")
    assert int(m.group(1)) == int(archive.ok_code("UIDVALIDITY") or b"0")
    assert (m.group(2), m.group(3)) == (b"1:2", b"1:2")
    c.ok("LOGOUT")
