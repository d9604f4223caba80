"""proto/proxy.py: HAProxy's PROXY protocol header, v1 and v2 (examples from the spec)."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailkeep.proto.proxy import (
    V1_MAX,
    V2_SIGNATURE,
    ProxyError,
    ProxyInfo,
    header_length,
    parse,
)


def v2(command: int, family: int, payload: bytes, transport: int = 1) -> bytes:
    return (V2_SIGNATURE + bytes([0x20 | command, (family << 4) | transport])
            + struct.pack("!H", len(payload)) + payload)


def test_v1_tcp4_and_tcp6() -> None:
    line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 993\r\n"
    assert header_length(line + b"\x16\x03\x01") == len(line)
    assert parse(line) == ProxyInfo("192.0.2.7", 56324, "198.51.100.1", 993)
    six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 587\r\n"
    assert parse(six) == ProxyInfo("2001:db8::7", 4000, "2001:db8::1", 587)


def test_v1_unknown_is_the_proxy_itself() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyInfo(None)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == ProxyInfo(None)


@pytest.mark.parametrize("bad", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",        # a field missing
    b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",         # v6 address in TCP4
    b"PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n",         # not an address
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 2\r\n",       # port out of range
    b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",          # leading zero
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY  TCP4 192.0.2.7 198.51.100.1 1 2\r\n",          # two spaces
])
def test_v1_malformed(bad: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(bad)


def test_v1_without_crlf_within_107_octets() -> None:
    assert header_length(b"PROXY TCP4 1") is None  # more needed
    with pytest.raises(ProxyError):
        header_length(b"PROXY " + b"x" * V1_MAX)


def test_v2_ipv4_ipv6_local_unspec() -> None:
    four = v2(1, 1, ipaddress.IPv4Address("192.0.2.7").packed
              + ipaddress.IPv4Address("198.51.100.1").packed + struct.pack("!HH", 56324, 993))
    assert header_length(four[:10]) is None
    assert header_length(four + b"\x16") == len(four)
    assert parse(four) == ProxyInfo("192.0.2.7", 56324, "198.51.100.1", 993)
    six = v2(1, 2, ipaddress.IPv6Address("2001:db8::7").packed
             + ipaddress.IPv6Address("2001:db8::1").packed + struct.pack("!HH", 1, 2))
    assert parse(six).source == "2001:db8::7"
    assert parse(v2(0, 0, b"")) == ProxyInfo(None)          # LOCAL: a health check
    assert parse(v2(1, 0, b"")) == ProxyInfo(None)          # UNSPEC
    # TLVs after the addresses are allowed (and ignored).
    tlv = four[:14] + struct.pack("!H", 12 + 5) + four[16:] + b"\x01\x00\x02h2"
    assert parse(tlv).source == "192.0.2.7"


def test_v2_malformed() -> None:
    with pytest.raises(ProxyError):
        header_length(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 60000))  # too long
    with pytest.raises(ProxyError):
        parse(v2(1, 1, b"\x00" * 4))                         # IPv4 family, too short
    with pytest.raises(ProxyError):
        parse(V2_SIGNATURE + b"\x31\x11\x00\x00")            # version 3
    with pytest.raises(ProxyError):
        parse(v2(5, 1, b"\x00" * 12))                        # unknown command


def test_anything_else_is_not_a_proxy_header() -> None:
    for data in (b"\x16\x03\x01\x02", b"EHLO x\r\n", b"GET / HTTP/1.1\r\n"):
        with pytest.raises(ProxyError):
            header_length(data)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_length_none_or_a_proxy_error(data: bytes) -> None:
    try:
        n = header_length(data)
    except ProxyError:
        return
    if n is not None and len(data) >= n:
        with contextlib.suppress(ProxyError):
            parse(data[:n])
