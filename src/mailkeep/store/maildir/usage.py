"""How much an account's Maildir++ tree holds (RFC 9208 quota; blocking: run off the loop).

Computed from the message files themselves: every folder's new/ and cur/ are listed and each
file's size read from its name (",S=" as Dovecot and we write it; a stat() for a name
without one). A folder directory whose listing cannot have changed since the last count is
not listed again: the count is kept per directory with its (inode, mtime, ctime), trusted
only when those times are settled (settle.py: coarse timestamps, two changes within one
tick can leave the same mtime; mailbox.signature() uses the same rule).

Why not Dovecot's `maildirsize` (the Maildir++ quota file of deltas appended by every
writer)? It is only as right as every writer: Dovecot without its quota plugin, a script
dropping a file into new/, or a crash between a rename and its delta line all leave it wrong
until its periodic recalculation, and what we would recalculate it from is this very listing.
Listing is cheap when the per-directory counts are reused, and it is always right.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

from mailkeep.store.base import Usage
from mailkeep.store.maildir.folders import TRASH_PREFIX
from mailkeep.store.maildir.settle import settled

# Directories whose count is kept (LRU): two per folder.
CACHE_DIRECTORIES = 8192
_SIZE = re.compile(r",S=(\d+)")
_cache: OrderedDict[str, tuple[tuple[int, int, int], int, int]] = OrderedDict()
_guard = threading.Lock()


def _count(directory: Path, now_ns: int) -> tuple[int, int]:
    """(octets, messages) of one new/ or cur/ directory."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return 0, 0
    identity = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    key = str(directory)
    with _guard:
        hit = _cache.get(key)
        if hit is not None and hit[0] == identity:
            _cache.move_to_end(key)
            return hit[1], hit[2]
    octets = messages = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                found = _SIZE.search(entry.name.split(":", 1)[0])
                if found is not None:
                    octets += int(found.group(1))
                else:
                    try:
                        octets += entry.stat().st_size
                    except FileNotFoundError:
                        continue
                messages += 1
    except FileNotFoundError:
        return 0, 0
    if settled(st, now_ns):
        with _guard:
            _cache[key] = (identity, octets, messages)
            _cache.move_to_end(key)
            while len(_cache) > CACHE_DIRECTORIES:
                _cache.popitem(last=False)
    return octets, messages


def usage(root: Path) -> Usage:
    """Octets and messages in INBOX and every folder of the account rooted at `root`."""
    now = time.time_ns()
    folders = [root]
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name.startswith(".") and not entry.name.startswith(TRASH_PREFIX) \
                        and entry.name not in (".", "..") and entry.is_dir():
                    folders.append(Path(entry.path))
    except FileNotFoundError:
        return Usage(0, 0)
    octets = messages = 0
    for folder in folders:
        for sub in ("new", "cur"):
            o, m = _count(folder / sub, now)
            octets += o
            messages += m
    return Usage(octets, messages)
