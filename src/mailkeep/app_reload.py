"""Live reload: the whole configuration re-read and applied without dropping a session.

SIGHUP (which `mailkeep reload` sends) -> Reloader.request(): one reload at a time; a request
arriving during one runs another after it. Each reads and checks the file in a thread, then
calls Daemon.apply(new), which a multi-process mode would call in each worker:

1. stage, in a thread: every certificate into fresh TLS contexts, a new directory backend
   if [directory] changed, the DKIM keys. Nothing that runs is touched; any problem refuses
   the reload and the running configuration stays as it is.
2. bind, on the loop: a socket for each new listening address (an address open now keeps its
   socket, so nothing is refused in between). A failure refuses the reload and closes what
   was bound.
3. commit, on the loop and without awaiting, so no connection sees half of it: the limits go
   into the security objects (their counters carry on), the services are swapped, listeners
   kept are reconfigured for new connections, new ones start accepting, dropped ones stop
   (sessions they accepted finish normally).

Keys that cannot change while running (config/diff.py RESTART_ONLY) keep their old values,
with a warning. Every attempt ends with one log line per change, a summary, and the status
file that `mailkeep reload` waits for (runfiles.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.resolver

# Imported now, before run_as gives up root: config/check.py imports these lazily (for the
# command line's start-up time), and once unprivileged the interpreter's own folder may be
# unreadable, so a first import during a reload could fail.
import mailkeep.directory.file
import mailkeep.relay.dkim_admin
import mailkeep.tls.inventory  # noqa: F401
from mailkeep.config.check import problems as check_problems
from mailkeep.config.diff import (
    SocketPlan,
    effective,
    listener_changes,
    plan_sockets,
    restart_only_changes,
    setting_changes,
)
from mailkeep.config.exposure import admin_exposure_warnings
from mailkeep.config.load import ConfigReading, read_config
from mailkeep.config.model import BindAddress, Config, ListenerConfig
from mailkeep.directory.base import DirectoryError, UserDirectory, load_directory
from mailkeep.relay.authdns import NO_INBOUND_RESOLVER, inbound_resolver
from mailkeep.relay.dkim import DkimError, DkimKey
from mailkeep.runfiles import write_ready_file, write_status
from mailkeep.security.descriptors import connection_capacity
from mailkeep.server.auth import VERIFY_TIMEOUT_SECONDS
from mailkeep.server.listener import Listener, bind_hint, bind_socket
from mailkeep.tls.context import TlsContexts
from mailkeep.tls.fronts import load_fronts

if TYPE_CHECKING:
    from mailkeep.app import Daemon

log = logging.getLogger("mailkeep")

# A replaced directory backend is closed once the logins begun on it are over: each waits
# at most VERIFY_TIMEOUT_SECONDS for its answer (server/auth.py); twice that is ample.
DIRECTORY_RETIRE_SECONDS = 2 * VERIFY_TIMEOUT_SECONDS


@dataclass
class ReloadReport:
    """One reload attempt: refused when there are errors (nothing was changed then)."""

    generation: int
    config: Path
    sha256: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return not self.errors

    def status(self, listeners: dict[str, list[str]]) -> dict[str, Any]:
        return {"pid": os.getpid(), "generation": self.generation,
                "status": "applied" if self.applied else "refused",
                "config": str(self.config), "sha256": self.sha256, "errors": self.errors,
                "warnings": self.warnings, "changes": self.changes, "listeners": listeners,
                "time": time.time()}


class Reloader:
    """SIGHUP's side: one reload at a time, its outcome logged and written for the CLI."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.generation = 0
        self.last: ReloadReport | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._retiring: set[asyncio.Task[None]] = set()

    async def started(self) -> None:
        """Generation 0: the daemon runs this configuration (read by `mailkeep reload`)."""
        self.last = ReloadReport(0, self.daemon.config.path)
        await self._write_status(self.last, "started")

    def request(self) -> None:
        if self._stopping():
            return
        if self._task is not None and not self._task.done():
            self._again = True
            log.info("reload requested during a reload: another follows it")
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mailkeep-reload")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def retire(self, directory: UserDirectory) -> None:
        """A directory backend replaced by a reload: closed once its logins are over."""
        task = asyncio.get_running_loop().create_task(_retire(directory))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def retire_now(self) -> None:
        """Shutdown: close the replaced directories without waiting any longer."""
        tasks = list(self._retiring)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _stopping(self) -> bool:
        services = self.daemon.services
        return services is None or services.stopping

    async def _run(self) -> None:
        while True:
            self._again = False
            await self.reload()
            if not self._again or self._stopping():
                return

    async def reload(self) -> ReloadReport:
        """Read the daemon's configuration file again and apply it (or refuse it)."""
        daemon = self.daemon
        self.generation += 1
        path = daemon.config.path
        log.info("reload %d: reading %s", self.generation, path)
        reading = await asyncio.to_thread(_read, path)
        report = ReloadReport(self.generation, path, reading.sha256)
        if reading.ok:
            assert reading.config is not None
            try:
                report.errors = await daemon.apply(reading.config, report)
            except Exception:
                log.exception("reload %d failed", self.generation)
                report.errors = ["mailkeep could not apply the configuration (an internal "
                                 "error, logged by the daemon)"]
        else:
            report.errors = reading.problems
        if not report.applied:
            # As SIGHUP always did: the running configuration's certificates are re-read
            # (an applied reload has just loaded them afresh).
            await asyncio.to_thread(daemon.tls.reload, force=True)
        if daemon.acme is not None:
            daemon.acme.check_now()
        for error in report.errors:
            log.error("reload %d refused: %s", self.generation, error)
        if report.applied:
            log.info("reload %d applied from %s: %d change(s), %d warning(s)",
                     self.generation, path, len(report.changes), len(report.warnings))
        else:
            log.error("reload %d refused: %d problem(s); the running configuration is "
                      "unchanged", self.generation, len(report.errors))
        self.last = report
        await self._write_status(report)
        return report

    async def _write_status(self, report: ReloadReport, status: str | None = None) -> None:
        data = report.status(self.daemon.bound)
        if status is not None:
            data["status"] = status
        if self.daemon.link is not None:
            # A worker answers for the daemon `mailkeep reload` signalled: its supervisor.
            # (Every worker writes the same outcome of the same file; the last one stays.)
            data["pid"], data["worker"] = self.daemon.link.parent, os.getpid()
        try:
            await asyncio.to_thread(write_status, self.daemon.config.data_dir, data)
        except OSError as exc:
            log.warning("cannot write the reload status in %s: %s (`mailkeep reload` will "
                        "not see the outcome)", self.daemon.config.data_dir, exc)


