"""A real DNS server on loopback for tests: UDP and TCP on one ephemeral port of 127.0.0.1.

Answers come from a small zone built in the test; dnspython builds the wire messages.

    zone = Zone()
    zone.mx("partner.test", (10, "mx1.partner.test"), (20, "mx2.partner.test"))
    zone.a("mx1.partner.test", "127.0.0.1")
    zone.txt("_mta-sts.partner.test", "v=STSv1; id=1")
    zone.servfail("broken.test")
    with DnsStub(zone) as dns:
        config = {"dns_servers": [dns.address], ...}

A name with records (or below a name with records) that lacks the asked type answers NOERROR
with no data (NODATA); any other name answers NXDOMAIN. `servfail` names answer SERVFAIL;
`slow` names (or `stub.delay` for all) answer late, or never with math.inf; `truncate_udp`
answers every UDP query with TC set so the client must retry over TCP. Every query is recorded
in `stub.queries` as (name, type, "udp"|"tcp").
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.support.dns_zone_server import bind_udp_tcp_pair

TTL = 300


def _key(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass
class Zone:
    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    nxdomain_names: set[str] = field(default_factory=set)
    servfail_names: set[str] = field(default_factory=set)
    slow_names: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, rtype: str, *rdata: str) -> Zone:
        self.records.setdefault((_key(name), rtype.upper()), []).extend(rdata)
        return self

    def mx(self, name: str, *pairs: tuple[int, str]) -> Zone:
        return self.add(name, "MX", *(f"{pref} {host.rstrip('.')}." for pref, host in pairs))

    def null_mx(self, name: str) -> Zone:
        """RFC 7505: `0 .` - the domain accepts no mail."""
        return self.add(name, "MX", "0 .")

    def a(self, name: str, *addresses: str) -> Zone:
        return self.add(name, "A", *addresses)

    def aaaa(self, name: str, *addresses: str) -> Zone:
        return self.add(name, "AAAA", *addresses)

    def cname(self, name: str, target: str) -> Zone:
        return self.add(name, "CNAME", target.rstrip(".") + ".")

    def txt(self, name: str, *strings: str) -> Zone:
        """One TXT record per string (each quoted as one character-string)."""
        quoted = ['"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings]
        return self.add(name, "TXT", *quoted)

    def nxdomain(self, name: str) -> Zone:
        self.nxdomain_names.add(_key(name))
        return self

    def servfail(self, name: str) -> Zone:
        self.servfail_names.add(_key(name))
        return self

    def slow(self, name: str, seconds: float = math.inf) -> Zone:
        self.slow_names[_key(name)] = seconds
        return self

    def remove(self, name: str, rtype: str | None = None) -> Zone:
        for key in list(self.records):
            if key[0] == _key(name) and (rtype is None or key[1] == rtype.upper()):
                del self.records[key]
        return self

    def exists(self, name: str) -> bool:
        name = _key(name)
        return any(n == name or n.endswith("." + name) for n, _ in self.records)


class DnsStub:
    """The zone served on 127.0.0.1:<port> over UDP and TCP, from a thread of its own."""

    host = "127.0.0.1"

    def __init__(self, zone: Zone | None = None) -> None:
        self.zone = zone or Zone()
        self.port = 0
        self.delay = 0.0
        self.truncate_udp = False
        self.queries: list[tuple[str, str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        """The server as delivery.dns_servers wants it: "127.0.0.1:PORT"."""
        return f"{self.host}:{self.port}"

    def start(self) -> DnsStub:
        self._thread = threading.Thread(target=self._run, name="dnsstub", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("DNS stub did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> DnsStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def asked(self, name: str, rtype: str | None = None) -> int:
        """How many queries for this name (and type) arrived."""
        return sum(1 for n, t, _ in self.queries
                   if n == _key(name) and (rtype is None or t == rtype.upper()))

    # -- server side, on the stub's own loop ------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        udp_transport, tcp_server = await self._bind()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            udp_transport.close()
            tcp_server.close()
            await tcp_server.wait_closed()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

    async def _bind(self) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = bind_udp_tcp_pair(self.host)
        tcp_server = await asyncio.start_server(self._tcp_client, sock=tcp_sock)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), sock=udp_sock)
        self.port = udp_sock.getsockname()[1]
        return transport, tcp_server

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readexactly(2)
                    wire = await reader.readexactly(struct.unpack("!H", head)[0])
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                reply = await self.answer(wire, "tcp")
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        finally:
            writer.close()

    async def answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # garbage: no answer, like a real server under attack
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        rtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rtype, transport))
        delay = self.zone.slow_names.get(name, self.delay)
        if delay == math.inf:
            return None
        if delay > 0:
            await asyncio.sleep(delay)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if transport == "udp" and self.truncate_udp:
            response.flags |= dns.flags.TC
            return response.to_wire()
        self._fill(response, name, rtype)
        return response.to_wire()

    def _fill(self, response: Any, name: str, rtype: str) -> None:
        zone = self.zone
        if name in zone.servfail_names:
            response.set_rcode(dns.rcode.SERVFAIL)
            return
        seen: set[str] = set()
        while rtype != "CNAME" and (name, "CNAME") in zone.records and name not in seen:
            seen.add(name)
            target = zone.records[(name, "CNAME")][0]
            response.answer.append(dns.rrset.from_text(name + ".", TTL, "IN", "CNAME", target))
            name = _key(target)
        if name in zone.servfail_names:
            response.set_rcode(dns.rcode.SERVFAIL)
            return
        rdata = zone.records.get((name, rtype))
        if rdata:
            response.answer.append(dns.rrset.from_text_list(name + ".", TTL, "IN", rtype, rdata))
        elif name in zone.nxdomain_names or not zone.exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, stub: DnsStub) -> None:
        self.stub = stub
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.stub.answer(data, "udp")
        if reply is not None and self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(reply, addr)


@contextlib.contextmanager
def running(zone: Zone) -> Iterator[DnsStub]:
    with DnsStub(zone) as stub:
        yield stub
