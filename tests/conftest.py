from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support import ldapserver, pgserver
from tests.support.daemon import RunningDaemon, start_thread_daemon, write_config
from tests.support.ldapserver import Slapd
from tests.support.pgserver import Postgres


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


# -- real directory servers (once per session) ----------------------------------------------


def _unavailable(reason: str) -> None:
    # In CI (scripts/check.sh installs slapd and postgresql) a missing server is a failure.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slapd_server() -> Iterator[Slapd]:
    reason = ldapserver.available()
    if reason:
        _unavailable(reason)
    server = ldapserver.start_slapd()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    reason = pgserver.available()
    if reason:
        _unavailable(reason)
    server = pgserver.start_postgres()
    try:
        yield server
    finally:
        server.stop()


# -- reports that can cross to pytest-xdist's controller ------------------------------------


def _utf8_safe(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes a test logged through surrogateescape)
    shown as \\udcXX escapes: execnet sends strings as UTF-8 only."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Captured output and failure text made UTF-8-safe, so a worker of `pytest -n` can send
    the report (a daemon logging a client's raw 0xff byte otherwise kills the worker)."""
    report: pytest.TestReport = yield
    report.sections = [(title, _utf8_safe(content)) for title, content in report.sections]
    if report.longrepr is not None and not isinstance(report.longrepr, tuple):
        shown = str(report.longrepr)
        if _utf8_safe(shown) != shown:
            report.longrepr = _utf8_safe(shown)
    return report
