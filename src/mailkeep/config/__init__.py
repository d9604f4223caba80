"""Configuration: TOML in, frozen dataclasses out, every error reported at once."""

from mailkeep.config.load import ConfigError, load_config, parse_config
from mailkeep.config.model import (
    BindAddress,
    Config,
    DirectoryConfig,
    ListenerConfig,
    Pop3Config,
    SecurityConfig,
    SubmissionConfig,
    TlsConfig,
)

__all__ = [
    "BindAddress",
    "Config",
    "ConfigError",
    "DirectoryConfig",
    "ListenerConfig",
    "Pop3Config",
    "SecurityConfig",
    "SubmissionConfig",
    "TlsConfig",
    "load_config",
    "parse_config",
]
