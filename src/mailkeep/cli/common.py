"""What every command shares: exit codes, standard ports, errors, config loading, logging."""

from __future__ import annotations

import logging
import os
import sys

from mailkeep.config import ConfigError, load_config
from mailkeep.config.hints import CONFIG_ENV, DEFAULT_CONFIG
from mailkeep.config.model import Config
from mailkeep.observe.logformat import formatter

EXIT_USAGE = 2
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: the daemon did not take a queue request; retry
# submission (587), submissions (465), pop3s (995), pop3 with STLS (110, commented out),
# imaps (993), imap with STARTTLS (143, commented out)
STANDARD_PORTS = (587, 465, 995, 110, 993, 143)
UNPRIVILEGED_PORTS = (10587, 10465, 10995, 10110, 10993, 10143)


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def default_config() -> str | None:
    """The configuration to use when --config is not given: $MAILKEEP_CONFIG, else
    /etc/mailkeep/mailkeep.toml if it exists, else None."""
    return os.environ.get(CONFIG_ENV) or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file()
                                          else None)


def resolve_config(given: str | None) -> str:
    """--config, else the default; a usage error (exit 2) naming every way to give one."""
    path = given or default_config()
    if path is None:
        raise CliError(f"no configuration: give --config FILE or set {CONFIG_ENV}=FILE "
                       f"(there is no {DEFAULT_CONFIG} either); `mailkeep init --help` "
                       "tells how to write one", EXIT_USAGE)
    return path


def load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(exc.report(), EXIT_CONFIG) from None


def setup_logging(level: str, log_format: str = "text") -> None:
    """The daemon's log on stderr: text lines, or one JSON object a line (log_format)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd would log AUTH lines
