"""A real PostgreSQL (Debian package postgresql) on loopback, as an unprivileged cluster.

initdb and postgres refuse to run as root, so under root (CI) they run as `nobody` in a
temporary directory that user owns. Password authentication (scram-sha-256) over TCP, as a
production DSN would use. Started once per test session (a second or two); each test gets
its own schema (search_path in the DSN), so tests never see each other's rows.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 30.0
_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _bin(name: str) -> str | None:
    for d in _BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


def available() -> str | None:
    for name in ("initdb", "postgres"):
        if _bin(name) is None:
            return f"{name} missing (Debian package postgresql; scripts/check.sh installs it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Postgres:
    root: Path
    port: int
    password: str
    proc: subprocess.Popen[bytes]

    def dsn(self, database: str = "postgres", schema: str | None = None) -> str:
        tail = f"?search_path={schema}" if schema else ""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}{tail}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        """Stop at once (the "database is down" tests)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(15)


def start_postgres() -> Postgres:
    initdb, postgres = _bin("initdb"), _bin("postgres")
    assert initdb and postgres
    as_root = os.geteuid() == 0
    # Under root the cluster belongs to `nobody`, who must be able to reach it: /tmp, not a
    # TMPDIR that may sit under root's private home.
    root = Path(tempfile.mkdtemp(prefix="mailkeep-pg-", dir="/tmp" if as_root else None))
    user: str | None = None
    if as_root:
        user = "nobody"
        entry = pwd.getpwnam(user)
        os.chmod(root, 0o700)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    password = secrets.token_urlsafe(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if user:
        os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
    env = {**os.environ, "LC_ALL": "C", "HOME": str(root)}
    subprocess.run([initdb, "-D", str(root / "data"), "-U", "postgres", "--auth=scram-sha-256",
                    f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, timeout=120, user=user, env=env, cwd=root)
    port = free_port()
    log = open(root / "postgres.log", "wb")  # noqa: SIM115
    if user:
        os.chown(root / "postgres.log", pwd.getpwnam(user).pw_uid, -1)
    proc = subprocess.Popen(
        [postgres, "-D", str(root / "data"), "-h", "127.0.0.1", "-p", str(port),
         "-k", str(root), "-c", "fsync=off", "-c", "synchronous_commit=off",
         "-c", "full_page_writes=off", "-c", "shared_buffers=16MB", "-c", "max_connections=60"],
        stdout=log, stderr=subprocess.STDOUT, user=user, env=env, cwd=root)
    log.close()
    server = Postgres(root, port, password, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            text = (root / "postgres.log").read_text(errors="replace")
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"postgres exited: {text[-2000:]}")
        if (root / "data" / "postmaster.pid").exists() and \
                "ready to accept connections" in (root / "postgres.log").read_text(
                    errors="replace"):
            return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("postgres did not become ready")
        time.sleep(0.05)
