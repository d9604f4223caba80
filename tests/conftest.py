from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def daemon(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    """The real daemon on loopback (ephemeral ports), under asyncio and under uvloop."""
    config = write_config(tmp_path, ca)
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def imap_daemon(tmp_path: Path, ca: trustme.CA, loop_kind: str) -> Iterator[RunningDaemon]:
    """The real daemon with the "imaps" (993-style) and "imap" (STARTTLS) listeners too."""
    config = write_config(tmp_path, ca, imap_listeners=True)
    running = start_thread_daemon(config, ca, loop_kind)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def make_daemon(tmp_path: Path, ca: trustme.CA) -> Iterator[object]:
    """A factory for daemons with custom limits: make_daemon(submission={...}, security={...})."""
    started: list[RunningDaemon] = []

    def factory(loop_kind: str = "asyncio", **kwargs: object) -> RunningDaemon:
        root = tmp_path / f"d{len(started)}"
        root.mkdir()
        config = write_config(root, ca, **kwargs)  # type: ignore[arg-type]
        running = start_thread_daemon(config, ca, loop_kind)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()
