"""The daemon's counters and gauges, exposed in the Prometheus text format (docs/metrics.md).

One Metrics object per daemon, with a registry of its own (never prometheus_client's global
default registry: a test process runs several daemons, and each must count alone). Every
metric lives here; the rest of the code reports events through the methods below
(services.metrics.login(...)), so protocol code never imports prometheus_client.

Two kinds of figures:

* events, counted as they happen (connections, handshakes, logins, messages, deliveries,
  store errors): counters and one histogram, safe to update from any thread;
* states, computed when /metrics is scraped (open sessions, IMAP IDLE sessions, the queue,
  certificate expiry): from `ScrapeSources`, callables the daemon supplies, which read what
  is already in memory on the event loop. The exposition is rendered on the loop (render()),
  so those callables never race with the sessions or the queue they read; none of them does
  I/O (certificates come from what the TLS layer has loaded, not from the files).

Several worker processes: each keeps its own Metrics, and the worker that answers a scrape
adds the others' figures, which each writes to a small file (observe/shared.py,
render_all()).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from mailkeep import __version__
from mailkeep.observe import shared

log = logging.getLogger("mailkeep")

LoginOutcome = Literal["ok", "failed", "throttled", "unavailable"]
LOGIN_OUTCOMES: tuple[LoginOutcome, ...] = ("ok", "failed", "throttled", "unavailable")
# Why a connection was closed at accept time, before any protocol work.
ConnectionRefusal = Literal["not_allowed", "untrusted_proxy", "bad_proxy_header",
                            "too_many", "too_many_from_address", "shutting_down"]
# Why an SMTP transaction (or one recipient of it) was refused. Syntax errors (the client's
# fault, 5.5.x) are not counted here; refusals of policy and of resources are.
MessageRefusal = Literal[
    "relay_denied", "unknown_recipient", "address_literal", "too_many_recipients",
    "sender", "local_sender", "header_sender", "rate_limit", "size", "line_too_long",
    "bare_line_end",
    "dmarc", "directory_unavailable", "storage", "busy"]
RemoteOutcome = Literal["delivered", "relayed", "deferred", "failed"]
REMOTE_OUTCOMES: tuple[RemoteOutcome, ...] = ("delivered", "relayed", "deferred", "failed")
StoreErrorKind = Literal["disk_full", "io", "lock"]
STORE_ERROR_KINDS: tuple[StoreErrorKind, ...] = ("disk_full", "io", "lock")
# The doors where a user logs in (directory.base.SERVICES).
LOGIN_PROTOCOLS = ("imap", "pop3", "submission", "smtp", "relay")

# Local delivery (tmp/ -> fsync -> rename -> fsync new/): about a millisecond on an SSD,
# tens on a disk that is busy, seconds when it is failing.
LOCAL_DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                          2.5, 5.0, 10.0)


def _nothing_open() -> Mapping[tuple[str, str], int]:
    return {}


def _no_idle() -> int:
    return 0


def _empty_queue() -> tuple[int, float]:
    return 0, 0.0


def _no_certificates() -> list[tuple[str, dt.datetime]]:
    return []


@dataclass
class ScrapeSources:
    """What the daemon supplies for the figures computed at scrape time (on the loop)."""

    # (listener, protocol) -> sessions open now (TLS handshakes in progress not included).
    sessions: Callable[[], Mapping[tuple[str, str], int]] = field(default=_nothing_open)
    # IMAP sessions in IDLE now.
    idle: Callable[[], int] = field(default=_no_idle)
    # (messages queued, age in seconds of the oldest).
    queue: Callable[[], tuple[int, float]] = field(default=_empty_queue)
    # (certificate file, notAfter) of every certificate being served.
    certificates: Callable[[], list[tuple[str, dt.datetime]]] = field(
        default=_no_certificates)


class _StateCollector(Collector):
    """The gauges computed at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        sources = m.sources
        now = m.clock()
        yield from self._sessions(sources)
        idle = GaugeMetricFamily("mailkeep_imap_idle_sessions",
                                 "IMAP sessions waiting in IDLE (RFC 2177)")
        idle.add_metric([], sources.idle())
        yield idle
        count, oldest = sources.queue()
        queued = GaugeMetricFamily("mailkeep_queue_messages",
                                   "Messages in the spool not yet delivered to every recipient")
        queued.add_metric([], count)
        yield queued
        age = GaugeMetricFamily("mailkeep_queue_oldest_age_seconds",
                                "Age of the oldest message in the spool (0 when empty)")
        age.add_metric([], oldest)
        yield age
        left = GaugeMetricFamily("mailkeep_certificate_expiry_seconds",
                                 "Seconds until a served certificate expires (negative: "
                                 "expired)", labels=["certificate"])
        not_after = GaugeMetricFamily("mailkeep_certificate_not_after_timestamp_seconds",
                                      "When a served certificate expires (Unix time)",
                                      labels=["certificate"])
        for cert, when in sources.certificates():
            left.add_metric([cert], when.timestamp() - now)
            not_after.add_metric([cert], when.timestamp())
        yield left
        yield not_after
        start = GaugeMetricFamily("mailkeep_start_time_seconds",
                                  "When the daemon started (Unix time)")
        start.add_metric([], m.started)
        yield start
        uptime = GaugeMetricFamily("mailkeep_uptime_seconds", "Seconds since the daemon started")
        uptime.add_metric([], max(0.0, now - m.started))
        yield uptime
        info = InfoMetricFamily("mailkeep_build", "The running version")
        info.add_metric([], {"version": __version__})
        yield info

    @staticmethod
    def _sessions(sources: ScrapeSources) -> Iterator[Metric]:
        family = GaugeMetricFamily("mailkeep_sessions_open", "Client sessions open now",
                                   labels=["listener", "protocol"])
        for (listener, protocol), count in sorted(sources.sessions().items()):
            family.add_metric([listener, protocol], count)
        yield family


