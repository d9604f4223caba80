"""Typed values out of TOML tables, every problem recorded (keyed by dotted path) rather
than raised, so that a configuration's problems are all reported at once (config/load.py)."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Reader:
    """Pulls typed values out of a TOML table, recording problems instead of raising."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def unknown(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for key in sorted(set(table) - allowed):
            known = ", ".join(sorted(allowed))
            self.problem(f"{prefix}{key}", f"unknown key (known keys here: {known})")

    def get(self, table: dict[str, Any], key: str, kind: type[T], prefix: str,
            default: T | None = None) -> T | None:
        if key not in table:
            if default is None:
                self.problem(prefix + key, f"missing (required, a {kind.__name__})")
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(prefix + key, f"expected a {kind.__name__}, got {value!r}")
            return default
        return value

    def path(self, table: dict[str, Any], key: str, prefix: str,
             default: Path | None = None) -> Path | None:
        value = self.get(table, key, str, prefix, None if default is None else str(default))
        if value is None:
            return None
        # normpath, not resolve(): certbot's live/cert.pem is a symlink swapped on renewal,
        # and we must keep watching the link, not the archive file it pointed to at start.
        return Path(os.path.normpath(self.base / value))

    def table(self, raw: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.problem(prefix + key, "expected a table")
            return {}
        return value


def positive_record(reader: Reader, cls: type[T], table: dict[str, Any], prefix: str) -> T:
    """Build a dataclass of positive numbers from a table, each key optional with a default."""
    defaults = cls()
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    reader.unknown(table, names, prefix)
    values: dict[str, Any] = {}
    for name in names:
        default = getattr(defaults, name)
        if not isinstance(default, int | float):
            continue  # a sub-table (e.g. [imap.special_use]): its own parser reads it
        value = reader.get(table, name, type(default), prefix, default)
        if value is not None and value <= 0:
            reader.problem(prefix + name, f"must be greater than 0, got {value}")
            value = default
        values[name] = value
    return cls(**values)