def _read(path: Path) -> ConfigReading:
    """The file's problems, and when there are some, those of its certificates and keys too
    (every problem in one report)."""
    reading = read_config(path)
    if not reading.ok:
        reading = ConfigReading(reading.path, reading.config,
                                check_problems(reading, directory=False), reading.sha256)
    return reading


# -- Daemon.apply ------------------------------------------------------------------------------

Fresh = list[tuple[ListenerConfig, int, socket.socket]]  # new sockets: listener, bind index


@dataclass
class _Change:
    """One reload on its way: what was staged in the thread, the socket plan, the report."""

    running: Config
    new: Config
    report: ReloadReport
    contexts: TlsContexts
    fronts: dict[str, ssl.SSLContext]
    directory: UserDirectory | None     # None: [directory] unchanged
    dkim_keys: dict[str, DkimKey]
    resolver: dns.resolver.Resolver | None  # the inbound checks' new one (None: keep, or none)
    problems: list[str]
    plan: SocketPlan = field(default_factory=SocketPlan)
    managed: list[Listener] = field(default_factory=list)  # the sockets the plan indexes
    fresh: Fresh = field(default_factory=list)


def _stage(running: Config, new: Config, tls: TlsContexts, report: ReloadReport) -> _Change:
    """Everything that reads files or builds backends, in a thread, touching nothing live."""
    contexts = tls.successor(new.hostname)
    with contexts.files_lock:  # an ACME renewal never shows us a new key beside an old cert
        fronts, problems = load_fronts(new, contexts)
    directory = None
    if new.directory != running.directory:
        try:
            directory = load_directory(new.directory.backend, new.directory.options,
                                       new.directory.base_dir)
        except DirectoryError as exc:
            problems.append(str(exc))
    resolver: dns.resolver.Resolver | None = None
    if _has_smtp(new) and (not _has_smtp(running) or _dns(new) != _dns(running)):
        try:
            resolver = inbound_resolver([(s.host, s.port) for s in new.delivery.dns_servers],
                                        new.delivery.dns_timeout)
        except dns.resolver.NoResolverConfiguration:
            problems.append(NO_INBOUND_RESOLVER)
    keys: dict[str, DkimKey] = {}
    for domain, setting in new.dkim.items():
        try:
            keys[domain] = DkimKey.load(setting.key, domain, setting.selector)
        except (OSError, DkimError) as exc:
            problems.append(f'dkim.domains."{domain}".key: {setting.key}: {exc}')
    return _Change(running, new, report, contexts, fronts, directory, keys, resolver, problems)


