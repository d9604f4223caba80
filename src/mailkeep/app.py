"""Composition root: config -> tls -> directory -> store -> listeners -> run.

The only module that names concrete backends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import dns.resolver

from mailkeep import app_reload, runfiles
from mailkeep.config.exposure import admin_exposure_warnings
from mailkeep.config.model import BindAddress, Config, ListenerConfig
from mailkeep.directory.base import DirectoryError, UserDirectory, load_directory
from mailkeep.observe.metrics import Metrics, ScrapeSources
from mailkeep.observe.shared import SharedFigures
from mailkeep.proto.autoconfig import MailSetup
from mailkeep.relay.authdns import NO_INBOUND_RESOLVER, inbound_resolver
from mailkeep.relay.dkim import DkimError, DkimKey
from mailkeep.relay.runner import DeliveryRunner
from mailkeep.relay.spool import Spool, SpoolBusy
from mailkeep.runfiles import write_ready_file
from mailkeep.security import AuthThrottle, ConnectionBudget, InputBudget, SessionCounter
from mailkeep.security.descriptors import connection_capacity, raise_open_files_limit
from mailkeep.security.privileges import (
    Identity,
    PrivilegeError,
    drop_to,
    hand_over,
    readable_by,
    running_as_root,
)
from mailkeep.security.rate import RateLimiter
from mailkeep.server import admin, autoconfig, imap, pop3, smtp
from mailkeep.server.listener import Listener, ProtocolFactory, bind_hint, bind_socket
from mailkeep.server.services import Services
from mailkeep.store.maildir import MaildirStore
from mailkeep.tls.context import TlsContexts
from mailkeep.tls.fronts import load_fronts
from mailkeep.tls.renewal import AcmeManager
from mailkeep.workers.link import WorkerLink

log = logging.getLogger("mailkeep")

# How often a worker checks that its supervisor is still there.
PARENT_CHECK_INTERVAL = 1.0
# How long a thread waiting for the GIL lets the holder run before it asks for it (CPython's
# default is 5 ms). The event loop holds it through pure-Python work (a SEARCH slice, a
# parse); every system call of a worker thread (password hashing, fsync, a file read) then
# waits up to that long for the GIL back, and a login or SELECT made of a few dozen of them
# waited over a second while another session's SEARCH ran: measured with
# tests/integration/test_imap_hardening.py's hostile SEARCH, LOGIN 0.45 -> 0.06 s, SELECT
# 1.25 -> 0.06 s, a new session's LOGIN + NOOP 0.56 -> 0.11 s at 1 ms, the SEARCH itself
# no slower (4.0 s). The IMAP mix's throughput was the same at 0.5, 1, 5 and 50 ms
# (docs/benchmarks.md, fourth pass).
GIL_SWITCH_SECONDS = 0.001


class StartupError(Exception):
    """The daemon cannot start: every reason, each naming the config key and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class Daemon:
    def __init__(self, config: Config, link: WorkerLink | None = None) -> None:
        self.config = config
        # One of several workers (workers/): counters shared through the parent.
        self.link = link
        self.tls = TlsContexts(config.hostname)
        self.listeners: list[Listener] = []
        self.bound: dict[str, list[str]] = {}
        self.services: Services | None = None
        self.store: MaildirStore | None = None
        self.directory: UserDirectory | None = None
        self.runner: DeliveryRunner | None = None
        self.ready_file: Path | None = None  # where `serve --ready-file` wants the ports
        self._stop = asyncio.Event()
        self._reload_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._share_task: asyncio.Task[None] | None = None
        self._mail_setup: MailSetup | None = None
        self.acme: AcmeManager | None = None
        self.identity: Identity | None = None  # who the daemon became after binding (run_as)
        self.open_files = 0                     # the open-files limit, sizing the connections
        self.log_level_pinned = False           # `serve --log-level` wins over log_level
        self.reloader = app_reload.Reloader(self)
        self._apply_lock = asyncio.Lock()

    def mail_setup(self) -> MailSetup:
        """What autoconfig advertises, built on first use: by then every listener is bound,
        so doors bound to port 0 are advertised with their real ports."""
        if self._mail_setup is None:
            self._mail_setup = autoconfig.mail_setup(self.config, self.bound)
        return self._mail_setup

    def load_tls(self) -> dict[str, ssl.SSLContext]:
        """Front contexts per listener; every certificate problem at once. The ACME
        certificate is a self-signed placeholder until issued."""
        tls, problems = self.config.tls, []
        if tls.acme is not None:
            self.acme = AcmeManager(tls.acme, self.tls)
            try:
                self.acme.ensure_placeholder(
                    self.config.hostname if tls.cert == tls.acme.cert else None)
            except OSError as exc:
                problems.append(f"tls.acme: cannot write to {tls.acme.state_dir}: {exc}")
        contexts, more = load_fronts(self.config, self.tls)
        if problems or more:
            raise StartupError(sorted(set(problems + more)))
        return contexts

    async def start(self) -> None:
        config = self.config
        try:
            identity = self._identity()
            root_problems: list[str] = []
        except StartupError as exc:
            identity, root_problems = None, exc.problems
        try:
            contexts = self.load_tls()
        except StartupError as exc:
            raise StartupError(root_problems + exc.problems) from None
        if root_problems:
            raise StartupError(root_problems)
        try:
            self.directory = load_directory(config.directory.backend, config.directory.options,
                                            config.directory.base_dir)
        except DirectoryError as exc:
            raise StartupError([str(exc)]) from None
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
            probe = config.data_dir / f".mailkeep-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StartupError([f"data_dir: {config.data_dir} is not writable: {exc.strerror}"]) \
                from None
        self.store = MaildirStore(config.data_dir, config.maildirs)
        metrics = Metrics()
        metrics.declare_listeners((lst.name, lst.protocol, lst.tls)
                                  for lst in config.listeners)
        self.store.on_error = metrics.store_error
        self.store.start_feed()
        removed = await asyncio.to_thread(self.store.clean_stale_tmp)
        if removed:
            log.info("removed %d stale files from Maildir tmp/ folders", removed)
        self.open_files = open_files = raise_open_files_limit()
        security = config.security
        capacity = connection_capacity(security.max_connections, open_files,
                                       security.descriptor_reserve)
        if capacity < security.max_connections:
            log.warning("security.max_connections lowered from %d to %d: the open-files "
                        "limit is %d and %d descriptors are kept for mail storage "
                        "(raise `ulimit -n` or lower security.max_connections)",
                        security.max_connections, capacity, open_files,
                        security.descriptor_reserve)
        budget = ConnectionBudget(security, capacity)
        throttle = AuthThrottle(security)
        sessions = SessionCounter(config.imap.max_connections_per_user,
                                  config.imap.max_connections_per_user_ip)
        rates = {lst.name: RateLimiter(lst.rate.count, lst.rate.seconds)
                 for lst in config.listeners if lst.rate is not None}
        if self.link is not None:
            budget, throttle, sessions, rates = self.link.shared(budget, throttle, sessions,
                                                                 rates)
        self.services = Services(
            config=config, directory=self.directory, store=self.store,
            throttle=throttle, budget=budget, imap_sessions=sessions,
            # Memory is per process: so is the budget of input held in it.
            input_budget=InputBudget(security.max_buffered_input),
            rate_limiters=rates,
            metrics=metrics,
        )
        await self._start_relay(self.services)
        assert self.runner is not None
        metrics.sources = ScrapeSources(
            sessions=self.services.open_sessions, idle=self.services.idle_sessions,
            queue=self.runner.size, certificates=self.tls.served)
        for warning in admin_exposure_warnings(config):
            log.warning("%s", warning)
        problems: list[str] = []
        for lst in config.listeners:
            for i, addr in enumerate(lst.bind):
                try:
                    sock = bind_socket(addr, reuse_port=self.link is not None)
                except OSError as exc:
                    problems.append(f"listeners.{lst.name}.bind[{i}]: {addr}: "
                                    f"{bind_hint(exc, addr)}")
                    continue
                listener = self.make_listener(lst, sock, contexts[lst.name], addr)
                self.listeners.append(listener)
                self.bound.setdefault(lst.name, []).append(listener.address)
                log.info("listening: %s %s (%s TLS) on %s", lst.name, lst.protocol, lst.tls,
                         listener.address)
        if problems:
            await self.close_servers()
            if self.runner is not None:
                await self.runner.stop(grace=0)  # and let go of the spool's lock
            raise StartupError(problems)
        if self.link is not None:
            self.link.ready(self.bound)  # the supervisor writes --ready-file
        elif self.ready_file is not None:
            # Written before any switch of user: its folder may be root's.
            write_ready_file(self.ready_file, self.bound)
        if identity is not None:
            await self._drop_privileges(identity)
            self.identity = identity
        for listener in self.listeners:
            listener.start()
        self._reload_task = asyncio.create_task(self._reload_loop())
        await self.reloader.started()
        if self.link is not None:
            self._watch_task = asyncio.create_task(self._watch_parent(self.link))
            if any(lst.protocol == "admin" for lst in config.listeners):
                # One /metrics for all workers (observe/shared.py); written as run_as.
                metrics.shared = SharedFigures(config.data_dir / "run" / "metrics")
                self._share_task = asyncio.create_task(metrics.share_forever())
        if self.acme is not None:
            self.acme.start([int(a.rsplit(":", 1)[1]) for lst in config.listeners
                             if lst.tls == "implicit" for a in self.bound.get(lst.name, [])])

    def _identity(self) -> Identity | None:
        """Root needs `run_as` (or `allow_root`); the user to become after binding."""
        config = self.config
        if not running_as_root():
            return None
        if config.run_as is None:
            if config.allow_root:
                log.warning("running as root (allow_root = true): every client session runs "
                            "with full privileges; set run_as = \"mailkeep\" instead")
                return None
            raise StartupError(["run_as: mailkeep will not keep running as root: set run_as "
                                "= \"mailkeep\" (a user to become once the ports are bound) "
                                "or, if you really mean it, allow_root = true"])
        try:
            return Identity.resolve(config.run_as)
        except PrivilegeError as exc:
            raise StartupError([str(exc)]) from None

    async def _drop_privileges(self, who: Identity) -> None:
        """Ports are bound: hand the writable files to `who` and become it."""
        config = self.config
        changed = await asyncio.to_thread(
            hand_over, [config.data_dir, config.maildirs],
            [config.data_dir / "spool"], who)
        if changed:
            log.info("handed %d files under %s to %s", changed, config.data_dir, who.user)
        unreadable = [p for p in {*(lst.key for lst in config.listeners),
                                  *(lst.cert for lst in config.listeners)}
                      if not readable_by(p, who)]
        for path in sorted(unreadable):
            log.warning("%s is not readable by %s: a renewed certificate will not be "
                        "loaded after the switch (chown or chgrp it)", path, who.user)
        try:
            drop_to(who)
        except PrivilegeError as exc:
            await self.close_servers()
            raise StartupError([str(exc)]) from None

    async def _start_relay(self, services: Services) -> None:
        """The spool and its delivery runner, DKIM keys, the inbound checks' resolver."""
        config = self.config
        problems: list[str] = []
        for domain, setting in config.dkim.items():
            try:
                services.dkim_keys[domain] = await asyncio.to_thread(
                    DkimKey.load, setting.key, domain, setting.selector)
            except (OSError, DkimError) as exc:
                problems.append(f'dkim.domains."{domain}".key: {setting.key}: {exc}')
        if problems:
            raise StartupError(problems)
        if any(lst.protocol == "smtp" for lst in config.listeners):
            # The inbound checks (SPF, DKIM, DMARC) ask the same servers as outbound delivery,
            # each on its own port, within the same `delivery.dns_timeout` per lookup; no
            # servers configured: the host's resolv.conf (read here, off the loop).
            delivery = config.delivery
            try:
                services.auth_resolver = await asyncio.to_thread(
                    inbound_resolver, [(s.host, s.port) for s in delivery.dns_servers],
                    delivery.dns_timeout)
            except dns.resolver.NoResolverConfiguration:
                raise StartupError([NO_INBOUND_RESOLVER]) from None
        for lst in config.listeners:
            if lst.tls == "none" and lst.is_smtp:
                log.warning("listener %s accepts mail without TLS (tls = \"none\"): only for "
                            "legacy devices on %s", lst.name,
                            ", ".join(str(n) for n in lst.clients))
        spool = Spool(config.data_dir / "spool")
        self.runner = services.runner = DeliveryRunner(config, spool, self.store_or_fail(),
                                                       services.directory,
                                                       metrics=services.metrics,
                                                       shared=self.link is not None)
        try:
            await self.runner.start()
        except SpoolBusy as exc:
            raise StartupError([f"data_dir: {exc}: another mailkeep daemon uses this "
                                "data_dir (one spool, one daemon); stop it first"]) from None
        except OSError as exc:
            raise StartupError([f"data_dir: the spool in {spool.root} cannot be used: "
                                f"{exc.strerror or exc}"]) from None

    def store_or_fail(self) -> MaildirStore:
        assert self.store is not None
        return self.store

    def session_factory(self, lst: ListenerConfig, context: ssl.SSLContext
                        ) -> tuple[ProtocolFactory, Callable[[str], bytes]]:
        """What a listener of `lst` makes of each connection, and its over-budget line."""
        services = self.services
        assert services is not None
        factory: ProtocolFactory
        refusal: Callable[[str], bytes]
        if lst.protocol == "pop3":
            factory, refusal = pop3.session_factory(services, lst, context), pop3.refusal_line
        elif lst.protocol == "imap":
            factory, refusal = imap.session_factory(services, lst, context), imap.refusal_line
        elif lst.protocol == "autoconfig":
            factory = autoconfig.session_factory(services, lst, context, self.mail_setup)
            refusal = autoconfig.refusal_line
        elif lst.protocol == "admin":
            readiness = admin.Readiness(services, lambda: self.listeners,
                                        self.runner.spool.root if self.runner else None)
            factory = admin.session_factory(services, lst, context, readiness)
            refusal = admin.refusal_line
        else:
            factory = smtp.session_factory(services, lst, context)
            refusal = functools.partial(smtp.refusal_line, self.config.hostname)
        return factory, refusal

    def make_listener(self, lst: ListenerConfig, sock: socket.socket, context: ssl.SSLContext,
                      bind: BindAddress | None = None) -> Listener:
        services = self.services
        assert services is not None
        factory, refusal = self.session_factory(lst, context)
        return Listener(services, lst, sock, context=context, factory=factory,
                        refusal_line=refusal, bind=bind)

    def forget_mail_setup(self) -> None:
        """The configuration changed: autoconfig builds what it advertises again."""
        self._mail_setup = None

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tls.reload_interval)
            await asyncio.to_thread(self.tls.reload)

    async def _watch_parent(self, link: WorkerLink) -> None:
        """A worker whose supervisor is gone stops (nobody would restart or reload it)."""
        while link.parent_alive():  # noqa: ASYNC110 (no event to wait for: a pid to poll)
            await asyncio.sleep(PARENT_CHECK_INTERVAL)
        log.error("worker %d: the supervisor is gone: stopping", os.getpid())
        self.request_stop()

    def reload(self) -> None:
        """SIGHUP: re-read the whole configuration and apply it (app_reload.py): refused
        with every problem when it is wrong. Certificates are re-read either way, and ACME
        looks at its certificate now (users files are re-read on change anyway)."""
        log.info("SIGHUP: reloading the configuration from %s", self.config.path)
        self.reloader.request()

    async def apply(self, config: Config,
                    report: app_reload.ReloadReport | None = None) -> list[str]:
        """Make `config` the running configuration without dropping a session; the problems
        that refuse it (nothing changed then). Keys that need a restart keep their values
        and are warned about. A multi-process mode would call this in each worker."""
        if report is None:
            report = app_reload.ReloadReport(0, config.path)
        async with self._apply_lock:
            return await app_reload.apply(self, config, report)

    def request_stop(self) -> None:
        self._stop.set()

    async def close_servers(self) -> None:
        listeners, self.listeners = self.listeners, []
        for listener in listeners:
            await listener.close()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let transactions in flight finish (up to shutdown_grace), close."""
        log.info("shutting down")
        services = self.services
        if services is not None:
            services.stopping = True
        await self.close_servers()
        if services is not None:
            services.stopping = True
            for session in list(services.sessions):
                session.shutdown()
            # Sessions leave `services.sessions` on their own as transactions end; poll it
            # (a few checks per second) rather than thread an Event through every session.
            deadline = asyncio.get_running_loop().time() + self.config.shutdown_grace
            while services.sessions and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            for session in list(services.sessions):
                session.abort()
            # Let the aborted sessions run their own clean-up (locks, logs) before we close.
            for _ in range(20):
                if not services.sessions:
                    break
                await asyncio.sleep(0.05)
        for task in (self._reload_task, self._watch_task, self._share_task):
            if task is not None:
                task.cancel()
        self.reloader.cancel()
        if self.acme is not None:
            self.acme.stop()
        if self.runner is not None:
            # Local deliveries finish in milliseconds; remote ones are retried next start.
            await self.runner.stop(grace=min(self.config.shutdown_grace, 5.0))
        await self.reloader.retire_now()
        if self.directory is not None:
            await self.directory.close()
        if self.store is not None:
            await self.store.stop_feed()
            await asyncio.to_thread(self.store.close)  # waits for deliveries in flight
        log.info("stopped")


async def serve(config: Config, ready_file: Path | None = None,
                on_started: Callable[[Daemon], None] | None = None,
                install_signals: bool = True, log_level_pinned: bool = False, *,
                link: WorkerLink | None = None) -> None:
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    daemon = Daemon(config, link)
    daemon.ready_file = ready_file
    daemon.log_level_pinned = log_level_pinned
    loop = asyncio.get_running_loop()
    if install_signals:
        # Before start(): it announces the daemon ready (the ready file, or the supervisor
        # told), and a SIGTERM sent on that news must find our handler, not the default
        # action that kills the process without its graceful shutdown. One that comes
        # during start() is acted on once the start is done.
        loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
        loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    await daemon.start()
    pid_written = False
    if install_signals:
        loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    if install_signals and link is None:  # a worker's supervisor writes its own pid there
        # Only once SIGHUP is handled: `mailkeep reload` signals the pid it finds there.
        try:
            await asyncio.to_thread(runfiles.write_pid, config.pid_path)
            pid_written = True
        except OSError as exc:
            log.warning("cannot write the pid file %s: %s (`mailkeep reload` will not "
                        "find this daemon)", config.pid_path, exc)
    if on_started is not None:
        on_started(daemon)
    log.info("mailkeep ready (hostname %s, domains %s)", config.hostname,
             ", ".join(config.domains))
    try:
        await daemon.run_until_stopped()
    finally:
        if pid_written:
            with contextlib.suppress(OSError):
                runfiles.remove_pid(config.pid_path)
