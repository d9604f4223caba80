"""store/inotify.py against the real kernel: events of a watched directory come back as
(watch descriptor, mask, name), a burst larger than one read comes back whole, and a
removed watch ends with IN_IGNORED."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.store import inotify

MASK = (inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
        | inotify.IN_ONLYDIR)


@pytest.fixture
def ino() -> Iterator[inotify.Inotify]:
    try:
        instance = inotify.Inotify()
    except OSError as exc:
        pytest.skip(f"no inotify here: {exc}")
    yield instance
    instance.close()


def drain(ino: inotify.Inotify) -> list[inotify.Event]:
    out: list[inotify.Event] = []
    while select.select([ino.fd], [], [], 0.2)[0]:
        out += ino.read_events()
    return out


def test_events_of_a_watched_directory(ino: inotify.Inotify, tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "cur").mkdir()
    new = ino.add_watch(str(tmp_path / "new"), MASK)
    cur = ino.add_watch(str(tmp_path / "cur"), MASK)
    assert new != cur
    assert ino.add_watch(str(tmp_path / "new"), MASK) == new  # the same directory again
    assert ino.read_events() == []  # nothing yet, and no blocking
    (tmp_path / "new" / "m1").write_bytes(b"x")
    os.rename(tmp_path / "new" / "m1", tmp_path / "cur" / "m1:2,S")
    os.unlink(tmp_path / "cur" / "m1:2,S")
    (tmp_path / "tmp-unwatched").write_bytes(b"y")
    got = [(wd, mask & ~inotify.IN_ONLYDIR, name) for wd, mask, name in drain(ino)]
    assert got == [(new, inotify.IN_CREATE, b"m1"),
                   (new, inotify.IN_MOVED_FROM, b"m1"),
                   (cur, inotify.IN_MOVED_TO, b"m1:2,S"),
                   (cur, inotify.IN_DELETE, b"m1:2,S")]
    ino.rm_watch(cur)
    assert drain(ino) == [(cur, inotify.IN_IGNORED, b"")]
    ino.rm_watch(cur)  # already gone: no error


def test_a_burst_larger_than_one_read(ino: inotify.Inotify, tmp_path: Path) -> None:
    wd = ino.add_watch(str(tmp_path), MASK)
    names = [f"{i:04d}." + "n" * 100 for i in range(1500)]  # ~190 KB of events
    for name in names:
        (tmp_path / name).write_bytes(b"")
    got = drain(ino)
    assert [n.decode() for _, _, n in got] == names
    assert {(w, m) for w, m, _ in got} == {(wd, inotify.IN_CREATE)}


def test_a_missing_directory_is_an_oserror(ino: inotify.Inotify, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="inotify_add_watch"):
        ino.add_watch(str(tmp_path / "absent"), MASK)
