"""Open-file limits: raise the soft limit at start, and size the connection budget by it.

Every connection costs one descriptor (its socket); the store, the logs, the directory and
the listeners need some too. Connections are therefore capped at the open-files limit minus
a reserve, counted at accept, so a flood of connections is refused at the door instead of
starving mail delivery of descriptors ('Too many open files').
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("mailkeep")


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (allowed without privileges);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target,
                        exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def connection_capacity(configured: int, open_files: int, reserve: int) -> int:
    """How many connections may be open at once: the configured cap, or fewer when the
    open-files limit minus the reserve is smaller (never below 1)."""
    return max(1, min(configured, open_files - reserve))
