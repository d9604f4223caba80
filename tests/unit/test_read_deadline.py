"""server/deadline.py: one lazily re-armed timer per session instead of asyncio.timeout
around every read -- a read without data for the timeout fails with TimeoutError, a session
that keeps sending never does, a shorter timeout takes effect at once, and a cancel that is
not ours (shutdown) stays a cancel."""

from __future__ import annotations

import asyncio

import pytest

from mailkeep.server.deadline import ReadDeadline


async def test_data_before_the_deadline() -> None:
    reader = asyncio.StreamReader()
    deadline = ReadDeadline()
    asyncio.get_running_loop().call_later(0.01, reader.feed_data, b"a1 NOOP\r\n")
    assert await deadline.read(reader, 100, timeout=5) == b"a1 NOOP\r\n"
    deadline.close()


async def test_silence_times_out() -> None:
    deadline = ReadDeadline()
    with pytest.raises(TimeoutError):
        await deadline.read(asyncio.StreamReader(), 100, timeout=0.05)
    deadline.close()


async def test_a_session_that_keeps_sending_never_times_out() -> None:
    reader = asyncio.StreamReader()
    deadline = ReadDeadline()
    loop = asyncio.get_running_loop()
    start = loop.time()
    reads = 0
    while loop.time() - start < 0.5:  # 2.5 timeouts long, data every 40 ms
        loop.call_later(0.04, reader.feed_data, b"x")
        assert await deadline.read(reader, 100, timeout=0.2) == b"x"
        reads += 1
    assert reads >= 5
    with pytest.raises(TimeoutError):  # and then silence
        await deadline.read(reader, 100, timeout=0.2)
    deadline.close()


async def test_a_shorter_timeout_applies_at_once() -> None:
    reader = asyncio.StreamReader()
    deadline = ReadDeadline()
    asyncio.get_running_loop().call_later(0.01, reader.feed_data, b"x")
    await deadline.read(reader, 100, timeout=60)  # the timer is armed for a minute
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        await deadline.read(reader, 100, timeout=0.05)
    assert loop.time() - start < 30
    deadline.close()


async def test_someone_elses_cancel_stays_a_cancel() -> None:
    deadline = ReadDeadline()
    task = asyncio.create_task(deadline.read(asyncio.StreamReader(), 100, timeout=60))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline.close()


async def test_close_lets_go_of_the_timer() -> None:
    reader = asyncio.StreamReader()
    deadline = ReadDeadline()
    asyncio.get_running_loop().call_later(0.01, reader.feed_data, b"x")
    await deadline.read(reader, 100, timeout=60)
    assert deadline._timer is not None
    deadline.close()
    assert deadline._timer is None
