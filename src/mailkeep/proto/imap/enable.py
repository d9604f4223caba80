"""RFC 5161 ENABLE: the extensions a session may turn on, and what it is told.

Here: UTF8=ACCEPT (RFC 6855). The session keeps what it enabled (session.Authenticated /
Selected `enabled`) for its whole life; the machine parses the session's commands as UTF-8
from then on (grammar.parse_command(utf8=True)) and the executor sends mailbox names as
UTF-8 (ImapExecutor.wire_name).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mailkeep.proto.imap.render import untagged

UTF8_ACCEPT = "UTF8=ACCEPT"
# RFC 5161 §3.1: what ENABLE may turn on here; any other name is ignored ("the server MUST
# ignore ... capabilities it does not support").
ENABLEABLE = frozenset({UTF8_ACCEPT})


def enable(requested: Iterable[str], enabled: frozenset[str]) -> tuple[frozenset[str],
                                                                       list[str]]:
    """The session's new enabled set, and what to list in "* ENABLED": the known
    capabilities this command turned on (unknown and already enabled ones are not listed,
    RFC 5161 §3.1, §3.2)."""
    now = set(enabled)
    listed: list[str] = []
    for name in requested:
        cap = name.upper()
        if cap in ENABLEABLE and cap not in now:
            now.add(cap)
            listed.append(cap)
    return frozenset(now), listed


def enabled_response(listed: Sequence[str]) -> bytes:
    """RFC 5161 §3.2: "* ENABLED" with the capabilities enabled (possibly none)."""
    return untagged(" ".join(["ENABLED", *listed]))
