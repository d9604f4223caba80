"""RFC 3501 §6.3.9: LSUB with "%" shows an unsubscribed parent of a subscribed name."""

from __future__ import annotations

from tests.support.daemon import RunningDaemon
from tests.support.imap import session


def test_lsub_percent_shows_unsubscribed_parent_as_noselect(imap_daemon: RunningDaemon) -> None:
    c = session(imap_daemon, select=None)
    c.ok("CREATE foo.bar")
    c.ok("CREATE foo.baz")
    c.ok("SUBSCRIBE foo.bar")
    c.ok("SUBSCRIBE foo.baz")
    top = c.ok('LSUB "" "%"').untagged
    assert top.count(b'LSUB (\\Noselect) "." "foo"') == 1, top
    assert not any(b"foo.bar" in line for line in top)
    everything = c.ok('LSUB "" "*"').untagged
    assert sorted(everything) == [b'LSUB () "." "foo.bar"', b'LSUB () "." "foo.baz"']
    c.ok("SUBSCRIBE foo")
    top = c.ok('LSUB "" "%"').untagged
    assert top == [b'LSUB () "." "foo"'], top
    assert sorted(c.ok('LSUB "foo." "%"').untagged) == [b'LSUB () "." "foo.bar"',
                                                        b'LSUB () "." "foo.baz"']
    c.ok("LOGOUT")