class Metrics:
    """Every metric of one daemon, and the events that move them."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 process: bool = True) -> None:
        self.clock = clock
        self.started = clock()
        self.sources = ScrapeSources()
        # Set when this process is one of several workers (observe/shared.py).
        self.shared: shared.SharedFigures | None = None
        self.registry = r = CollectorRegistry()
        self._accepted = Counter("mailkeep_connections_accepted",
                                 "Connections admitted at accept time",
                                 ["listener", "protocol"], registry=r)
        self._refused = Counter("mailkeep_connections_refused",
                                "Connections closed at accept time, before any TLS or "
                                "protocol work", ["listener", "protocol", "reason"], registry=r)
        self._handshakes = Counter("mailkeep_tls_handshakes",
                                   "TLS handshakes completed (implicit TLS and STARTTLS/STLS)",
                                   ["listener", "version"], registry=r)
        self._handshake_failures = Counter("mailkeep_tls_handshake_failures",
                                           "TLS handshakes that failed or timed out",
                                           ["listener"], registry=r)
        self._logins = Counter("mailkeep_logins", "Login attempts by outcome",
                               ["protocol", "outcome"], registry=r)
        self._messages = Counter("mailkeep_messages_accepted",
                                 "Messages accepted (spooled) by SMTP", ["listener"],
                                 registry=r)
        self._messages_refused = Counter("mailkeep_messages_refused",
                                         "SMTP transactions or recipients refused, by reason",
                                         ["listener", "reason"], registry=r)
        self._local_delivery = Histogram("mailkeep_local_delivery_seconds",
                                         "Time to write one local copy into a Maildir "
                                         "(durably: tmp/, fsync, rename)",
                                         buckets=LOCAL_DELIVERY_BUCKETS, registry=r)
        self._remote = Counter("mailkeep_remote_deliveries",
                               "Outcomes of remote delivery attempts, per recipient",
                               ["outcome"], registry=r)
        self._store_errors = Counter("mailkeep_store_errors",
                                     "Maildir operations that failed on our side", ["kind"],
                                     registry=r)
        r.register(_StateCollector(self))
        if process:
            # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds...
            # (read from /proc at scrape time: procfs, no disk I/O).
            ProcessCollector(registry=r)
        for outcome in REMOTE_OUTCOMES:
            self._remote.labels(outcome)
        for kind in STORE_ERROR_KINDS:
            self._store_errors.labels(kind)

    def declare_listeners(self, listeners: Iterable[tuple[str, str, str]]) -> None:
        """Every (listener, protocol, tls mode) starts at 0 rather than missing until its
        first event (a missing series is not a zero to Prometheus' rate())."""
        for name, protocol, tls in listeners:
            self._accepted.labels(name, protocol)
            if tls != "none":
                self._handshake_failures.labels(name)
            if protocol in ("submission", "smtp", "relay"):
                self._messages.labels(name)
            if protocol in LOGIN_PROTOCOLS:
                for outcome in LOGIN_OUTCOMES:
                    self._logins.labels(protocol, outcome)

    # -- events -----------------------------------------------------------------------------

    def connection_accepted(self, listener: str, protocol: str) -> None:
        self._accepted.labels(listener, protocol).inc()

    def connection_refused(self, listener: str, protocol: str,
                           reason: ConnectionRefusal) -> None:
        self._refused.labels(listener, protocol, reason).inc()

    def tls_handshake(self, listener: str, version: str | None) -> None:
        self._handshakes.labels(listener, version or "unknown").inc()

    def tls_handshake_failed(self, listener: str) -> None:
        self._handshake_failures.labels(listener).inc()

    def login(self, protocol: str, outcome: LoginOutcome) -> None:
        self._logins.labels(protocol, outcome).inc()

    def message_accepted(self, listener: str) -> None:
        self._messages.labels(listener).inc()

    def message_refused(self, listener: str, reason: MessageRefusal) -> None:
        self._messages_refused.labels(listener, reason).inc()

    def local_delivery(self, seconds: float) -> None:
        self._local_delivery.observe(seconds)

    def remote_delivery(self, outcome: RemoteOutcome) -> None:
        self._remote.labels(outcome).inc()

    def store_error(self, kind: str) -> None:
        """`kind`: one of STORE_ERROR_KINDS (the store names them: it knows no metrics).
        Called from the store's I/O threads too (prometheus_client counters lock)."""
        self._store_errors.labels(kind).inc()

    # -- exposition -------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) of a scrape: the Prometheus text format, or OpenMetrics when
        the scraper's Accept header asks for it. Call on the event loop (ScrapeSources)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def render_all(self, accept: str | None = None) -> tuple[bytes, str]:
        """render(), with the other workers' figures summed in (observe/shared.py) when
        this process is one of several workers."""
        if self.shared is None:
            return self.render(accept)
        encoder, content_type = choose_encoder(accept or "")
        families = list(self.registry.collect())  # on the loop: ScrapeSources
        own = shared.samples_of(families)
        share = self.shared

        def exchange() -> list[dict[shared.Key, float]]:
            share.publish(own)
            return share.others()

        others = await asyncio.to_thread(exchange)
        return encoder(_Families(list(shared.merge(families, others)))), content_type

    async def share_forever(self) -> None:
        """Write this worker's figures every SHARE_SECONDS (a task while the worker runs)."""
        share = self.shared
        assert share is not None
        while True:
            own = shared.samples_of(self.registry.collect())
            try:
                await asyncio.to_thread(share.publish, own)
            except OSError as exc:
                log.warning("metrics: cannot write %s: %s", share.directory, exc.strerror)
            await asyncio.sleep(shared.SHARE_SECONDS)


class _Families:
    """Metric families in the shape the encoders read (a registry's collect())."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)
