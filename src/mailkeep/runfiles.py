"""The files through which the command line finds the running daemon and hears from it.

* the pid file (`pid_file`, by default DATA_DIR/mailkeep.pid): the pid of `mailkeep serve`
  (0644), written once the daemon handles SIGHUP and removed at a clean stop. It is not
  believed alone: the daemon also holds the spool's lock (relay/spool.py, an flock the
  kernel lets go when the process dies), and a pid file whose process does not hold the
  lock is stale (a crash, or the pid reused since).
* the ready file of `serve --ready-file PATH` (tests, scripts): the pid and the bound address
  of every listener, as JSON, rewritten after each reload that applies.
* DATA_DIR/reload-status.json: the outcome of the daemon's last reload attempt (0600: it quotes the
  configuration's problems), with a generation counter that `mailkeep reload` waits on.
  Generation 0 is written at start.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from mailkeep.fsmodes import PRIVATE_FILE, PUBLIC_FILE, write_file

STATUS_FILE = "reload-status.json"


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_file(tmp, data, mode)
    os.replace(tmp, path)


def write_pid(path: Path) -> None:
    _replace(path, f"{os.getpid()}\n".encode("ascii"), PUBLIC_FILE)


def remove_pid(path: Path) -> None:
    """Remove the pid file if it is still ours (a newer daemon may have written its own)."""
    if read_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()


def read_pid(path: Path) -> int | None:
    """The pid in the file; None when there is no file or it holds no pid. PermissionError
    is left to the caller (it says who may run the command)."""
    try:
        # Bytes decoded without a codec lookup: after run_as, importing an encodings module
        # may no longer be possible (the interpreter's folder may be root's).
        text = path.read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, IsADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def write_status(data_dir: Path, status: dict[str, Any]) -> None:
    _replace(status_path(data_dir), json.dumps(status, indent=1).encode("utf-8") + b"\n",
             PRIVATE_FILE)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The last status written, or None (no file yet, or one being replaced)."""
    try:
        data = json.loads(status_path(data_dir).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_ready_file(path: Path, bound: dict[str, list[str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "listeners": bound}))
    os.replace(tmp, path)
