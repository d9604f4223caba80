"""server/quickack.py on real loopback TCP connections, plain and TLS, under asyncio and
uvloop: after a go-ahead is written, the server's socket is out of Linux's interactive
("pingpong") delayed-ACK mode, which TCP_QUICKACK reads back as 1 (tcp(7)). What this saves
(40 ms per imaplib APPEND, per SMTP DATA whose final dot comes in a second write) is
measured in docs/benchmarks.md, not asserted here."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trustme
import uvloop

from mailkeep.server.quickack import ack_next_input

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux only")

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(kind: str, main: Callable[[], Coroutine[Any, Any, list[int]]]) -> list[int]:
    loop = LOOPS[kind]()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("tls", [False, True])
@pytest.mark.parametrize("kind", list(LOOPS))
def test_go_ahead_leaves_pingpong_mode(kind: str, tls: bool, ca: trustme.CA) -> None:
    server_ctx = client_ctx = None
    if tls:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)

    async def main() -> list[int]:
        seen: list[int] = []
        done = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            for _ in range(3):
                await reader.readline()
                writer.write(b"+ go ahead\r\n")
                ack_next_input(writer.transport)
                seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
            writer.close()
            done.set()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx,
            server_hostname="localhost" if tls else None)
        for i in range(3):
            writer.write(b"a%d APPEND INBOX {10}\r\n" % i)
            assert (await reader.readline()).startswith(b"+")
        await done.wait()
        writer.close()
        server.close()
        await server.wait_closed()
        return seen

    assert run(kind, main) == [1, 1, 1]


def test_no_socket_is_no_error() -> None:
    class Pipe:
        def get_extra_info(self, name: str) -> None:
            return None

    ack_next_input(Pipe())
    ack_next_input(None)
