"""proto/connector.py: who may send as whom on a connector, which clients may connect, and
the replies that refuse them -- mostly from the side of someone trying to get through."""

from __future__ import annotations

import ipaddress

import pytest

from mailkeep.proto.connector import (
    SenderRule,
    client_allowed,
    envelope_sender_refusal,
    relay_refusal,
)

NETS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8:1::/64"),
        ipaddress.ip_network("198.51.100.7/32"))


# -- SenderRule ---------------------------------------------------------------------------------

ALICE = SenderRule(addresses=("alice@example.test", "a.smith@example.test"))
APPS = SenderRule(patterns=("@apps.example.test", "billing@example.test"))
LOGGED_IN_APP = SenderRule(addresses=("scanner@example.test",), patterns=("@apps.example.test",))


@pytest.mark.parametrize("address", [
    "alice@example.test", "a.smith@example.test",
    "ALICE@Example.Test",            # mailbox names compare case-insensitively
    '"alice"@example.test',          # needless quotes name the same mailbox
    '"a.smith"@example.test',
    "  alice@example.test ",
])
def test_own_addresses_in_any_spelling(address: str) -> None:
    assert ALICE.allows(address)


@pytest.mark.parametrize("address", [
    "bob@example.test",
    "alice@example.test.",           # RFC 5321 has no trailing dot: not alice's address
    "alice@example.test.evil.example",
    "alice@sub.example.test",
    "alice@example.tes",
    '"alice@example.test"@evil.example',
    "alice+tag@example.test",        # a subaddress is not configured as hers
    "alice",
    "",                              # the null sender is not an address of hers
    '"alice "@example.test',
])
def test_spoofing_attempts_are_not_allowed(address: str) -> None:
    assert not ALICE.allows(address)


def test_domain_and_address_patterns() -> None:
    assert APPS.allows("printer@apps.example.test")
    assert APPS.allows("PRINTER@APPS.EXAMPLE.TEST")
    assert APPS.allows("billing@example.test")
    assert not APPS.allows("payroll@example.test")        # the address pattern is exact
    assert not APPS.allows("printer@sub.apps.example.test")  # @domain is that domain only
    assert not APPS.allows("printer@evilapps.example.test")
    assert not APPS.allows("apps.example.test")
    assert not APPS.allows("")


def test_account_addresses_and_patterns_together() -> None:
    assert LOGGED_IN_APP.allows("scanner@example.test")
    assert LOGGED_IN_APP.allows("any@apps.example.test")
    assert not LOGGED_IN_APP.allows("other@example.test")


def test_anyone_is_the_inbound_mx() -> None:
    rule = SenderRule(anyone=True)
    assert rule.allows("stranger@elsewhere.example")
    assert rule.allows("")  # bounces from anywhere


def test_an_empty_rule_allows_nobody() -> None:
    assert not SenderRule().allows("alice@example.test")


# -- client_allowed -------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "192.0.2.0", "192.0.2.7", "192.0.2.255", "198.51.100.7",
    "2001:db8:1::1", "2001:db8:1:0:ffff:ffff:ffff:ffff",
    "::ffff:192.0.2.7",              # IPv4-mapped IPv6 (a dual-stack socket) counts as IPv4
    "::FFFF:198.51.100.7",
])
def test_clients_inside_the_networks(address: str) -> None:
    assert client_allowed(address, NETS)


@pytest.mark.parametrize("address", [
    "192.0.3.1", "198.51.100.8", "192.0.1.255",
    "2001:db8:2::1", "2001:db8:1:1::1",
    "::ffff:192.0.3.1",
    "::192.0.2.7",                   # IPv4-compatible (deprecated) is not IPv4-mapped
    "64:ff9b::192.0.2.7",            # NAT64: another host entirely
    "", "localhost", "192.0.2.7.example", "192.0.2.7/32", "not an address",
])
def test_clients_outside_the_networks(address: str) -> None:
    assert not client_allowed(address, NETS)


def test_no_networks_admit_nobody() -> None:
    assert not client_allowed("192.0.2.7", [])


def test_a_mapped_network_does_not_let_ipv4_in_by_accident() -> None:
    # An IPv6 network never matches an IPv4 client, even one written as ::ffff:a.b.c.d.
    mapped = [ipaddress.ip_network("::ffff:0:0/96")]
    assert not client_allowed("::ffff:192.0.2.7", mapped)
    assert not client_allowed("192.0.2.7", mapped)


def test_everything_networks_admit_everyone() -> None:
    anywhere = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert client_allowed("203.0.113.9", anywhere)
    assert client_allowed("2001:db8:ffff::1", anywhere)


# -- refusals -------------------------------------------------------------------------------------

def test_envelope_sender_refusal() -> None:
    assert envelope_sender_refusal(ALICE, "alice@example.test") is None
    reply = envelope_sender_refusal(ALICE, "ceo@example.test")
    assert reply is not None
    # RFC 6409 §6.1 and RFC 3463 X.7.1: a policy refusal, permanent; says whose address.
    assert reply.startswith("553 5.7.1 ")
    assert "<ceo@example.test>" in reply


def test_relay_refusal() -> None:
    reply = relay_refusal("victim@remote.example")
    assert reply.startswith("554 5.7.1 ")
    assert "<victim@remote.example>" in reply and "relay access denied" in reply
