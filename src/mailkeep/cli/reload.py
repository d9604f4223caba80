"""`mailkeep reload`: check the configuration, have the running daemon apply it, report.

1. The file is checked like `check-config` does; with any problem, every one is printed and
   nothing is signalled (exit 78).
2. The daemon is found by its pid file (`pid_file`, by default in data_dir), believed only
   when that process holds the spool's lock (runfiles.py): a crash or a reused pid is never
   signalled.
3. SIGHUP, then wait (bounded) for the daemon's status file to show a newer generation, read
   from this very version of the file (its sha256): applied (exit 0, with what changed) or
   refused (exit 1, with every problem; the daemon keeps its running configuration).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mailkeep.cli.common import EXIT_CONFIG, EXIT_TEMPFAIL, CliError
from mailkeep.config.check import problems as check_problems
from mailkeep.config.check import warnings as check_warnings
from mailkeep.config.load import read_config
from mailkeep.config.model import Config
from mailkeep.runfiles import read_pid, read_status

# sysexits.h EX_UNAVAILABLE: there is no daemon to reload.
EXIT_NOT_RUNNING = 69
# How long to wait for the daemon's answer: it reads every certificate and may open a new
# directory backend; seconds normally.
DEFAULT_TIMEOUT = 30.0
POLL_INTERVAL = 0.1


def cmd_reload(args: argparse.Namespace) -> int:
    reading = read_config(args.config)
    problems = check_problems(reading)
    if problems:
        print(f"{reading.path}: {len(problems)} problem(s); not reloaded:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    config = reading.config
    assert config is not None
    for warning in check_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    pid = find_daemon(config)
    before = _status_of(config, pid)
    if before is not None and not _same_file(str(before.get("config", "")), config.path):
        raise CliError(f"the daemon (pid {pid}) runs with {before.get('config')}, not "
                       f"{config.path}: reload it with that file")
    generation = int(before.get("generation", 0)) if before is not None else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CliError(f"the daemon (pid {pid}) has just exited", EXIT_NOT_RUNNING) from None
    except PermissionError:
        raise CliError(f"not allowed to signal the daemon (pid {pid}): run this as the user "
                       "mailkeep runs as, or as root") from None
    status = _wait(config, pid, generation, reading.sha256, args.timeout)
    return _report(status, pid)


def find_daemon(config: Config) -> int:
    """The pid of the daemon serving this data_dir; CliError when there is none."""
    from mailkeep.relay.queue_admin import QueueError, daemon_state  # noqa: PLC0415
    from mailkeep.relay.spool import Spool  # noqa: PLC0415

    path = config.pid_path
    try:
        pid = read_pid(path)
    except PermissionError:
        raise CliError(f"cannot read {path}: permission denied (run this as the user mailkeep "
                       "runs as, or as root)") from None
    try:
        state = daemon_state(Spool(config.data_dir / "spool"))
    except QueueError as exc:
        raise CliError(str(exc)) from None
    if pid is None:
        hint = (f" (a daemon holds the spool's lock as pid {state.pid}, but did not write "
                "its pid file: started by an older mailkeep? restart it)"
                if state.running else "")
        raise CliError(f"mailkeep is not running for {config.path}: no pid file {path}{hint}",
                       EXIT_NOT_RUNNING)
    if not state.running:
        raise CliError(f"mailkeep is not running for {config.path}: {path} names pid {pid}, "
                       "which does not hold the spool's lock (a stale pid file, left by a "
                       "crash; start the daemon with `mailkeep serve`)", EXIT_NOT_RUNNING)
    if state.pid is not None and state.pid != pid:
        raise CliError(f"{path} names pid {pid}, but pid {state.pid} holds the spool's lock: "
                       "not signalling either (a stale pid file?)", EXIT_NOT_RUNNING)
    return pid


def _status_of(config: Config, pid: int) -> dict[str, Any] | None:
    try:
        status = read_status(config.data_dir)
    except PermissionError:
        raise CliError(f"cannot read the daemon's reload status in {config.data_dir}: "
                       "permission denied (run this as the user mailkeep runs as, or as "
                       "root)") from None
    return status if status is not None and status.get("pid") == pid else None


def _same_file(text: str, path: Path) -> bool:
    if not text or Path(text) == path:
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(text, path)
    return False


def _wait(config: Config, pid: int, generation: int, sha256: str,
          timeout: float) -> dict[str, Any]:
    """The daemon's status for the first reload after ours that read this version of the
    file. A reload already under way when we signalled (it read the file earlier) is
    followed by another, for our signal."""
    deadline = time.monotonic() + timeout
    other: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        status = _status_of(config, pid)
        if status is not None and int(status.get("generation", 0)) > generation:
            if status.get("sha256") == sha256:
                return status
            other = status
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise CliError(f"the daemon (pid {pid}) exited during the reload: see its log",
                           EXIT_NOT_RUNNING) from None
        except PermissionError:
            pass  # it exists; signalling it worked a moment ago
        time.sleep(POLL_INTERVAL)
    if other is not None:
        print(f"note: {config.path} changed while the daemon read it; its outcome for the "
              "version it read:", file=sys.stderr)
        return other
    raise CliError(f"no answer from the daemon (pid {pid}) within {timeout:g} s: see its log "
                   "(the reload may still complete)", EXIT_TEMPFAIL)


def _report(status: dict[str, Any], pid: int) -> int:
    generation = status.get("generation")
    for warning in status.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if status.get("status") == "applied":
        changes = status.get("changes", [])
        print(f"reload {generation} applied by the daemon (pid {pid}): "
              f"{len(changes) or 'no'} change(s)")
        for line in changes:
            print(f"  {line}")
        return 0
    errors = status.get("errors", [])
    print(f"reload {generation} refused by the daemon (pid {pid}): {len(errors)} problem(s); "
          "it keeps running with its previous configuration:", file=sys.stderr)
    for error in errors:
        print(f"  {error}", file=sys.stderr)
    return 1
