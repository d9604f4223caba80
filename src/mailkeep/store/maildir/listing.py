"""The message files of a new/ or cur/ directory, listed again only when it may have changed.

Every look at a changed folder lists new/ and cur/ (uidlist.scan). A listing is kept with
the directory's (inode, size, mtime, ctime) and reused while those are unchanged and were
settled when it was made (settle.py: a later change must show in them). In a busy folder
one of the two usually changed (a flag rename in cur/) while the other did not (new/), and
a readdir of a directory that has seen many renames costs tens of microseconds of kernel
time even with few files in it.

Blocking: a stat and maybe a readdir; called from the store's threads and, for small
folders, from the loop (store.py INLINE_MESSAGES).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from mailkeep.store.maildir.settle import settled

# Directories whose listing is kept (LRU): two per folder of the sessions' open folders.
CACHE_DIRECTORIES = 2048
# Larger directories are listed every time (their listing would hold megabytes).
MAX_CACHED_NAMES = 20_000
# maildir(5) / Dovecot: the base of a file name ends at ':' (the "2,FLAGS" info follows).
INFO_SEPARATOR = ":"

_Identity = tuple[int, int, int, int]
_cache: OrderedDict[str, tuple[_Identity, dict[str, str]]] = OrderedDict()
_guard = threading.Lock()


def entries(root: Path, sub: str) -> dict[str, str] | None:
    """base -> "SUB/NAME" for the message files in root/SUB (dot files are not messages);
    None when the directory does not exist. The dict may be shared: never change it."""
    path = f"{root}/{sub}"
    now = time.time_ns()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _guard:
        hit = _cache.get(path)
    if hit is not None and hit[0] == identity:
        return hit[1]
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return None
    prefix = sub + "/"
    found: dict[str, str] = {}
    for name in names:
        if name[0] != ".":
            found[name.split(INFO_SEPARATOR, 1)[0]] = prefix + name
    with _guard:
        if settled(st, now) and len(found) <= MAX_CACHED_NAMES:
            _cache[path] = (identity, found)
            _cache.move_to_end(path)
            while len(_cache) > CACHE_DIRECTORIES:
                _cache.popitem(last=False)
        else:
            _cache.pop(path, None)
    return found
