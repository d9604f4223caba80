"""What every connection driver is handed: the shared services of one daemon."""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mailkeep.config.model import Config
from mailkeep.directory.base import UserDirectory
from mailkeep.proto.imap.mimecache import MimeCache
from mailkeep.security import AuthThrottle, ConnectionBudget
from mailkeep.store.base import MailStore

# After the shutdown reply, a TLS client that never answers our close_notify must not hold
# the daemon for the whole shutdown grace: its connection is aborted after this many seconds.
SHUTDOWN_ABORT_AFTER = 1.0

_conn_counter = itertools.count(1)
_RUN = secrets.token_hex(2)


def new_connection_id() -> str:
    """Short, unique within a run, and distinct between runs (for grepping logs)."""
    return f"{_RUN}{next(_conn_counter):06x}"


@dataclass
class Services:
    config: Config
    directory: UserDirectory
    store: MailStore
    throttle: AuthThrottle
    budget: ConnectionBudget
    sessions: set[Any] = field(default_factory=set)
    stopping: bool = False
    # IMAP: parsed messages shared by all sessions, and open sessions per account.
    mime_cache: MimeCache = field(default_factory=MimeCache)
    imap_users: Counter[str] = field(default_factory=Counter)
