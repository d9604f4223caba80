"""IMAP C:/S: transcripts replayed against the sans-IO machine and the real executor over a
MemoryStore (no sockets).

Each transcript runs one line per read, and (unless it depends on the server's answer
arriving first, e.g. STARTTLS or a synchronizing literal that is refused) all in one read,
byte by byte, and split at arbitrary points (chunking invariance).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.imap_transcript import Transcript, parse

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts" / "imap").glob("*.txt"))
ALL = [parse(p) for p in TRANSCRIPTS]
PIPELINABLE = [t for t in ALL if t.pipelining_ok]


def check(t: Transcript, chunks: list[bytes]) -> None:
    d = t.driver()
    for chunk in chunks:
        d.feed(chunk)
    assert d.out.decode("utf-8", "replace") == t.server_bytes.decode("utf-8", "replace")
    assert d.closed == t.closed


def test_transcripts_exist() -> None:
    assert len(ALL) >= 8
    assert "rfc3501_sample" in {t.name for t in ALL}


@pytest.mark.parametrize("t", ALL, ids=lambda t: t.name)
def test_one_line_per_read(t: Transcript) -> None:
    check(t, t.client_lines)


@pytest.mark.parametrize("t", PIPELINABLE, ids=lambda t: t.name)
def test_all_in_one_read(t: Transcript) -> None:
    check(t, [b"".join(t.client_lines)])


@pytest.mark.parametrize("t", PIPELINABLE, ids=lambda t: t.name)
def test_byte_by_byte(t: Transcript) -> None:
    data = b"".join(t.client_lines)
    check(t, [data[i:i + 1] for i in range(len(data))])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_chunking_invariance(data: st.DataObject) -> None:
    """Splitting a whole session's input at any points gives the same replies."""
    t = data.draw(st.sampled_from(PIPELINABLE), label="transcript")
    stream = b"".join(t.client_lines)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    check(t, [stream[a:b] for a, b in itertools.pairwise(bounds) if a < b])
