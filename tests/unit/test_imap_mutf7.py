"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.proto.imap import mutf7


def test_rfc3501_example() -> None:
    # RFC 3501 §5.1.3: "~peter/mail/台北/日本語"
    wire = "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert mutf7.decode(wire) == "~peter/mail/台北/日本語"
    assert mutf7.encode("~peter/mail/台北/日本語") == wire


@pytest.mark.parametrize(("text", "wire"), [
    ("", ""), ("INBOX", "INBOX"), ("&", "&-"), ("a&b", "a&-b"), ("Entwürfe", "Entw&APw-rfe"),
    ("😀", "&2D3eAA-"), ("Gel\u00f6scht & mehr", "Gel&APY-scht &- mehr"),
])
def test_known_names(text: str, wire: str) -> None:
    assert mutf7.encode(text) == wire
    assert mutf7.decode(wire) == text


@pytest.mark.parametrize("bad", [
    "&", "&abc", "&U,BTFw", "&U,BTF-", "&AGE-",  # "a" must not be encoded
    "&U,BTFw-&ZeVnLIqe-",  # adjacent encoded runs
    "&2D0-",  # a lone high surrogate
    "caf\u00e9",  # 8-bit on the wire
    "&U/BTFw-",  # "/" instead of ","
    "&APx-&APx-", "&APy-",  # non-zero leftover bits
    "tab\there",
])
def test_invalid_names_refused(bad: str) -> None:
    with pytest.raises(mutf7.Mutf7Error):
        mutf7.decode(bad)


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(mutf7.Mutf7Error):
        mutf7.encode("\ud800")


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)))


@given(_TEXT)
def test_round_trip(name: str) -> None:
    wire = mutf7.encode(name)
    assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert mutf7.decode(wire) == name


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_decode_is_total(wire: str) -> None:
    try:
        name = mutf7.decode(wire)
    except mutf7.Mutf7Error:
        return
    assert mutf7.encode(name) == wire  # one spelling per name
