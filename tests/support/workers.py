"""Which worker process serves a connection (`workers` > 1 daemons in tests).

The kernel spreads connections over the workers (SO_REUSEPORT); a test that needs a
connection on a given worker opens connections until one lands there. The serving process
is found from the outside: the server side of the TCP connection in /proc/net/tcp gives a
socket inode, and the worker holding that inode among its descriptors is the one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.support.daemon import RunningDaemon

T = TypeVar("T")
# Connections to open, at most, to find one on a given worker (the kernel's choice is a
# hash of the client's port: a few tries are enough; a bound, so a test cannot spin).
MAX_TRIES = 60
# A connection no worker holds after this long was refused and closed.
REFUSED_AFTER = 2.0


def worker_pids(d: RunningDaemon) -> list[int]:
    return [int(p) for p in json.loads((d.root / "ready.json").read_text())["workers"]]


def _server_inode(server_port: int, client_port: int) -> int | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.rsplit(":", 1)[1], 16) == server_port and \
                        int(remote.rsplit(":", 1)[1], 16) == client_port and int(fields[9]):
                    return int(fields[9])
    return None


def serving_pid(d: RunningDaemon, sock: socket.socket, timeout: float = 10.0) -> int:
    """The worker whose descriptor table holds the server side of `sock`'s connection."""
    pid = find_serving_pid(d, sock, timeout)
    if pid is None:
        raise AssertionError(f"no worker serves the connection from {sock.getsockname()}")
    return pid


def find_serving_pid(d: RunningDaemon, sock: socket.socket, timeout: float) -> int | None:
    """serving_pid(), or None when no worker holds it (refused and closed at accept)."""
    client_port = sock.getsockname()[1]
    server_port = sock.getpeername()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inode = _server_inode(server_port, client_port)
        if inode:
            wanted = f"socket:[{inode}]"
            for pid in worker_pids(d):
                fds = Path(f"/proc/{pid}/fd")
                with contextlib.suppress(OSError):
                    for fd in os.listdir(fds):
                        with contextlib.suppress(OSError):
                            if os.readlink(fds / fd) == wanted:
                                return pid
        time.sleep(0.02)
    return None


def on_worker(d: RunningDaemon, pid: int, connect: Callable[[], T],
              sock_of: Callable[[T], socket.socket], close: Callable[[T], object]) -> T:
    """A connection (made by `connect`) that worker `pid` serves."""
    for _ in range(MAX_TRIES):
        conn = connect()
        # None: refused at accept (a test at a limit: the slots of the connections closed
        # while looking come back a moment later); try again.
        if find_serving_pid(d, sock_of(conn), REFUSED_AFTER) == pid:
            return conn
        close(conn)
    raise AssertionError(f"no connection landed on worker {pid} in {MAX_TRIES} tries")
