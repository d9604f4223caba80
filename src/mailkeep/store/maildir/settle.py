"""When a file's timestamps can vouch that it has not changed since they were read.

A cached view of a directory or index (a folder's snapshot, a directory listing, a usage
sum) is reused while the (inode, size, mtime, ctime) it was built from are unchanged. That
is sound only if any later change gives a different timestamp, and timestamps are coarse:
the kernel stamps files from a clock that advances once per tick (1-10 ms: HZ is 100 to
1000), and some filesystems keep whole seconds only (ext3, or ext4 with 128-byte inodes).
Two changes within one step of that clock can leave the same mtime. So a stat is trusted
only once its times are more than one clock step older than the moment it was taken:

* FINE_SETTLE_NS where the filesystem keeps sub-second times (a time with a nonzero
  fraction shows it): above the longest kernel tick (10 ms at HZ=100), with margin;
* SETTLE_NS (one second, as Dovecot's MAILDIR_SYNC_SECS) where the times are whole
  seconds, or happen to look so (one time in a few hundred, harmlessly).

A change within the window means a fresh look (a rescan), never a stale answer. Network
filesystems that cache attributes are outside these rules (Maildirs are local here).
"""

from __future__ import annotations

import os

SETTLE_NS = 1_000_000_000
FINE_SETTLE_NS = 25_000_000
_SECOND = 1_000_000_000


def settled(st: os.stat_result, now_ns: int) -> bool:
    """Can this stat, taken at `now_ns` (time.time_ns()), vouch for the file's content?"""
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    fine = st.st_mtime_ns % _SECOND or st.st_ctime_ns % _SECOND
    return newest <= now_ns - (FINE_SETTLE_NS if fine else SETTLE_NS)
