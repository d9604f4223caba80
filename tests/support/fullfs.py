"""A real full filesystem for disk-full tests: a small tmpfs mounted over a directory.

    def test_x(small_tmpfs: SmallFs) -> None:       # fixture: tmp_path / "fs", 4 MiB
        small_tmpfs.fill()                           # now every write gets ENOSPC
        ...
        small_tmpfs.release(4096)                    # one page free again

or, for a given directory (e.g. a daemon's data_dir, before the daemon starts):

    with mounted_tmpfs(root / "data") as fs: ...

Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped with the reason, never
failed. tmpfs allocates whole pages: a file of 1 octet takes PAGE octets, creating an empty
file or a directory, renaming and unlinking take none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Small enough to fill in a moment, large enough for a few test messages and indexes.
DEFAULT_SIZE = 4 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
_CHUNK = 64 * 1024


@dataclass
class SmallFs:
    path: Path
    fillers: list[Path] = field(default_factory=list)

    def available(self) -> int:
        """Octets free (statvfs f_bavail)."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> Path:
        """Write a filler file until the filesystem says ENOSPC; the filler's path."""
        filler = self.path / f".filler-{len(self.fillers)}"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.fillers.append(filler)
        try:
            for size in (_CHUNK, PAGE, 1):
                block = b"\0" * size
                while True:
                    try:
                        if os.write(fd, block) == 0:
                            break
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return filler

    def release(self, octets: int) -> None:
        """Give back `octets` (rounded to whole pages by tmpfs) from the last filler."""
        filler = self.fillers[-1]
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - octets))

    def empty(self) -> None:
        """Remove every filler: the filesystem has its space back."""
        for filler in self.fillers:
            with contextlib.suppress(FileNotFoundError):
                filler.unlink()
        self.fillers.clear()


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: int = DEFAULT_SIZE) -> Iterator[SmallFs]:
    """Mount a tmpfs of `size` octets over `path` (created if missing) for the duration;
    pytest.skip() when mounting is not permitted. Stop anything using it before leaving."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a real full filesystem needs a tmpfs mount, and mounting needs root")
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                              "mailkeep-test", str(path)],
                             capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        pytest.skip("no mount(8) to mount a tmpfs with")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {out.stderr.strip() or out.returncode}")
    try:
        yield SmallFs(path)
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, timeout=30,
                              check=False)
        if done.returncode != 0:  # still busy (a descriptor not closed yet): detach it
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30,
                           check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[SmallFs]:
    """A DEFAULT_SIZE tmpfs at tmp_path / "fs" (skips without permission to mount)."""
    with mounted_tmpfs(tmp_path / "fs") as fs:
        yield fs
