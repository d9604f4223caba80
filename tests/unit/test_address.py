"""proto/address.py: canonical spellings, bare IP addresses posing as domains, and local
parts that carry a route."""

from __future__ import annotations

import pytest

from mailkeep.proto.address import canonical, has_routing_characters, is_numeric_domain


@pytest.mark.parametrize("domain", [
    "127.0.0.1", "127.0.0.1.", "0.0.0.0", "192.0.2.1", "1.2.3.4.5", "example.123",
    # inet_aton(3) reads every one of these as 127.0.0.1.
    "127.1", "127.0.1", "2130706433", "0x7f000001", "0X7F.1", "0177.0.0.1", "0x7f.0.0.01",
])
def test_numeric_domains(domain: str) -> None:
    assert is_numeric_domain(domain)


@pytest.mark.parametrize("domain", [
    "example.test", "123.example", "1.2.3.example", "0x7f.example", "3com.test", "x1",
    "xn--bcher-kva.test", "bücher.test", "[127.0.0.1]", "1.2.3.4.5.6.x",
])
def test_domains_with_digits(domain: str) -> None:
    assert not is_numeric_domain(domain)


def test_numeric_top_label_in_other_scripts_is_not_ascii_digits() -> None:
    # str.isdigit() would call "²" or "٣" digits; only ASCII digits make an address.
    assert not is_numeric_domain("example.²")
    assert not is_numeric_domain("example.٣")


@pytest.mark.parametrize("address", [
    "carol%remote.test@example.test", "remote.test!carol@example.test",
    '"carol@remote.test"@example.test', '"carol\\@remote.test"@example.test',
    '"carol%remote.test"@example.test', "a%b%c@example.test", "!@example.test",
])
def test_routing_characters(address: str) -> None:
    assert has_routing_characters(address)


@pytest.mark.parametrize("address", [
    "carol@example.test", "carol+tag@example.test", '"john doe"@example.test',
    "o'brien@example.test", "carol@remote%test",  # only the local part counts
])
def test_plain_local_parts(address: str) -> None:
    assert not has_routing_characters(address)


def test_canonical() -> None:
    assert canonical('"Alice"@Example.Test') == "alice@example.test"
    assert canonical('"john doe"@example.test') == '"john doe"@example.test'
    assert canonical("alice@example.test.") == "alice@example.test."
