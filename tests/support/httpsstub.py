"""A tiny HTTPS server on 127.0.0.1 for MTA-STS policy fetches (RFC 8461 §3.3) in tests.

    with HttpsStub(server_context(ca, "mta-sts.partner.test")) as web:
        web.respond("/.well-known/mta-sts.txt", POLICY)          # 200 text/plain
        web.respond(path, b"...", status=301, headers={"Location": "..."})
        web.stall = True                                          # accept, never answer

It runs in its own thread and loop; `requests` records (host header, path) of each request.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field

STALL_SECONDS = 3600.0


@dataclass
class Canned:
    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    chunked: bool = False
    length: bool = True  # False: no Content-Length, the body ends at EOF


class HttpsStub:
    host = "127.0.0.1"

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.port = 0
        self.routes: dict[str, Canned] = {}
        self.requests: list[tuple[str, str]] = []
        self.stall = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def respond(self, path: str, body: bytes | str, *, status: int = 200,
                headers: dict[str, str] | None = None, chunked: bool = False,
                length: bool = True) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = Canned(data, status, headers if headers is not None
                                   else {"Content-Type": "text/plain"}, chunked, length)

    def start(self) -> HttpsStub:
        self._thread = threading.Thread(target=self._run, name="httpsstub", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("HTTPS stub did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._shutdown)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> HttpsStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(
            self._client, self.host, 0, ssl=self.context))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _shutdown(self) -> None:
        assert self._loop is not None and self._server is not None
        self._server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_later(0.05, self._loop.stop)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            host = next((v.split(":", 1)[1].strip() for v in lines[1:]
                         if v.lower().startswith("host:")), "")
            self.requests.append((host, path))
            if self.stall:
                await asyncio.sleep(STALL_SECONDS)
            canned = self.routes.get(path, Canned(b"not found", 404))
            reason = {200: "OK", 404: "Not Found"}.get(canned.status, "Whatever")
            out = [f"HTTP/1.1 {canned.status} {reason}"]
            out += [f"{k}: {v}" for k, v in canned.headers.items()]
            if canned.chunked:
                out.append("Transfer-Encoding: chunked")
                half = len(canned.body) // 2
                parts = [canned.body[:half], canned.body[half:]]
                body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
            else:
                if canned.length:
                    out.append(f"Content-Length: {len(canned.body)}")
                body = canned.body
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
