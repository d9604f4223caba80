"""The admin listener's site, decided without I/O (server/admin.py speaks HTTP and computes
what the endpoints report):

    /metrics   the daemon's metrics, Prometheus text format (or OpenMetrics on request)
    /healthz   200 while the process and its event loop run (liveness)
    /readyz    200 when every listener is bound, the mail storage writable and the user
               directory reachable; otherwise 503 listing what failed (readiness)

Nothing else: any other path is 404. GET and HEAD only; nothing here changes anything.
"""

from __future__ import annotations

import enum
from http import HTTPStatus

from mailkeep.proto.http import READ_METHODS, Answer, allow, plain, split_target


class Endpoint(enum.Enum):
    METRICS = "/metrics"
    HEALTH = "/healthz"
    READY = "/readyz"


_PATHS = {e.value: e for e in Endpoint}


def route(method: str, target: str) -> Endpoint | Answer:
    """The endpoint a request names, or the error answer (400, 404, 405)."""
    split = split_target(target)
    if method not in READ_METHODS:
        # RFC 9110 §15.5.6: 405 with the methods the resource has.
        return plain(HTTPStatus.METHOD_NOT_ALLOWED, headers=allow(READ_METHODS))
    if split is None:
        return plain(HTTPStatus.BAD_REQUEST, close=True)
    endpoint = _PATHS.get(split[0])
    if endpoint is None:
        return plain(HTTPStatus.NOT_FOUND)
    return endpoint


def health() -> Answer:
    return Answer(HTTPStatus.OK, b"ok\n")


def readiness(problems: list[str]) -> Answer:
    """200 "ready", or 503 with one failed check a line (plain text, for a person and for
    a probe that only reads the status)."""
    if not problems:
        return Answer(HTTPStatus.OK, b"ready\n")
    text = "not ready:\n" + "".join(f"- {p}\n" for p in problems)
    return Answer(HTTPStatus.SERVICE_UNAVAILABLE, text.encode("utf-8", "replace"))


def metrics(body: bytes, content_type: str) -> Answer:
    return Answer(HTTPStatus.OK, body, content_type)
