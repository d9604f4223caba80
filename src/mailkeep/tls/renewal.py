"""The ACME certificate's life: a placeholder until the first one, renewal before expiry,
retries with backoff, and the hot swap into the serving contexts.

The schedule runs on the event loop and sleeps most of the time; each issuance runs in its
own daemon thread (the acme library blocks on HTTPS), so neither start-up nor shutdown waits
for a slow CA. New files are checked (names, key match, dates) before they replace the old
ones, and then reach new connections through TlsContexts.reload() at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from mailkeep.config.model import AcmeConfig
from mailkeep.fsmodes import PRIVATE_FILE, PUBLIC_FILE, make_private_dirs, write_file
from mailkeep.tls.acme import (
    AcmeIssuer,
    AcmeProblem,
    ChallengeResponder,
    Http01Responder,
    TlsAlpnResponder,
)
from mailkeep.tls.certs import (
    CertificateInfo,
    CertificateProblem,
    check_serving,
    generate_selfsigned,
    inspect_certificate,
)
from mailkeep.tls.context import TlsContexts

log = logging.getLogger("mailkeep.acme")

# Let's Encrypt asks clients to check their certificates daily (its integration guide); so
# does the daemon, and at start, and on SIGHUP.
CHECK_INTERVAL = 86400.0
# After a failure: 10 minutes, doubling to 12 hours. Let's Encrypt allows 5 failed
# validations per name per account per hour; this stays well under it, and a CA outage is
# retried through the day.
RETRY_INITIAL = 600.0
RETRY_MAX = 12 * 3600.0
# The self-signed stand-in served until the first certificate arrives.
PLACEHOLDER_DAYS = 90

T = TypeVar("T")


def is_placeholder(info: CertificateInfo) -> bool:
    """Our stand-in (or any self-signed certificate): a CA-issued one names another issuer."""
    return info.issuer == info.subject


def renewal_reason(config: AcmeConfig, now: dt.datetime | None = None
                   ) -> tuple[str | None, dt.datetime | None]:
    """(why a certificate is needed now, or None; when the current one falls due)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        info = inspect_certificate(config.cert)
    except CertificateProblem as exc:
        return f"no usable certificate ({exc})", None
    if is_placeholder(info):
        return "only the self-signed placeholder is serving", None
    missing = [n for n in config.names if not info.covers(n)]
    if missing:
        return f"the names changed ({', '.join(missing)} not covered)", None
    due = info.not_after - dt.timedelta(days=config.renew_before_days)
    if now >= due:
        left = (info.not_after - now).days
        return (f"it expires on {info.not_after:%Y-%m-%d} ({left} days left; renew_before_days "
                f"= {config.renew_before_days})"), due
    return None, due


