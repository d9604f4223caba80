"""Commands printed as advice, complete enough to run as shown.

A hint such as "set one with `mailkeep user passwd alice`" fails when pasted: the command
needs the configuration. `admin_command` adds `--config PATH` with the absolute path of the
configuration this process loaded (`load_config` records it), quoted for a POSIX shell.
Modules that know the path pass it; deep ones (a directory backend, the spool) get the
recorded one, which in the daemon and in every CLI command is the one configuration in use.
"""

from __future__ import annotations

import shlex
from pathlib import Path

# The environment variable naming the configuration when --config is not given.
CONFIG_ENV = "MAILKEEP_CONFIG"
# The configuration used when neither --config nor MAILKEEP_CONFIG is given, if it exists
# (the container image's and contrib/systemd's location).
DEFAULT_CONFIG = Path("/etc/mailkeep/mailkeep.toml")

_in_use: Path | None = None


def config_in_use(path: Path) -> None:
    """Record the configuration this process runs with (called by load_config)."""
    global _in_use  # noqa: PLW0603 (one configuration per process; advice text only)
    _in_use = path


def command(*words: str) -> str:
    """`mailkeep WORDS`, each word quoted for a shell where it needs it."""
    return shlex.join(["mailkeep", *words])


def admin_command(*words: str, config: Path | str | None = None) -> str:
    """`mailkeep WORDS --config PATH`: `config`, else the configuration in use. Without
    either (a library caller that never loaded one) the option is left out, which runs as
    shown when MAILKEEP_CONFIG is set or /etc/mailkeep/mailkeep.toml exists."""
    path = config if config is not None else _in_use
    if path is None:
        return command(*words)
    return command(*words, "--config", str(path))
