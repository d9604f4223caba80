"""Parsed copies of index files that only ever grow in place or are renamed over.

dovecot-uidlist and the MODSEQ sidecar are changed in two ways only: lines appended at the
end (the same inode grows) or a whole new file renamed into place (a new inode). So a file
seen before is either unchanged, longer by some lines, or another file: a parse can be kept
and, when the file grew, only the new lines parsed on top of it. A busy folder's index
grows with every flag change and delivery; parsing it whole at every look was the largest
single cost of the IMAP command mix (docs/benchmarks.md).

Inode numbers are reused once a file is gone, so an inode (and size) alone does not prove
it is the file parsed before: its first line and the bytes just before the old end must be
the same too. Every writer rewrites the first line when it renames a new file in (a new
next UID or highest MODSEQ) and the bytes before the old end hold the last records then,
which a rewrite moves or changes.

Blocking file I/O: called from the store's threads.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# How many files' parses are kept (a folder each; the open folders of active sessions).
CACHE_ENTRIES = 256
# Bytes before the old end compared to tell "grew" from "another file with this inode".
TAIL_CHECK = 64
# The first line compared likewise; longer first lines are compared this far.
HEAD_CHECK = 256


@dataclass(frozen=True, slots=True)
class _Seen(Generic[T]):
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    head: bytes
    tail: bytes
    value: T


def _head(data: bytes) -> bytes:
    end = data.find(b"\n")
    return data[:HEAD_CHECK] if end < 0 else data[:min(end + 1, HEAD_CHECK)]


class AppendCache(Generic[T]):
    def __init__(self, copy: Callable[[T], T], entries: int = CACHE_ENTRIES) -> None:
        self._copy = copy
        self._entries = entries
        self._seen: OrderedDict[str, _Seen[T]] = OrderedDict()
        self._guard = threading.Lock()

    def read(self, path: str, parse: Callable[[bytes], T],
             parse_more: Callable[[T, bytes], T | None], *, shared: bool = False) -> T | None:
        """The parse of the file at `path` (the caller's to change), or None when there is
        no file. `parse` reads a whole file; `parse_more` adds appended whole lines to a
        copy of an earlier parse, or says None (then the file is parsed whole). OSError and
        the parsers' errors go to the caller. `shared`: the caller promises not to change
        the result, which may then be the cached parse itself (no copy)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            with self._guard:
                seen = self._seen.get(path)
            if seen is not None and seen.ino == st.st_ino and seen.size <= st.st_size:
                value = self._grown(path, fd, seen, st, parse_more, shared=shared)
                if value is not None:
                    return value
            data = _read_all(fd, st.st_size)
        finally:
            os.close(fd)
        value = parse(data)
        if len(data) == st.st_size and data.endswith(b"\n"):
            # Whole lines only: a line being appended now is not in the parse, and would
            # be skipped for good if the parse were kept with this size.
            self._keep(path, _Seen(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                   _head(data), data[-TAIL_CHECK:],
                                   value if shared else self._copy(value)))
        return value

    def _grown(self, path: str, fd: int, seen: _Seen[T], st: os.stat_result,
               parse_more: Callable[[T, bytes], T | None], *, shared: bool) -> T | None:
        head = os.pread(fd, len(seen.head), 0)
        start = seen.size - len(seen.tail)
        if head != seen.head or os.pread(fd, len(seen.tail), start) != seen.tail:
            return None  # another file under a reused inode number
        if seen.size == st.st_size:
            if (seen.mtime_ns, seen.ctime_ns) != (st.st_mtime_ns, st.st_ctime_ns):
                return None  # written in place without growing: not ours, parse it whole
            return seen.value if shared else self._copy(seen.value)
        more = _read_all(fd, st.st_size - seen.size, seen.size)
        if not more.endswith(b"\n"):
            return None  # a line still being appended: parsed whole, kept no longer
        value = parse_more(self._copy(seen.value), more)
        if value is None:
            return None
        self._keep(path, _Seen(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                               seen.head, (seen.tail + more)[-TAIL_CHECK:],
                               value if shared else self._copy(value)))
        return value

    def prime(self, path: str, data: bytes, value: T) -> None:
        """We just put `data` (whose parse is `value`) at `path`, holding its lock: keep the
        parse, so the next read need not parse it again. Nothing is kept unless the file
        is `data` as far as its size and ends tell."""
        try:
            st = os.stat(path)
        except OSError:
            return
        if st.st_size != len(data) or not data.endswith(b"\n"):
            return
        self._keep(path, _Seen(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                               _head(data), data[-TAIL_CHECK:], self._copy(value)))

    def _keep(self, path: str, seen: _Seen[T]) -> None:
        with self._guard:
            self._seen[path] = seen
            self._seen.move_to_end(path)
            while len(self._seen) > self._entries:
                self._seen.popitem(last=False)

    def forget(self) -> None:
        with self._guard:
            self._seen.clear()


def _read_all(fd: int, size: int, offset: int = 0) -> bytes:
    """Up to `size` bytes from `offset` (more if the file grew meanwhile, to its end)."""
    chunks: list[bytes] = []
    while True:
        chunk = os.pread(fd, max(size, 65536), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
