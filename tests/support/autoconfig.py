"""A daemon with every mail door and two autoconfig listeners (plain HTTP and HTTPS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trustme

from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config

AUTOCONFIG_LISTENERS = """
[listeners.autoconfig]
protocol = "autoconfig"
tls = "none"
bind = ["127.0.0.1:0"]

[listeners.autoconfigs]
protocol = "autoconfig"
tls = "implicit"
bind = ["127.0.0.1:0"]
"""


def write_autoconfig_config(root: Path, ca: trustme.CA, **kwargs: Any) -> Path:
    """write_config() with imap, pop3 and submission doors, plus the autoconfig listeners."""
    path = write_config(root, ca, imap_listeners=True, pop3_listeners=True, **kwargs)
    path.write_text(path.read_text() + AUTOCONFIG_LISTENERS)
    return path


def start_autoconfig_daemon(root: Path, ca: trustme.CA, loop_kind: str = "asyncio",
                            **kwargs: Any) -> RunningDaemon:
    return start_thread_daemon(write_autoconfig_config(root, ca, **kwargs), ca, loop_kind)
