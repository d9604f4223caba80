"""Smarthost credentials: read from a file when needed, never shown in logs or reprs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

# A credentials file is two short lines; anything bigger is the wrong file.
MAX_CREDENTIALS_FILE = 4096


class CredentialsError(Exception):
    """The credentials file is missing, unreadable or malformed (message holds no secret)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def read_credentials(path: Path) -> Credentials:
    """First line the user name, second line the password (kept as is but for its line end)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CREDENTIALS_FILE + 1)
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials file {path}: {exc.strerror}") from None
    if len(data) > MAX_CREDENTIALS_FILE:
        raise CredentialsError(f"credentials file {path} is over {MAX_CREDENTIALS_FILE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(f"credentials file {path} is not UTF-8") from None
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].strip() or not lines[1]:
        raise CredentialsError(
            f"credentials file {path}: expected two lines, the user name then the password")
    if any(line.strip() for line in lines[2:]):
        raise CredentialsError(f"credentials file {path}: unexpected text after the password")
    return Credentials(lines[0].strip(), lines[1])


async def load_credentials(path: Path) -> Credentials:
    """read_credentials off the event loop (file I/O)."""
    return await asyncio.to_thread(read_credentials, path)
