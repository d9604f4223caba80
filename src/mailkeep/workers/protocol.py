"""The coordinator's wire format: one JSON array per SOCK_SEQPACKET message.

A request is [op, args...]; the reply is one JSON value. JSON, never pickle: a worker
serves untrusted clients, and a compromised worker must not be able to run code in the
parent. Every request is checked against OPS (argument count and types, string lengths)
before it touches a counter.
"""

from __future__ import annotations

import json
from typing import Any

# One message at most (the longest request names a listener, an account and an address).
MAX_MESSAGE = 4096
# Longest string argument: an account name, an address or a listener name.
MAX_ARG = 512

# op -> the types of its arguments.
OPS: dict[str, tuple[type, ...]] = {
    "budget.acquire": (str,), "budget.release": (str,), "budget.count": (str,),
    "throttle.check": (str,), "throttle.begin": (str,), "throttle.end": (str, bool),
    "throttle.failure": (str,),
    "sessions.acquire": (str, str), "sessions.release": (str, str),
    "sessions.count": (str, str),  # "" for "every address"
    "rate.allow": (str, str),
    "ready": (dict,),
}


class BadRequest(Exception):
    """A request that is not one of OPS with the right arguments."""


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def decode_request(data: bytes) -> tuple[str, list[Any]]:
    """[op, args...] checked against OPS; BadRequest for anything else."""
    if len(data) > MAX_MESSAGE:
        raise BadRequest("too long")
    try:
        raw = json.loads(data)
    except ValueError:
        raise BadRequest("not JSON") from None
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise BadRequest("not [op, args...]")
    op, args = raw[0], raw[1:]
    kinds = OPS.get(op)
    if kinds is None or len(args) != len(kinds):
        raise BadRequest(f"unknown op or wrong arguments: {op[:40]!r}")
    for arg, kind in zip(args, kinds, strict=True):
        if not isinstance(arg, kind) or (isinstance(arg, str) and len(arg) > MAX_ARG):
            raise BadRequest(f"{op}: bad argument")
    return op, args
