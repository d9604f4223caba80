"""The admin listener: metrics, liveness and readiness over HTTP (server/http.py).

    [listeners.admin]
    protocol = "admin"
    tls = "none"                  # the default; "implicit" is HTTPS with the listener's cert
    bind = ["127.0.0.1:9587"]

The routes are proto/admin_routes.py; this module computes what they report. Nothing here
changes the daemon, and nothing asks for a password: bind it to loopback (the documented
default; a warning is logged otherwise) or keep it behind a firewall.

Readiness is checked on demand, each check bounded by READINESS_CHECK_TIMEOUT, and the
checks of simultaneous requests are shared (a burst of probes starts one set of checks):

* every configured listener address is bound and accepting;
* the Maildir root and the spool are writable (a probe file created and removed, in a
  thread: the event loop never waits on the disk);
* the user directory answers its backend's cheap check (CheckedDirectory: the users file
  readable, SELECT 1, an LDAP search as the service account).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from mailkeep.config.model import ListenerConfig
from mailkeep.directory.base import CheckedDirectory, DirectoryUnavailable
from mailkeep.fsmodes import create_file, make_private_dirs
from mailkeep.proto import admin_routes
from mailkeep.proto.admin_routes import Endpoint
from mailkeep.proto.http import Answer, Request
from mailkeep.server import http
from mailkeep.server.http import HttpSession
from mailkeep.server.listener import Listener, Slot
from mailkeep.server.services import Services

log = logging.getLogger("mailkeep.admin")

# Each readiness check answers within this many seconds or counts as failed: a disk or a
# directory server slower than that is not ready to serve mail either. Kubernetes' probes
# wait 1 s by default (timeoutSeconds): give the readiness probe a few seconds.
READINESS_CHECK_TIMEOUT = 3.0
PROBE_PREFIX = ".mailkeep-ready-"

refusal_line = http.refusal_line


def probe_writable(folder: Path) -> None:
    """Blocking: create (mkdir -p, like delivery would), write and remove a file in
    `folder`. OSError when it cannot be done."""
    make_private_dirs(folder)
    path = folder / f"{PROBE_PREFIX}{os.getpid()}-{threading.get_ident()}"
    fd = create_file(path, os.O_WRONLY | os.O_EXCL)
    try:
        os.write(fd, b"ready\n")
    finally:
        os.close(fd)
        path.unlink()


class Readiness:
    """What /readyz reports: the failed checks, one line each (empty: ready)."""

    def __init__(self, services: Services, listeners: Callable[[], Sequence[Listener]],
                 spool_root: Path | None) -> None:
        self.services = services
        self.listeners = listeners
        self.spool_root = spool_root
        self._running: asyncio.Task[list[str]] | None = None

    async def problems(self) -> list[str]:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._check())
        # Shielded: a client that goes away does not cancel the checks others wait for.
        return list(await asyncio.shield(self._running))

    async def _check(self) -> list[str]:
        problems = self._listener_problems()
        if self.services.stopping:
            problems.insert(0, "shutting down")
        config = self.services.config
        folders = [("mail_dir", config.maildirs)]
        if self.spool_root is not None:
            folders.append(("spool", self.spool_root))
        found = await asyncio.gather(*(self._writable(key, path) for key, path in folders),
                                     self._directory())
        return problems + [p for p in found if p is not None]

    def _listener_problems(self) -> list[str]:
        serving: dict[str, int] = {}
        for listener in self.listeners():
            if listener.serving:
                serving[listener.config.name] = serving.get(listener.config.name, 0) + 1
        problems: list[str] = []
        for lst in self.services.config.listeners:
            count = serving.get(lst.name, 0)
            if count < len(lst.bind):
                problems.append(f"listeners.{lst.name}: {count} of {len(lst.bind)} "
                                "addresses bound and accepting")
        return problems

    async def _writable(self, key: str, folder: Path) -> str | None:
        try:
            async with asyncio.timeout(READINESS_CHECK_TIMEOUT):
                await asyncio.to_thread(probe_writable, folder)
        except TimeoutError:
            return f"{key}: {folder}: no answer from the disk within " \
                   f"{READINESS_CHECK_TIMEOUT:g} s"
        except OSError as exc:
            return f"{key}: {folder} is not writable: {exc.strerror or exc}"
        return None

    async def _directory(self) -> str | None:
        directory = self.services.directory
        if not isinstance(directory, CheckedDirectory):
            return None
        try:
            async with asyncio.timeout(READINESS_CHECK_TIMEOUT):
                await directory.check()
        except TimeoutError:
            return f"directory: no answer within {READINESS_CHECK_TIMEOUT:g} s"
        except DirectoryUnavailable as exc:
            return f"directory: {exc}"
        return None


class AdminSession(HttpSession):
    """One HTTP connection to the admin site."""

    log = log

    def __init__(self, services: Services, listener: ListenerConfig,
                 tls_context: ssl.SSLContext, slot: Slot, readiness: Readiness) -> None:
        super().__init__(services, listener, tls_context, slot)
        self.readiness = readiness

    async def respond(self, request: Request) -> Answer:
        found = admin_routes.route(request.method, request.target)
        if isinstance(found, Answer):
            return found
        if found is Endpoint.HEALTH:
            return admin_routes.health()
        if found is Endpoint.READY:
            problems = await self.readiness.problems()
            if problems:
                self.log.info("conn=%s not ready: %s", self.conn_id, "; ".join(problems))
            return admin_routes.readiness(problems)
        # Rendered here, on the loop: the state gauges read the sessions and the queue.
        body, content_type = await self.services.metrics.render_all(request.header("accept"))
        return admin_routes.metrics(body, content_type)


def session_factory(services: Services, listener: ListenerConfig, context: ssl.SSLContext,
                    readiness: Readiness) -> Callable[[Slot], asyncio.Protocol]:
    """One StreamReaderProtocol per accepted connection (server/listener.py)."""
    return http.stream_factory(
        lambda slot: AdminSession(services, listener, context, slot, readiness))
