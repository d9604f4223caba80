"""`workers = N`: a small parent process and N workers serving the same listeners.

The parent forks the workers before any event loop or thread exists in it. Each worker is
the whole daemon (app.Daemon): it binds every listener with SO_REUSEPORT, so the kernel
spreads new connections over the workers, and drops privileges itself. The parent keeps
no listening socket and serves no client: it

* answers the workers' questions about the shared counters (coordinator.py), in a plain
  selectors loop;
* writes --ready-file once every worker listens;
* forwards SIGTERM/SIGINT (and waits for the workers' graceful shutdown, up to
  shutdown_grace and a margin, before SIGKILL) and SIGHUP (after checking the new config
  itself: a broken one is reported and nothing is forwarded);
* restarts a worker that dies, releasing what it held, with a growing delay when it dies
  again soon after starting (a crash loop cannot spin).

Ports given as 0 (tests) are chosen once by the parent, which keeps a bound but never
listening socket on each so that every worker, restarted ones included, binds the same port.

The parent stays what it was started as (root, when ports below 1024 need it): a restarted
worker must bind its ports again before dropping privileges, as at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailkeep import runfiles
from mailkeep.config.load import ConfigError
from mailkeep.config.model import BindAddress, Config
from mailkeep.relay.runner import SPOOL_LOCK_WAIT
from mailkeep.relay.spool import Spool, SpoolBusy
from mailkeep.workers.coordinator import Coordinator
from mailkeep.workers.link import Channel, WorkerLink
from mailkeep.workers.protocol import MAX_MESSAGE, BadRequest, decode_request, encode

log = logging.getLogger("mailkeep.workers")

# Seconds beyond shutdown_grace that workers get to close their stores and spool before
# SIGKILL (the runner's own grace is at most 5 s; closing the stores takes milliseconds).
SHUTDOWN_MARGIN = 10.0
# A worker that dies within this many seconds of starting is restarted after a delay that
# doubles each time (from RESTART_DELAY_MIN up to RESTART_DELAY_MAX); one that ran longer
# is restarted at once.
RESTART_STABLE_AFTER = 30.0
RESTART_DELAY_MIN = 1.0
RESTART_DELAY_MAX = 60.0
# Exit status of a worker that failed in a way no restart fixes (its own report is on stderr).
EXIT_SOFTWARE = 70

# The signals the supervisor handles (SIGCHLD: a worker exited).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

WorkerMain = Callable[[Config, WorkerLink], int]


@dataclass
class _Worker:
    index: int
    pid: int
    sock: socket.socket
    started: float
    ready: bool = False


class Supervisor:
    def __init__(self, config: Config, reload_config: Callable[[], Config],
                 worker_main: WorkerMain, ready_file: Path | None = None) -> None:
        self.config = config
        self.reload_config = reload_config
        self.worker_main = worker_main
        self.ready_file = ready_file
        self.coordinator = Coordinator(config)
        self.selector = selectors.DefaultSelector()
        self.workers: dict[int, _Worker] = {}            # pid -> worker
        self.restart_at: dict[int, float] = {}           # index -> when
        self.delays: dict[int, float] = {}               # index -> next crash-loop delay
        self.bound: dict[str, list[str]] = {}
        self.signals: list[int] = []
        self.stopping_since: float | None = None
        self.exit_code = 0
        self.announced = False
        self._reserved: list[socket.socket] = []
        self._spool_lock: int | None = None
        self._pid_written = False
        self._wake_r, self._wake_w = os.pipe()

    # -- start ------------------------------------------------------------------------------

    def run(self) -> int:
        problem = self._check_spool()
        if problem:
            print(f"mailkeep: cannot start ({self.config.path}):\n  {problem}", file=sys.stderr)
            return 78
        self.config = self._fix_ports(self.config)
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        log.info("supervisor %d: starting %d workers", os.getpid(), self.config.workers)
        for index in range(self.config.workers):
            self._spawn(index)
        try:
            self._loop()
        finally:
            for sock in self._reserved:
                sock.close()
            if self._pid_written:
                with contextlib.suppress(OSError):
                    runfiles.remove_pid(self.config.pid_path)
            if self._spool_lock is not None:
                os.close(self._spool_lock)
        log.info("supervisor %d: stopped", os.getpid())
        return self.exit_code

    def _check_spool(self) -> str | None:
        """One spool, one daemon: the supervisor holds the spool's lock for the whole daemon
        (`mailkeep queue` and `reload` find it there; a second daemon is refused); the
        workers decide among themselves who delivers the queue (relay/claims.py)."""
        spool = Spool(self.config.data_dir / "spool")
        try:
            self._spool_lock = spool.lock(SPOOL_LOCK_WAIT)
        except SpoolBusy as exc:
            return (f"data_dir: {exc}: another mailkeep daemon uses this data_dir (one "
                    "spool, one daemon); stop it first")
        except OSError as exc:
            return f"data_dir: the spool in {spool.root} cannot be used: {exc.strerror or exc}"
        return None

    def _fix_ports(self, config: Config) -> Config:
        """Port 0: choose the port once, for every worker (a bound, never listening socket
        keeps it ours)."""
        listeners = []
        for lst in config.listeners:
            binds = []
            for addr in lst.bind:
                binds.append(self._reserve(addr) if addr.port == 0 else addr)
            listeners.append(dataclasses.replace(lst, bind=tuple(binds)))
        return dataclasses.replace(config, listeners=tuple(listeners))

    def _reserve(self, addr: BindAddress) -> BindAddress:
        info = socket.getaddrinfo(addr.host, 0, type=socket.SOCK_STREAM,
                                  flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], info[1], info[2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if info[0] == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(info[4])
        self._reserved.append(sock)
        return BindAddress(addr.host, sock.getsockname()[1])

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # Signals wait until each side has its own handlers (a SIGTERM in between would
        # otherwise be taken by the child for the parent's).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                ours.close()
                self._become_worker(index, theirs, blocked)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        theirs.close()
        ours.setblocking(False)
        worker = _Worker(index, pid, ours, time.monotonic())
        self.workers[pid] = worker
        self.selector.register(ours, selectors.EVENT_READ, worker)
        log.info("worker %d started (pid %d)", index, pid)

    def _become_worker(self, index: int, sock: socket.socket,
                       mask: set[int | signal.Signals]) -> None:
        code = EXIT_SOFTWARE
        try:
            signal.set_wakeup_fd(-1)
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            # A SIGHUP forwarded before this worker's loop handles it must not kill it.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.selector.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            for other in self.workers.values():
                other.sock.close()
            for reserved in self._reserved:
                reserved.close()
            if self._spool_lock is not None:
                os.close(self._spool_lock)  # the supervisor's (still held through its own)
            parent = os.getppid()
            code = self.worker_main(self.config, WorkerLink(Channel(sock), index, parent))
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    # -- the loop ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def _loop(self) -> None:
        while self.workers or (self.stopping_since is None and self.restart_at):
            for key, _mask in self.selector.select(self._timeout()):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                else:
                    self._serve(key.data)
            self._handle_signals()
            self._reap()
            self._restart_due()
            if self.stopping_since is not None and self.workers and \
                    time.monotonic() - self.stopping_since > self._stop_allowance():
                for worker in self.workers.values():
                    log.warning("worker %d (pid %d) did not stop in time: killed",
                                worker.index, worker.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
                self.stopping_since = time.monotonic() + 3600  # reap them, then leave

    def _timeout(self) -> float:
        now = time.monotonic()
        waits = [1.0] + [max(0.0, when - now) for when in self.restart_at.values()]
        return min(waits)

    def _stop_allowance(self) -> float:
        return self.config.shutdown_grace + SHUTDOWN_MARGIN

    def _serve(self, worker: _Worker) -> None:
        try:
            data = worker.sock.recv(MAX_MESSAGE + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(worker.sock)  # it is exiting; reaped on SIGCHLD
            return
        try:
            op, args = decode_request(data)
            if op == "ready":
                reply: Any = self._ready(worker, args[0])
            else:
                reply = self.coordinator.handle(worker.pid, op, args)
        except BadRequest as exc:
            log.error("worker %d (pid %d) sent a bad request (%s): killed", worker.index,
                      worker.pid, exc)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            return
        with contextlib.suppress(OSError):
            worker.sock.send(encode(reply))

    def _ready(self, worker: _Worker, bound: object) -> bool:
        if not (isinstance(bound, dict) and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(a, str) for a in v)
                for k, v in bound.items())):
            raise BadRequest("ready: not {listener: [address, ...]}")
        worker.ready = True
        self.bound = bound
        if all(w.ready for w in self.workers.values()) and not self.restart_at:
            self._announce()
        return True

    def _announce(self) -> None:
        pids = sorted(w.pid for w in self.workers.values())
        if not self.announced:
            log.info("mailkeep ready: %d workers (pids %s)", len(pids),
                     ", ".join(map(str, pids)))
        if not self.announced:
            # `mailkeep reload` signals this pid (it holds the spool's lock): every worker.
            try:
                runfiles.write_pid(self.config.pid_path)
                self._pid_written = True
            except OSError as exc:
                log.warning("cannot write the pid file %s: %s (`mailkeep reload` will not "
                            "find this daemon)", self.config.pid_path, exc)
        self.announced = True
        if self.ready_file is not None:
            tmp = self.ready_file.with_name(self.ready_file.name + ".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "listeners": self.bound,
                                       "workers": pids}))
            os.replace(tmp, self.ready_file)

    def _handle_signals(self) -> None:
        signals, self.signals = self.signals, []
        for signum in signals:
            if signum in (signal.SIGTERM, signal.SIGINT) and self.stopping_since is None:
                log.info("supervisor: %s: stopping %d workers",
                         signal.Signals(signum).name, len(self.workers))
                self.stopping_since = time.monotonic()
                self.restart_at.clear()
                self._forward(signal.SIGTERM)
            elif signum == signal.SIGHUP and self.stopping_since is None:
                self._reload()

    def _reload(self) -> None:
        try:
            config = self.reload_config()
        except ConfigError as exc:
            log.error("SIGHUP: the new configuration has %d problem(s); nothing reloaded",
                      len(exc.problems))
            for problem in exc.problems:
                log.error("  %s", problem)
            return
        except OSError as exc:
            log.error("SIGHUP: cannot read the configuration: %s; nothing reloaded", exc)
            return
        if config.workers != self.config.workers:
            log.warning("workers: %d -> %d takes a restart; still %d workers",
                        self.config.workers, config.workers, self.config.workers)
        self.coordinator.reconfigure(config)
        log.info("SIGHUP: reloading %d workers", len(self.workers))
        self._forward(signal.SIGHUP)

    def _forward(self, signum: int) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.sock)
            worker.sock.close()
            self.coordinator.forget(pid)
            self._after_exit(worker, status)

    def _after_exit(self, worker: _Worker, status: int) -> None:
        how = (f"exit status {os.waitstatus_to_exitcode(status)}" if os.WIFEXITED(status)
               else f"signal {signal.Signals(os.WTERMSIG(status)).name}"
               if os.WIFSIGNALED(status) else f"status {status}")
        if self.stopping_since is not None:
            log.info("worker %d (pid %d) stopped (%s)", worker.index, worker.pid, how)
            return
        if not self.announced and not worker.ready:
            # It never got to listen at start: a configuration or environment problem
            # that restarting cannot fix (the worker printed it). Stop the others.
            log.error("worker %d (pid %d) could not start (%s): stopping", worker.index,
                      worker.pid, how)
            code = os.waitstatus_to_exitcode(status)
            self.exit_code = code if code > 0 else EXIT_SOFTWARE
            self.stopping_since = time.monotonic()
            self.restart_at.clear()
            self._forward(signal.SIGTERM)
            return
        lived = time.monotonic() - worker.started
        delay = 0.0
        if lived < RESTART_STABLE_AFTER:
            delay = self.delays.get(worker.index, RESTART_DELAY_MIN)
            self.delays[worker.index] = min(delay * 2, RESTART_DELAY_MAX)
        else:
            self.delays.pop(worker.index, None)
        log.error("worker %d (pid %d) died (%s) after %.0f s: restarting it in %.0f s",
                  worker.index, worker.pid, how, lived, delay)
        self.restart_at[worker.index] = time.monotonic() + delay

    def _restart_due(self) -> None:
        if self.stopping_since is not None:
            return
        now = time.monotonic()
        for index, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[index]
                self._spawn(index)
