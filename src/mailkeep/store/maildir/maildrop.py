"""Maildrop operations on one Maildir INBOX: listing, flags, removal (blocking: run off-loop).

Message keys are filename bases (the name before ':2,'), stable across new/ -> cur/ moves and
flag changes, exactly what the dovecot-uidlist index records.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from mailkeep.store.base import Maildrop, MessageGone, MessageInfo
from mailkeep.store.maildir import echo, uidlist
from mailkeep.store.maildir.durable import fsync_dir

_W_SIZE = re.compile(r",W=(\d+)")
# Read size for RETR streaming and for sizing foreign files without W=: bounded memory.
READ_CHUNK = 64 * 1024
SEEN = "S"


def crlf_size(path: Path) -> int:
    """Octets of the file once every bare LF is a CRLF (reads it, in chunks)."""
    total = 0
    prev_cr = False
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            total += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
            if prev_cr and chunk.startswith(b"\n"):
                total -= 1  # "\r" | "\n" across the chunk boundary was a CRLF already
            prev_cr = chunk.endswith(b"\r")
    return total


def message_size(root: Path, location: str) -> int:
    """RFC 1939 size (CRLF form) from Dovecot's W= (or our S=, stored CRLF), else measured."""
    base = uidlist.filename_base(location.split("/", 1)[1])
    m = _W_SIZE.search(base)
    if m:
        return int(m.group(1))
    # S= alone is the size on disk, which differs when the file has bare LF line ends.
    return crlf_size(root / location)


def list_maildrop(root: Path) -> tuple[Maildrop, dict[str, str]]:
    """The listing in UID order, and base -> current location ("new/NAME" / "cur/NAME")."""
    index, files = uidlist.sync(root)
    messages: list[MessageInfo] = []
    for rec in index.by_uid():
        location = files.get(rec.base)
        if location is None:
            continue
        try:
            size = message_size(root, location)
        except FileNotFoundError:
            continue  # removed under us: not part of this maildrop
        name = location.split("/", 1)[1]
        seen = SEEN in uidlist.filename_flags(name)
        messages.append(MessageInfo(uid=rec.uid, key=rec.base, size=size, seen=seen))
    return Maildrop(uidvalidity=index.uidvalidity, messages=tuple(messages)), files


def locate(root: Path, key: str, hint: str | None) -> str:
    """The current location of a message, trying the hint first. MessageGone."""
    if hint is not None and (root / hint).exists():
        return hint
    found = uidlist.scan(root).get(key)
    if found is None:
        raise MessageGone(key)
    return found


def with_seen(name: str) -> str:
    """maildir(5): flags after ':2,' in ASCII order; add S."""
    base = uidlist.filename_base(name)
    flags = set(uidlist.filename_flags(name))
    flags.add(SEEN)
    return f"{base}:2,{''.join(sorted(flags))}"


def mark_seen(root: Path, location: str) -> str:
    """Move new/NAME to cur/NAME:2,S (Dovecot's way), or add S in cur/. The new location."""
    sub, name = location.split("/", 1)
    if sub == "cur" and SEEN in uidlist.filename_flags(name):
        return location
    target = f"cur/{with_seen(name)}"
    echo.rename(root / location, root / target)
    return target



def delete(root: Path, locations: list[str]) -> int:
    """Unlink the files, then fsync the folders once: gone for good when this returns."""
    removed = 0
    touched: set[str] = set()
    for location in locations:
        with contextlib.suppress(FileNotFoundError):
            echo.unlink(root / location)
            removed += 1
            touched.add(location.split("/", 1)[0])
    for sub in touched:
        fsync_dir(root / sub)
    return removed
