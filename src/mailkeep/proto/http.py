"""What every small HTTP site of the daemon shares, decided without I/O: the answer a driver
sends (server/http.py speaks HTTP/1.1 with h11 and asks a site's router for it), short
text answers for errors, and the request target split into path and query.

The sites: account autoconfiguration (proto/autoconfig_routes.py) and the administration
endpoints (proto/admin_routes.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
READ_METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP response to send: status, body (left out for HEAD by the driver), headers."""

    status: int
    body: bytes
    content_type: str = TEXT_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = field(default=())
    # The request was not understood: the connection is closed after the answer.
    close: bool = False

    @property
    def reason(self) -> str:
        return HTTPStatus(self.status).phrase


@dataclass(frozen=True, slots=True)
class Request:
    """One complete HTTP request as the driver read it. Field names are lower-case
    (RFC 9110 §5.1: they are case-insensitive); values are latin-1 text (RFC 9110 §5.5)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of a field, or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)


def plain(status: int, *, close: bool = False,
          headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    """A short text answer for errors: the status line again, nothing about the server."""
    text = f"{status} {HTTPStatus(status).phrase}\n".encode()
    return Answer(status, text, headers=headers, close=close)


def allow(methods: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """RFC 9110 §10.2.1: the Allow field of a 405."""
    return (("Allow", ", ".join(methods)),)


def split_target(target: str) -> tuple[str, str] | None:
    """(path, query) of an origin-form or absolute-form request target, else None.
    RFC 9112 §3.2.2: a server MUST accept the absolute-form, which clients send through
    proxies; the host it names is not ours to check (every name of ours gets the same)."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    if target[:7].lower() == "http://" or target[:8].lower() == "https://":
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    return None
