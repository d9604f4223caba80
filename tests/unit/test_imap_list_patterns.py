"""LIST and LSUB patterns (RFC 3501 §6.3.8) matched without backtracking: found while auditing
per-command costs for issue 7 (a pattern like "*a*a*...*b" held the event loop for ever)."""

from __future__ import annotations

import re
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from mailkeep.proto.imap import listing


def regex_oracle(pattern: str, name: str) -> bool:
    """The old translation to a regex: right, but exponential on some inputs."""
    rx = "".join(".*" if c == "*" else "[^.]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.DOTALL) is not None


@settings(max_examples=500, deadline=None)
@given(st.text("ab.*%", max_size=8), st.text("ab.", max_size=10))
def test_list_pattern_agrees_with_a_regex(pattern: str, name: str) -> None:
    assert listing.ListPattern(pattern).fullmatch(name) is regex_oracle(pattern, name)


def test_list_pattern_inbox_is_case_insensitive() -> None:
    assert listing.matches(listing.compile_pattern("iNbOx"), "INBOX")
    assert listing.matches(listing.compile_pattern("in%"), "INBOX")
    assert not listing.matches(listing.compile_pattern("inbox"), "Inbox.x")


def test_list_pattern_does_not_backtrack() -> None:
    # "*a*a*...*b" against "aaaa...": a backtracking regex takes 2^n steps (ten stars and
    # 40 letters: 21 s). Run in a child process so a regression fails at the bound instead
    # of hanging the suite.
    code = ("from mailkeep.proto.imap import listing\n"
            "p = listing.compile_pattern('*a' * 40 + 'b')\n"
            "assert not listing.matches(p, 'a' * 200)\n"
            "assert listing.matches(p, 'a' * 199 + 'b')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
