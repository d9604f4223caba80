"""POP3 C:/S: transcripts replayed against the sans-IO machine (no sockets).

Each transcript runs three ways: one command per read, everything in one read (RFC 2449
PIPELINING), and - for the chunking-invariance property - split at arbitrary points.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.pop3_transcript import Transcript, parse

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts" / "pop3").glob("*.txt"))
ALL = [parse(p) for p in TRANSCRIPTS]
PIPELINABLE = [t for t in ALL if t.pipelining_ok]


def check(t: Transcript, chunks: list[bytes]) -> None:
    d = t.driver()
    for chunk in chunks:
        d.feed(chunk)
    assert d.out.decode() == t.server_bytes.decode()
    if t.deleted is not None:
        assert d.deleted == t.deleted
    assert d.closed == t.closed


def test_transcripts_exist() -> None:
    assert len(ALL) >= 6


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_one_command_per_read(t: Transcript) -> None:
    check(t, t.client_lines)


@pytest.mark.parametrize("t", PIPELINABLE, ids=lambda t: t.name)
def test_all_commands_in_one_read(t: Transcript) -> None:
    check(t, [b"".join(t.client_lines)])


@pytest.mark.parametrize("t", PIPELINABLE, ids=lambda t: t.name)
def test_byte_by_byte(t: Transcript) -> None:
    data = b"".join(t.client_lines)
    check(t, [data[i:i + 1] for i in range(len(data))])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_chunking_invariance(data: st.DataObject) -> None:
    """Splitting the input at any points gives the same replies."""
    t = data.draw(st.sampled_from(PIPELINABLE), label="transcript")
    stream = b"".join(t.client_lines)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    # b"" means end of input to receive_data(), so empty pieces are not sent.
    check(t, [stream[a:b] for a, b in itertools.pairwise(bounds) if a < b])
