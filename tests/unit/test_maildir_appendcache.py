"""The parse cache of append-only index files (store/maildir/appendcache.py): kept while
the file is unchanged, extended by appended lines only, and dropped for anything else."""

from __future__ import annotations

import os
from pathlib import Path

from mailkeep.store.maildir import modseq, uidlist
from mailkeep.store.maildir.appendcache import AppendCache


class Counting:
    """A line parser that counts what it was asked to parse."""

    def __init__(self) -> None:
        self.whole = 0
        self.more_octets = 0

    def parse(self, data: bytes) -> list[bytes]:
        self.whole += 1
        return data.split(b"\n")[:-1]  # whole lines only

    def parse_more(self, value: list[bytes], more: bytes) -> list[bytes]:
        self.more_octets += len(more)
        return value + more.split(b"\n")[:-1]


def test_unchanged_file_is_parsed_once_and_handed_out_as_copies(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"head\nr1\n")
    p, cache = Counting(), AppendCache[list[bytes]](list)
    first = cache.read(str(path), p.parse, p.parse_more)
    assert first == [b"head", b"r1"]
    first.append(b"changed by the caller")
    assert cache.read(str(path), p.parse, p.parse_more) == [b"head", b"r1"]
    assert p.whole == 1 and p.more_octets == 0


def test_appended_lines_only_are_parsed(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"head\nr1\n")
    p, cache = Counting(), AppendCache[list[bytes]](list)
    cache.read(str(path), p.parse, p.parse_more)
    with path.open("ab") as f:
        f.write(b"r2\nr3\n")
    assert cache.read(str(path), p.parse, p.parse_more) == [b"head", b"r1", b"r2", b"r3"]
    assert p.whole == 1 and p.more_octets == len(b"r2\nr3\n")
    with path.open("ab") as f:
        f.write(b"r4\n")
    assert cache.read(str(path), p.parse, p.parse_more)[-1] == b"r4"
    assert p.whole == 1


def test_a_line_still_being_written_is_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"head\nr1\n")
    p, cache = Counting(), AppendCache[list[bytes]](list)
    cache.read(str(path), p.parse, p.parse_more)
    with path.open("ab") as f:
        f.write(b"r2\nhalf")
    assert cache.read(str(path), p.parse, p.parse_more) == [b"head", b"r1", b"r2"]
    with path.open("ab") as f:
        f.write(b"-done\n")
    assert cache.read(str(path), p.parse, p.parse_more)[-1] == b"half-done"


def test_a_file_renamed_in_is_parsed_whole(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"head 1\nr1\n")
    p, cache = Counting(), AppendCache[list[bytes]](list)
    cache.read(str(path), p.parse, p.parse_more)
    tmp = tmp_path / "new"
    tmp.write_bytes(b"head 2\nr9\nr10\n")
    os.replace(tmp, path)
    assert cache.read(str(path), p.parse, p.parse_more) == [b"head 2", b"r9", b"r10"]
    assert p.whole == 2


def test_another_file_under_the_same_inode_is_parsed_whole(tmp_path: Path) -> None:
    # Rewritten in place and grown: same inode, longer, but not an append of what was seen
    # (stands for an inode number reused by a file renamed in later).
    path = tmp_path / "index"
    path.write_bytes(b"head 1\nr1\n")
    p, cache = Counting(), AppendCache[list[bytes]](list)
    cache.read(str(path), p.parse, p.parse_more)
    with path.open("r+b") as f:
        f.write(b"head 2\nr7\nr8\n")
    assert cache.read(str(path), p.parse, p.parse_more) == [b"head 2", b"r7", b"r8"]
    assert p.whole == 2 and p.more_octets == 0


def test_same_size_written_in_place_is_parsed_whole(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"head\nr1\n")
    p, cache = Counting(), AppendCache[list[bytes]](list)
    cache.read(str(path), p.parse, p.parse_more)
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(5)
        f.write(b"r2")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.read(str(path), p.parse, p.parse_more) == [b"head", b"r2"]
    assert p.whole == 2


def test_missing_file_is_none(tmp_path: Path) -> None:
    p, cache = Counting(), AppendCache[list[bytes]](list)
    assert cache.read(str(tmp_path / "none"), p.parse, p.parse_more) is None


def test_uidlist_appended_records_read_incrementally(tmp_path: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new" / "1700000000.M1P1Q1.h").write_bytes(b"x")
    uidlist.sync(tmp_path)
    first = uidlist.read_cached(tmp_path)
    assert first is not None and len(first.records) == 1
    with (tmp_path / uidlist.UIDLIST_NAME).open("ab") as f:
        f.write(b"7 :1700000001.M1P1Q2.h\n")
    again = uidlist.read_cached(tmp_path)
    assert again is not None
    assert [r.uid for r in again.records.values()] == [1, 7] and again.next_uid == 8
    assert again == uidlist.read(tmp_path)


def test_uidlist_append_out_of_order_falls_back_to_a_whole_parse(tmp_path: Path) -> None:
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new" / "1700000000.M1P1Q1.h").write_bytes(b"x")
    (tmp_path / "new" / "1700000001.M1P1Q2.h").write_bytes(b"x")
    uidlist.sync(tmp_path)
    assert uidlist.read_cached(tmp_path) is not None
    with (tmp_path / uidlist.UIDLIST_NAME).open("ab") as f:
        f.write(b"1 :1700000009.M1P1Q9.h\n")  # a lower UID than the last: not an append
    assert uidlist.read_cached(tmp_path) == uidlist.read(tmp_path)


def test_modseq_sidecar_appended_lines_read_incrementally(tmp_path: Path) -> None:
    folder = tmp_path
    first = modseq.update(folder, 5, {1: frozenset(), 2: frozenset({"\\Seen"})})
    assert modseq.read(folder) == first
    second = modseq.update(folder, 5, {1: frozenset({"\\Flagged"})})  # 2 expunged
    got = modseq.read(folder)
    assert got == second and got is not None
    assert 2 not in got.entries and [uid for _, uid in got.expunged] == [2]
    assert got.entries == modseq.parse((folder / modseq.SIDECAR_NAME).read_bytes()).entries
