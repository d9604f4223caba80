"""What every connection driver is handed: the shared services of one daemon."""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mailkeep.config.model import Config, ListenerConfig
from mailkeep.directory.base import UserDirectory
from mailkeep.observe.metrics import Metrics
from mailkeep.proto.imap.mimecache import MimeCache
from mailkeep.security import AuthThrottle, ConnectionBudget, InputBudget, SessionCounter
from mailkeep.security.rate import RateLimiter

if TYPE_CHECKING:
    import dns.resolver

    from mailkeep.relay.dkim import DkimKey
    from mailkeep.relay.runner import DeliveryRunner
from mailkeep.store.base import MailStore

# After the shutdown reply, a TLS client that never answers our close_notify must not hold
# the daemon for the whole shutdown grace: its connection is aborted after this many seconds.
SHUTDOWN_ABORT_AFTER = 1.0

_conn_counter = itertools.count(1)
_RUN = secrets.token_hex(2)


def _new_run() -> None:
    """A forked worker (workers/) numbers its connections apart from its siblings."""
    global _conn_counter, _RUN  # noqa: PLW0603
    _conn_counter = itertools.count(1)
    _RUN = secrets.token_hex(2)


os.register_at_fork(after_in_child=_new_run)


def new_connection_id() -> str:
    """Short, unique within a run, and distinct between runs (for grepping logs)."""
    return f"{_RUN}{next(_conn_counter):06x}"


class Session(Protocol):
    """What every door's session offers the daemon (shutdown and load shedding)."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...

    def sheddable(self) -> bool:
        """Not logged in and waiting for the client: may be closed to make room."""
        ...

    def shed(self) -> None:
        """Close now with a short goodbye (the connection cap is reached)."""
        ...

    @property
    def last_input(self) -> float: ...


@dataclass
class Services:
    config: Config
    directory: UserDirectory
    store: MailStore
    throttle: AuthThrottle
    budget: ConnectionBudget
    imap_sessions: SessionCounter
    input_budget: InputBudget
    sessions: set[Any] = field(default_factory=set)
    stopping: bool = False
    # The delivery runner every accepted message is handed to (None only in unit tests).
    runner: DeliveryRunner | None = None
    # Local domain -> DKIM key for outbound signing; the resolver of the inbound checks.
    dkim_keys: dict[str, DkimKey] = field(default_factory=dict)
    auth_resolver: dns.resolver.Resolver | None = None
    # Listener name -> its message rate limiter (connectors with `rate`).
    rate_limiters: dict[str, RateLimiter] = field(default_factory=dict)
    # IMAP: parsed messages shared by all sessions.
    mime_cache: MimeCache = field(default_factory=MimeCache)
    # Every counter and gauge of this daemon (observe/metrics.py).
    metrics: Metrics = field(default_factory=Metrics)

    def open_sessions(self) -> dict[tuple[str, str], int]:
        """(listener, protocol) -> sessions open now (for the metrics, on the loop).
        Connections still in their TLS handshake have no session yet and are not counted."""
        counts: dict[tuple[str, str], int] = {}
        for session in self.sessions:
            listener = getattr(session, "listener", None)
            if isinstance(listener, ListenerConfig):
                key = (listener.name, listener.protocol)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def idle_sessions(self) -> int:
        """IMAP sessions in IDLE now (RFC 2177)."""
        return sum(1 for session in self.sessions if getattr(session, "idling", False))

    def reconfigure(self, config: Config, capacity: int) -> list[str]:
        """A reloaded configuration for new work: its limits go into the live security
        objects, whose counters (connections per address, auth failures, sessions per user,
        buffered input, message rates) carry on. Sessions that read `config` see the new one;
        those that copied a value at their start keep it. One line per limit object changed.
        `capacity`: the connection cap, lowered to fit the open-files limit."""
        old, self.config = self.config, config
        changed: list[str] = []
        security, imap = config.security, config.imap
        if security != old.security or capacity != self.budget.capacity:
            self.budget.reconfigure(security, capacity)
            self.throttle.reconfigure(security)
            self.input_budget.reconfigure(security.max_buffered_input)
        if (imap.max_connections_per_user, imap.max_connections_per_user_ip) != \
                (self.imap_sessions.per_user, self.imap_sessions.per_user_ip):
            self.imap_sessions.reconfigure(imap.max_connections_per_user,
                                           imap.max_connections_per_user_ip)
        rates = {lst.name: lst.rate for lst in config.listeners if lst.rate is not None}
        for name in sorted(set(self.rate_limiters) - set(rates)):
            del self.rate_limiters[name]  # sessions already open keep theirs
            changed.append(f"listener {name}: rate limit removed")
        old_rates = {lst.name: lst.rate for lst in old.listeners if lst.rate is not None}
        for name, rate in rates.items():
            limiter = self.rate_limiters.get(name)
            if limiter is None:
                self.rate_limiters[name] = RateLimiter(rate.count, rate.seconds)
                changed.append(f"listener {name}: rate limit {rate}")
            elif old_rates.get(name) != rate:
                limiter.reconfigure(rate.count, rate.seconds)
                changed.append(f"listener {name}: rate limit now {rate} (usage so far kept)")
        return changed

    def shed_one(self) -> bool:
        """The connection cap is reached: close the unauthenticated session that has been
        silent longest, if there is one, so a new client can come in. True if one went."""
        victim: Session | None = None
        for session in self.sessions:
            if session.sheddable() and (victim is None
                                        or session.last_input < victim.last_input):
                victim = session
        if victim is None:
            return False
        victim.shed()
        return True