async def apply(daemon: Daemon, config: Config, report: ReloadReport) -> list[str]:
    """Daemon.apply: see the module's docstring. Returns the problems (none: applied)."""
    if daemon.services is None or daemon.services.stopping:
        return ["the daemon is stopping"]
    running = daemon.config
    report.warnings += restart_only_changes(running, config)
    said = admin_exposure_warnings(running)
    report.warnings += [w for w in admin_exposure_warnings(config) if w not in said]
    change = await asyncio.to_thread(_stage, running, effective(running, config), daemon.tls,
                                     report)
    current: list[tuple[str, BindAddress]] = []
    for listener in daemon.listeners:
        if listener.bind is not None:  # None: a socket that no configured address names
            change.managed.append(listener)
            current.append((listener.config.name, listener.bind))
    change.plan = plan_sockets(current, change.new.listeners)
    if not change.problems:
        change.fresh, bind_problems = _bind(daemon, change.plan, change.managed)
        change.problems += bind_problems
    if change.problems or daemon.services.stopping:
        if change.directory is not None:
            await change.directory.close()
        for _lst, _i, sock in change.fresh:
            sock.close()
        return change.problems or ["the daemon is stopping"]
    _commit(daemon, change)
    for line in report.changes:
        log.info("reload: %s", line)
    for warning in report.warnings:
        log.warning("reload: %s", warning)
    if daemon.ready_file is not None:
        # Applied already: a ready file that cannot be rewritten (its folder is root's and
        # run_as gave root up) is worth a warning, never a refusal.
        try:
            await asyncio.to_thread(write_ready_file, daemon.ready_file, daemon.bound)
        except OSError as exc:
            warning = f"cannot rewrite the ready file {daemon.ready_file}: {exc.strerror or exc}"
            log.warning("reload: %s", warning)
            report.warnings.append(warning)
    return []


def _bind(daemon: Daemon, plan: SocketPlan, managed: list[Listener]) -> tuple[Fresh, list[str]]:
    """A socket for every new address, or every reason why not (and none kept)."""
    fresh: Fresh = []
    problems: list[str] = []
    closing = [managed[i] for i in plan.close]
    for lst, i in plan.bind:
        addr = lst.bind[i]
        try:
            sock = bind_socket(addr, reuse_port=daemon.link is not None)  # workers/
        except OSError as exc:
            problems.append(f"listeners.{lst.name}.bind[{i}]: {addr}: "
                            f"{_bind_problem(daemon, exc, addr, closing)}")
            continue
        fresh.append((lst, i, sock))
    if problems:
        for _lst, _i, sock in fresh:
            sock.close()
        return [], problems
    return fresh, []


def _bind_problem(daemon: Daemon, exc: OSError, addr: BindAddress,
                  closing: list[Listener]) -> str:
    if exc.errno == errno.EACCES and addr.port < 1024 and daemon.identity is not None:
        return (f"permission denied: ports below 1024 are bound at start, before mailkeep "
                f"gives up root to run as {daemon.identity.user} (run_as); restart mailkeep "
                "to listen here")
    if exc.errno == errno.EADDRINUSE:
        mine = [f"{lst.config.name} on {lst.address}" for lst in closing
                if lst.bind is not None and lst.bind.port == addr.port]
        if mine:
            return (f"address in use by this daemon's own listener {mine[0]}, which this "
                    "reload closes: a port cannot move to an overlapping address while "
                    "running; restart mailkeep, or reload twice (first without the old "
                    "address, then with the new one)")
    return bind_hint(exc, addr)