class AcmeManager:
    def __init__(self, config: AcmeConfig, contexts: TlsContexts,
                 responder: ChallengeResponder | None = None) -> None:
        self.config = config
        self.contexts = contexts
        if responder is None:
            responder = (TlsAlpnResponder(contexts) if config.challenge == "tls-alpn-01"
                         else Http01Responder())
        self.issuer = AcmeIssuer(config.directory, config.account_key, responder,
                                 email=config.email, ca_file=config.ca_file)
        self.check_interval = CHECK_INTERVAL
        self.retry_initial = RETRY_INITIAL
        self.retry_max = RETRY_MAX
        self.issued = 0          # certificates obtained by this process
        self.failures = 0        # failed attempts in a row
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- start-up (before the listeners load their certificates) ------------------------------

    def ensure_placeholder(self, hostname: str | None) -> None:
        """Write a self-signed stand-in when there is no usable ACME certificate (or, when it
        is the default certificate, one that does not cover `hostname`): the daemon starts
        at once and serves it until the CA issues the real one."""
        cfg = self.config
        try:
            check_serving(cfg.cert, cfg.key, hostname)
            return
        except CertificateProblem as exc:
            reason = str(exc)
        generate_selfsigned(cfg.cert, cfg.key, list(cfg.names), days=PLACEHOLDER_DAYS)
        log.warning("ACME: no usable certificate for %s yet (%s): serving a SELF-SIGNED "
                    "PLACEHOLDER until %s issues one; clients will see certificate warnings "
                    "meanwhile", ", ".join(cfg.names), reason, cfg.directory)

    def start(self, implicit_ports: Sequence[int] = ()) -> None:
        if self.config.challenge == "tls-alpn-01" and 443 not in implicit_ports:
            log.info("ACME tls-alpn-01: the CA validates on port 443; the implicit-TLS "
                     "listeners are on port(s) %s: make sure port 443 reaches one of them",
                     ", ".join(map(str, implicit_ports)) or "none")
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mailkeep-acme")

    def use_contexts(self, contexts: TlsContexts) -> None:
        """A reload built new serving contexts: renewed files and TLS-ALPN-01 challenges go
        to them from now on."""
        self.contexts = contexts
        responder = self.issuer.responder
        if isinstance(responder, TlsAlpnResponder):
            responder.contexts = contexts

    def check_now(self) -> None:
        """SIGHUP: look at the certificate now (it is renewed if it is due)."""
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    # -- the schedule --------------------------------------------------------------------------

    async def _run(self) -> None:
        retry = self.retry_initial
        while not self._stop.is_set():
            reason, due = await asyncio.to_thread(renewal_reason, self.config)
            if reason is None:
                assert due is not None
                wait = min(self.check_interval,
                           max(1.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
            else:
                log.info("ACME: requesting a certificate for %s from %s: %s",
                         ", ".join(self.config.names), self.config.directory, reason)
                try:
                    info = await self._in_thread(self._obtain)
                except AcmeProblem as exc:
                    self.failures += 1
                    self.last_error = str(exc)
                    wait, retry = retry, min(retry * 2, self.retry_max)
                    log.error("ACME: no certificate for %s (attempt %d): %s; retrying in %d s",
                              ", ".join(self.config.names), self.failures, exc, wait)
                else:
                    self.issued += 1
                    self.failures, self.last_error, retry = 0, None, self.retry_initial
                    wait = self._after_success(info)
            await self._sleep(wait)

    def _after_success(self, info: CertificateInfo) -> float:
        lifetime = info.not_after - info.not_before
        if lifetime <= dt.timedelta(days=self.config.renew_before_days):
            log.warning("ACME: tls.acme.renew_before_days (%d) is longer than the "
                        "certificate's lifetime (%d days): it is renewed at every check",
                        self.config.renew_before_days, lifetime.days)
            return self.check_interval
        due = info.not_after - dt.timedelta(days=self.config.renew_before_days)
        return min(self.check_interval,
                   max(1.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _in_thread(self, work: Callable[[], T]) -> T:
        """`work()` in a daemon thread: unlike the default executor, nothing waits for it at
        shutdown (a CA that hangs cannot hold the process)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def deliver(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def run() -> None:
            try:
                result = work()
            except BaseException as exc:  # handed to the awaiting task
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(deliver, None, exc)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, result, None)

        threading.Thread(target=run, name="mailkeep-acme", daemon=True).start()
        return await future

    # -- one issuance (in the worker thread) ---------------------------------------------------

    def _obtain(self) -> CertificateInfo:
        cfg = self.config
        issued = self.issuer.issue(cfg.names, self._stop)
        make_private_dirs(cfg.state_dir)
        new_cert = cfg.cert.with_name(cfg.cert.name + ".new")
        new_key = cfg.key.with_name(cfg.key.name + ".new")
        write_file(new_key, issued.key_pem, PRIVATE_FILE)
        write_file(new_cert, issued.fullchain_pem, PUBLIC_FILE)
        try:
            info = check_serving(new_cert, new_key, None, cfg.names)
        except CertificateProblem as exc:
            raise AcmeProblem(f"the CA's certificate is unusable: {exc}") from None
        if self._stop.is_set():
            raise AcmeProblem("stopped")
        with self.contexts.files_lock:
            os.replace(new_key, cfg.key)
            os.replace(new_cert, cfg.cert)
        log.info("ACME: new certificate for %s from %s (sha256 %s, expires %s)",
                 ", ".join(cfg.names), info.issuer, info.sha256, f"{info.not_after:%Y-%m-%d}")
        self.contexts.reload()  # hot swap: new connections get it now
        return info
