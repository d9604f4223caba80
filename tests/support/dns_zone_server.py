"""A small authoritative DNS server on loopback (UDP and TCP), answering from a dict.

    zone = {"example.com": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "A": ["127.0.0.1"]}}
    with DnsZoneServer(zone) as server:
        resolver = make_resolver(["127.0.0.1"], port=server.port)

A name missing from the zone is NXDOMAIN; a name present without the asked type is an empty
NOERROR answer. Names in `silent` are never answered (to make resolvers time out) and names
in `servfail` get SERVFAIL. UDP answers that do not fit the client's buffer come back
truncated, so clients retry over TCP, as with a real server. `queries` records what was asked
(`tcp_queries` counts those that came over TCP).

The zone may be changed while the server runs. Built on dnspython's message and rdata code.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = Mapping[str, Mapping[str, Sequence[str]]]
TTL = 300
_POLL = 0.1  # how often the serving threads look at the stop flag, in seconds


def _txt_rdata(value: str) -> str:
    """A TXT value as zone-file text: quoted character-strings of at most 255 octets."""
    if value.startswith('"'):
        return value  # already in zone-file form
    raw = value.encode()
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for c in chunks)


# A UDP port is rarely free for TCP too when many tests hold connections: tried this often.
BIND_ATTEMPTS = 50


def bind_udp_tcp_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on one port number (a resolver falls back to
    TCP on the port it asked over UDP). The kernel picks a free UDP port; its TCP twin may be
    taken by another test's connection, so another pair is tried."""
    for _ in range(BIND_ATTEMPTS):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp
    raise OSError("no port free for both UDP and TCP on " + host)


class DnsZoneServer:
    def __init__(self, zone: Zone, host: str = "127.0.0.1") -> None:
        self.zone: dict[str, dict[str, list[str]]] = {
            k.lower().rstrip("."): {t.upper(): list(v) for t, v in types.items()}
            for k, types in zone.items()}
        self.silent: set[str] = set()
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.tcp_queries = 0
        self.host = host
        self._stop = threading.Event()
        self._udp, self._tcp = bind_udp_tcp_pair(host)
        self.port: int = self._udp.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> DnsZoneServer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> DnsZoneServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set(self, name: str, rdtype: str, values: Sequence[str]) -> None:
        self.zone.setdefault(name.lower().rstrip("."), {})[rdtype.upper()] = list(values)

    # -- answering ----------------------------------------------------------------------------

    def answer(self, wire: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        records = self.zone.get(name)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        values = records.get(rdtype, [])
        if values:
            texts = [_txt_rdata(v) if rdtype in ("TXT", "SPF") else v for v in values]
            response.answer.append(dns.rrset.from_text_list(
                question.name, TTL, dns.rdataclass.IN, question.rdtype, texts))
        return response

    def _serve_udp(self) -> None:
        self._udp.settimeout(_POLL)
        while not self._stop.is_set():
            try:
                wire, client = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            response = self.answer(wire)
            if response is None:
                continue
            limit = response.request_payload if response.request_payload >= 512 else 512
            try:
                out = response.to_wire(max_size=limit)
            except dns.exception.TooBig:
                response.answer.clear()
                response.flags |= dns.flags.TC  # RFC 1035 §4.2.1: ask again over TCP
                out = response.to_wire()
            with contextlib.suppress(OSError):
                self._udp.sendto(out, client)

    def _serve_tcp(self) -> None:
        self._tcp.settimeout(_POLL)
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError, struct.error):
                    while True:
                        head = _recv_exactly(conn, 2)
                        if head is None:
                            break
                        (length,) = struct.unpack("!H", head)
                        wire = _recv_exactly(conn, length)
                        if wire is None:
                            break
                        self.tcp_queries += 1
                        response = self.answer(wire)
                        if response is None:
                            break
                        out = response.to_wire()
                        conn.sendall(struct.pack("!H", len(out)) + out)


def _recv_exactly(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data
