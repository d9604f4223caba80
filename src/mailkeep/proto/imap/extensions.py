"""What the IMAP machine says about the extensions it offers: the capability names beyond
RFC 3501's, and the RFC 2971 ID answer. Kept here so that machine.py only asks."""

from __future__ import annotations

from mailkeep import __version__
from mailkeep.proto.imap.events import State
from mailkeep.proto.imap.values import Value

IMPLEMENTATION = "mailkeep"


def capabilities(state: State, *, max_literal: int) -> list[str]:
    """The extension capabilities for this state (each one complete and tested)."""
    caps = [
        "ID",                                   # RFC 2971
        "MOVE",                                 # RFC 6851
        "SPECIAL-USE", "CREATE-SPECIAL-USE",    # RFC 6154
        "LIST-EXTENDED", "LIST-STATUS",         # RFC 5258, RFC 5819
        # RFC 9208 §3.1: one QUOTA=RES-* per resource; no QUOTASET (no SETQUOTA).
        "QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE",
        # RFC 7889 §3: the largest message APPEND takes (the literal limit once logged in).
        f"APPENDLIMIT={max_literal}",
        "MULTIAPPEND",                          # RFC 3502
        "UTF8=ACCEPT",                          # RFC 6855, by ENABLE (proto/imap/enable.py)
    ]
    if state in (State.AUTHENTICATED, State.SELECTED):
        # RFC 4978; offered only after login (see machine._cmd_compress).
        caps.append("COMPRESS=DEFLATE")
    return caps


def id_response() -> list[Value]:
    """RFC 2971 §3.2: our name and version; nothing about the host or its OS (§7: "it is
    unwise to send information about the server's operating system")."""
    return [["name", IMPLEMENTATION, "version", __version__]]


def id_for_log(fields: tuple[tuple[str, str | None], ...] | None) -> str:
    """The client's ID as one log field: printable ASCII only, each string repr()-escaped
    (a client controls these strings; they must not forge log lines)."""
    if fields is None:
        return "NIL"
    return " ".join(f"{_escape(k)}={_escape(v)}" for k, v in fields)


def _escape(text: str | None) -> str:
    if text is None:
        return "NIL"
    return ascii(text)