def _commit(daemon: Daemon, change: _Change) -> None:
    """Swap it all in. No awaits: no connection or session runs in between."""
    running, new, report = change.running, change.new, change.report
    services = daemon.services
    assert services is not None
    report.changes += setting_changes(running, new)
    security = new.security
    capacity = connection_capacity(security.max_connections, daemon.open_files,
                                   security.descriptor_reserve)
    if capacity < security.max_connections and capacity != services.budget.capacity:
        report.warnings.append(f"security.max_connections: lowered from "
                               f"{security.max_connections} to {capacity} to fit the open-files "
                               f"limit ({daemon.open_files})")
    daemon.config = new
    report.changes += services.reconfigure(new, capacity)
    if change.directory is not None:
        retired, services.directory = services.directory, change.directory
        daemon.directory = change.directory  # the one shutdown closes
        daemon.reloader.retire(retired)
    services.dkim_keys = change.dkim_keys
    if not _has_smtp(new):
        services.auth_resolver = None
    elif change.resolver is not None:
        services.auth_resolver = change.resolver
    services.metrics.declare_listeners((lst.name, lst.protocol, lst.tls)
                                       for lst in new.listeners)
    services.metrics.sources.certificates = change.contexts.served
    if daemon.runner is not None:
        daemon.runner.reconfigure(new, services.directory)
    daemon.tls = change.contexts
    if daemon.acme is not None:
        daemon.acme.use_contexts(change.contexts)
    daemon.forget_mail_setup()
    if new.log_level != running.log_level:
        if daemon.log_level_pinned:
            report.warnings.append(f"log_level: `serve --log-level` was given: the log "
                                   f"level stays as it said, not {new.log_level}")
        else:
            logging.getLogger().setLevel(getattr(logging, new.log_level.upper()))
    _swap_listeners(daemon, change)


def _has_smtp(config: Config) -> bool:
    return any(lst.protocol == "smtp" for lst in config.listeners)


def _dns(config: Config) -> tuple[object, ...]:
    """What the inbound checks' resolver is made of."""
    return (config.delivery.dns_servers, config.delivery.dns_timeout)


def _swap_listeners(daemon: Daemon, change: _Change) -> None:
    running, new, report = change.running, change.new, change.report
    plan, managed, fronts = change.plan, change.managed, change.fronts
    by_place: dict[tuple[str, int], Listener] = {}
    for index, (lst, i) in plan.keep.items():
        listener = managed[index]
        factory, refusal = daemon.session_factory(lst, fronts[lst.name])
        listener.reconfigure(lst, context=fronts[lst.name], factory=factory,
                             refusal_line=refusal)
        listener.bind = lst.bind[i]
        by_place[(lst.name, i)] = listener
    for lst, i, sock in change.fresh:
        listener = daemon.make_listener(lst, sock, fronts[lst.name], lst.bind[i])
        listener.start()
        by_place[(lst.name, i)] = listener
    # The new sockets have listened since they were bound (the kernel queued their clients):
    # a door that moved was open all along. The old addresses refuse from now on.
    for index in plan.close:
        managed[index].stop_accepting()
    before = dict(daemon.bound)
    ordered = [by_place[(lst.name, i)] for lst in new.listeners for i in range(len(lst.bind))]
    others = [lst for lst in daemon.listeners if lst.bind is None]
    daemon.listeners = others + ordered
    daemon.bound = {}
    for listener in ordered:
        daemon.bound.setdefault(listener.config.name, []).append(listener.address)
    old_by_name = {lst.name: lst for lst in running.listeners}
    for lst in new.listeners:
        now = daemon.bound.get(lst.name, [])
        previous = old_by_name.get(lst.name)
        if previous is None:
            report.changes.append(f"listener {lst.name} added: {lst.protocol} ({lst.tls} TLS) "
                                  f"on {', '.join(now)}")
        else:
            if sorted(before.get(lst.name, [])) != sorted(now):
                report.changes.append(f"listener {lst.name} rebound: "
                                      f"{', '.join(before.get(lst.name, []))} -> "
                                      f"{', '.join(now)}")
            changed = listener_changes(previous, lst)
            if changed:
                report.changes.append(f"listener {lst.name}: {', '.join(changed)} changed "
                                      "(for new connections)")
        if lst.tls == "none" and lst.is_smtp and (previous is None or previous.tls != "none"):
            report.warnings.append(f"listener {lst.name} accepts mail without TLS (tls = "
                                   f"\"none\"): only for legacy devices on "
                                   f"{', '.join(str(n) for n in lst.clients)}")
    for name in old_by_name:
        if name not in daemon.bound:
            report.changes.append(f"listener {name} removed: no longer accepting on "
                                  f"{', '.join(before.get(name, []))}; its open sessions "
                                  "finish normally")


async def _retire(directory: UserDirectory) -> None:
    try:
        await asyncio.sleep(DIRECTORY_RETIRE_SECONDS)
    finally:  # at shutdown (cancelled) too: its connections are closed either way
        with contextlib.suppress(Exception):
            await directory.close()

