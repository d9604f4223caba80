"""One bounded HTTPS GET, enough to fetch an MTA-STS policy (RFC 8461 §3.3).

No HTTP client is a dependency of mailkeep, and the need is narrow: one request, no redirects,
a small body. HTTP/1.0 with `Connection: close` keeps the response simple: RFC 9112 §6.1 forbids
a server to send Transfer-Encoding to a 1.0 client, so the body is Content-Length octets or all
octets to EOF (chunked is still decoded, for servers that send it anyway).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

# RFC 9112 has no header size limit; 16 KiB is nginx's large_client_header_buffers scale and
# far above what a policy server sends.
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_LINES = 100


class FetchError(Exception):
    """The resource could not be fetched (network, TLS, HTTP status, size, format)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes


async def https_get(address: str, port: int, host: str, path: str, *, context: ssl.SSLContext,
                    timeout: float, max_body: int) -> Response:
    """GET https://host{path} from `address`, the certificate checked against `host`."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                address, port, ssl=context, server_hostname=host)
            try:
                request = (f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                           "User-Agent: mailkeep\r\nAccept: text/plain\r\n"
                           "Connection: close\r\n\r\n")
                writer.write(request.encode("ascii"))
                await writer.drain()
                return await _read_response(reader, max_body)
            finally:
                # The response is read (or given up on): no TLS close_notify exchange, which
                # would outlive the timeout on a stalled or hostile server.
                writer.transport.abort()
    except TimeoutError:
        raise FetchError(f"no complete answer within {timeout:g} s") from None
    except ssl.SSLError as exc:
        raise FetchError(f"TLS: {exc.reason or exc}") from None
    except OSError as exc:
        raise FetchError(f"connection failed: {exc.strerror or exc}") from None
    except asyncio.IncompleteReadError:
        raise FetchError("connection closed before the response was complete") from None


async def _read_response(reader: asyncio.StreamReader, max_body: int) -> Response:
    status_line = await _line(reader)
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise FetchError(f"not an HTTP response: {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    total = len(status_line)
    for _ in range(MAX_HEADER_LINES):
        line = await _line(reader)
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise FetchError(f"response header over {MAX_HEADER_BYTES} bytes")
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep:
            raise FetchError(f"malformed header line {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    else:
        raise FetchError(f"more than {MAX_HEADER_LINES} header lines")

    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _chunked(reader, max_body)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise FetchError("malformed Content-Length") from None
        if length > max_body:
            raise FetchError(f"body of {length} bytes is over the {max_body}-byte limit")
        body = await reader.readexactly(length)
    else:
        body = await reader.read(max_body + 1)
        while len(body) <= max_body:
            more = await reader.read(max_body + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > max_body:
            raise FetchError(f"body over the {max_body}-byte limit")
    return Response(status, headers, body)


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise FetchError("header line too long") from None
    return raw.decode("latin-1").rstrip("\r\n")


async def _chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = b""
    while True:
        size_line = await _line(reader)
        try:
            size = int(size_line.split(";", 1)[0].strip(), 16)
        except ValueError:
            raise FetchError("malformed chunk size") from None
        if size == 0:
            return body
        if len(body) + size > max_body:
            raise FetchError(f"body over the {max_body}-byte limit")
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # CRLF after the chunk
