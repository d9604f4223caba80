"""Where things live in a Maildir++ tree, and how new files are named.

Layout (Dovecot `mail_location = maildir:DATA_DIR/mail/%u`): the account folder is the INBOX
Maildir (tmp/ new/ cur/); sub-folders are dot-directories (".Sent", ".Archive.2026").
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import threading
import time
from pathlib import Path

from mailkeep.fsmodes import make_private_dirs

SUBDIRS = ("tmp", "new", "cur")
_counter = itertools.count()


def account_root(mail_dir: Path, account: str) -> Path:
    """The Maildir of an account: MAIL_DIR/<account> (MAIL_DIR defaults to DATA_DIR/mail)."""
    if not account or account.startswith(".") or "/" in account or "\0" in account:
        raise ValueError(f"unsafe account name {account!r}")
    return mail_dir / account


def _safe_hostname() -> str:
    # maildir(5) (cr.yp.to/proto/maildir.html): "/" -> \057 and ":" -> \072 in the host part.
    return socket.gethostname().replace("/", r"\057").replace(":", r"\072")


HOSTNAME = _safe_hostname()


def unique_name(size: int) -> str:
    """cr.yp.to maildir naming: time.M<usec>P<pid>Q<counter>.host, plus Dovecot's S= and W=.

    S= is the file size; W= the size with CRLF line ends (RFC 822 size). We store messages as
    they arrived on the wire (CRLF), so both are the same and POP3/IMAP can use them unread."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{HOSTNAME},S={size},W={size}"


# Maildirs known to have tmp/ new/ cur/: every store operation asks, and three mkdir()
# calls answering EEXIST each time add up (issue 10 profile). A folder deleted or renamed
# through the store is forgotten; one removed behind our back fails its next write instead.
_complete: set[str] = set()
_complete_guard = threading.Lock()
MAX_KNOWN_MAILDIRS = 100_000


def ensure_maildir(root: Path) -> None:
    """tmp/ new/ cur/ (and any missing parent) with mode 0700, whatever the umask."""
    key = str(root)
    if key in _complete:
        return
    for sub in SUBDIRS:
        make_private_dirs(root / sub)
    with _complete_guard:
        if len(_complete) >= MAX_KNOWN_MAILDIRS:
            _complete.clear()
        _complete.add(key)


def forget_maildirs(prefix: Path) -> None:
    """A folder (tree) was deleted or renamed: ask the filesystem again next time."""
    start = str(prefix)
    with _complete_guard:
        for key in [k for k in _complete if k == start or k.startswith(start)]:
            _complete.discard(key)


# "sec.M<usec>P<pid>Q<n>.host" (ours and Dovecot's); other writers use "sec.<pid>_<n>.host".
_NAME_TIME = re.compile(r"^(\d+)\.(?:[^.]*?M(\d+))?(?:[^.]*?Q(\d+))?")


def delivery_order(base: str) -> tuple[int, int, int, str]:
    """Sort key for delivery order: seconds, microseconds, then the per-process counter.

    Names are not zero-padded ("M5" is earlier than "M40"), so plain string order is wrong.
    Names we cannot read sort after ours, stable among themselves."""
    m = _NAME_TIME.match(base)
    if not m:
        return (1 << 62, 0, 0, base)
    return (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0), base)
