"""The PROXY protocol header (HAProxy's "The PROXY protocol", versions 1 and 2), sans-IO.

A load balancer or container runtime in front of mailkeep connects on the client's behalf;
with `proxy_protocol = true` on a listener it first sends one header naming the real client:

    v1: "PROXY TCP4 192.0.2.7 198.51.100.1 56324 993\\r\\n"   (text, at most 107 octets)
    v2: "\\r\\n\\r\\n\\x00\\r\\nQUIT\\n" + version/command + family + length + addresses + TLVs

    need = header_length(peek)      # None: need more octets; an int: the header's length
    info = parse(header)            # ProxyInfo, or ProxyError

LOCAL (v2) and UNKNOWN (v1) connections come from the proxy itself (health checks): the
proxy's own address stands. Anything malformed is a ProxyError and the connection is closed.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# The spec, section 2.1: a v1 header is at most 107 octets including CRLF.
V1_MAX = 107
# Section 2.2: the v2 length field is 16 bits; we accept at most this much (addresses and a
# few TLVs): a trusted proxy has no reason to send more.
V2_MAX_PAYLOAD = 1024
_V1_PREFIX = b"PROXY "


class ProxyError(ValueError):
    """Not a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """The real client (None: use the connecting peer, e.g. a proxy's health check)."""

    source: str | None
    source_port: int | None = None
    destination: str | None = None
    destination_port: int | None = None


def header_length(data: bytes) -> int | None:
    """How long the header at the start of `data` is, or None while more is needed.
    ProxyError when `data` cannot start a header."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        if len(data) < 16:
            return None
        length = int.from_bytes(data[14:16], "big")
        if length > V2_MAX_PAYLOAD:
            raise ProxyError(f"PROXY v2 header of {length} octets is too long")
        return 16 + length
    if data[:len(_V1_PREFIX)] == _V1_PREFIX[:len(data)]:
        end = data.find(b"\r\n")
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX:
            raise ProxyError("PROXY v1 header without CRLF within 107 octets")
        return None
    raise ProxyError("the connection did not start with a PROXY header")


def _address(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"{text!r} is not an IP address") from None
    if ip.version != version:
        raise ProxyError(f"{text!r} is not an IPv{version} address")
    return str(ip)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or \
            (text.startswith("0") and text != "0"):
        raise ProxyError(f"{text!r} is not a port")
    return int(text)


def parse_v1(header: bytes) -> ProxyInfo:
    if not header.endswith(b"\r\n") or len(header) > V1_MAX:
        raise ProxyError("malformed PROXY v1 header")
    try:
        words = header[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 header is not ASCII") from None
    if len(words) >= 2 and words[:2] == ["PROXY", "UNKNOWN"]:
        return ProxyInfo(None)  # the proxy's own connection
    if len(words) != 6 or words[0] != "PROXY" or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError("malformed PROXY v1 header")
    version = 4 if words[1] == "TCP4" else 6
    return ProxyInfo(_address(words[2], version), _port(words[4]),
                     _address(words[3], version), _port(words[5]))


def parse_v2(header: bytes) -> ProxyInfo:
    if len(header) < 16 or not header.startswith(V2_SIGNATURE):
        raise ProxyError("malformed PROXY v2 header")
    version, command = header[12] >> 4, header[12] & 0x0F
    if version != 2:
        raise ProxyError(f"PROXY v2 header with version {version}")
    family, transport = header[13] >> 4, header[13] & 0x0F
    (length,) = struct.unpack("!H", header[14:16])
    payload = header[16:16 + length]
    if len(payload) != length:
        raise ProxyError("PROXY v2 header truncated")
    if command == 0x0:  # LOCAL: the proxy's own connection (health check)
        return ProxyInfo(None)
    if command != 0x1:
        raise ProxyError(f"PROXY v2 command {command} unknown")
    if transport not in (0x1, 0x2):  # STREAM or DGRAM; we only serve TCP
        return ProxyInfo(None)
    if family == 0x1 and length >= 12:    # AF_INET
        src, dst = payload[0:4], payload[4:8]
        sport, dport = struct.unpack("!HH", payload[8:12])
        return ProxyInfo(str(ipaddress.IPv4Address(src)), sport,
                         str(ipaddress.IPv4Address(dst)), dport)
    if family == 0x2 and length >= 36:    # AF_INET6
        src, dst = payload[0:16], payload[16:32]
        sport, dport = struct.unpack("!HH", payload[32:36])
        return ProxyInfo(str(ipaddress.IPv6Address(src)), sport,
                         str(ipaddress.IPv6Address(dst)), dport)
    if family == 0x0:                     # AF_UNSPEC
        return ProxyInfo(None)
    raise ProxyError(f"PROXY v2 address family {family} with {length} octets not usable")


def parse(header: bytes) -> ProxyInfo:
    if header.startswith(V2_SIGNATURE):
        return parse_v2(header)
    return parse_v1(header)
