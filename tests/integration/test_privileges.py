"""Started as root: bind, hand the writable files over, become run_as for good; refuse to
keep running as root without run_as unless allow_root."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import start_process_daemon, write_config
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def _status_ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return ([int(x) for x in fields["Uid"].split()], [int(x) for x in fields["Gid"].split()],
            [int(x) for x in fields["Groups"].split()])


@pytest.fixture
def open_path() -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's tmp_path parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mailkeep-privileges-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_root_drops_to_run_as_after_binding(open_path: Path, ca: trustme.CA) -> None:
    nobody = pwd.getpwnam("nobody")
    # The configuration and the users file stay root's (0600): the daemon reads them
    # before the switch. Its data directory is handed over.
    config = write_config(open_path, ca, extra_top={"run_as": "nobody"})
    d = start_process_daemon(config, ca)
    try:
        assert d.proc is not None
        # The ready file is written before the switch (its folder may be root's); the pid
        # file once the daemon is fully up, after it.
        assert eventually(lambda: (d.data_dir / "mailkeep.pid").exists(), 30)
        uids, gids, groups = _status_ids(d.proc.pid)
        assert uids == [nobody.pw_uid] * 4          # real, effective, saved, filesystem
        assert gids == [nobody.pw_gid] * 4
        assert groups == []
        # It still works as the unprivileged user: a message is spooled and delivered.
        s = d.smtp()
        s.login("alice", "alice-secret-pw")
        assert s.sendmail("alice@example.test", ["bob@example.test"],
                          b"From: alice@example.test\r\nSubject: dropped\r\n\r\nok\r\n") == {}
        s.quit()
        files = d.maildir_files("bob")
        assert len(files) == 1 and files[0].stat().st_uid == nobody.pw_uid
        assert (d.data_dir / "spool" / "queue").stat().st_uid == nobody.pw_uid
    finally:
        d.stop()


def test_root_without_run_as_is_refused_with_the_fix(tmp_path: Path, ca: trustme.CA) -> None:
    config = write_config(tmp_path, ca)
    config.write_text(config.read_text().replace("allow_root = true\n", ""))
    r = subprocess.run([sys.executable, "-m", "mailkeep", "serve", "--config", str(config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert "run_as:" in r.stderr and "allow_root = true" in r.stderr


def test_unknown_run_as_user_is_a_clear_error(tmp_path: Path, ca: trustme.CA) -> None:
    config = write_config(tmp_path, ca, extra_top={"run_as": "no-such-user-here"})
    r = subprocess.run([sys.executable, "-m", "mailkeep", "serve", "--config", str(config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert "no user 'no-such-user-here'" in r.stderr



def test_every_worker_drops_to_run_as_and_so_does_a_restarted_one(open_path: Path,
                                                                  ca: trustme.CA) -> None:
    """workers = 2: the supervisor stays root (a restarted worker must bind again); every
    worker, the restarted one too, runs as run_as."""
    nobody = pwd.getpwnam("nobody")
    config = write_config(open_path, ca, extra_top={"run_as": "nobody", "workers": 2})
    d = start_process_daemon(config, ca)

    def workers() -> list[int]:
        return [int(p) for p in json.loads((open_path / "ready.json").read_text())["workers"]]

    try:
        first = workers()
        for pid in first:  # (the ready file is written just before the switch)
            assert eventually(lambda pid=pid: _status_ids(pid)[0] == [nobody.pw_uid] * 4, 30)
        os.kill(first[0], signal.SIGKILL)
        assert eventually(lambda: len(set(workers()) - set(first)) == 1, 30)
        restarted = next(iter(set(workers()) - set(first)))
        assert eventually(lambda: _status_ids(restarted)[0] == [nobody.pw_uid] * 4, 30)
        for _ in range(4):  # whichever worker takes it, mail goes through
            s = d.smtp()
            s.login("alice", "alice-secret-pw")
            assert s.sendmail("alice@example.test", ["bob@example.test"],
                              b"From: alice@example.test\r\nSubject: w\r\n\r\nok\r\n") == {}
            s.quit()
        assert len(d.maildir_files("bob")) == 4
    finally:
        d.stop()
