"""RFC 6855 UTF8=ACCEPT, as RFC 5161 ENABLE turns it on (condstore.enable() knows it).

The session keeps what it enabled (session.Authenticated / Selected `enabled`) for its whole
life; the machine parses the session's commands as UTF-8 from then on
(grammar.parse_command(utf8=True)) and the executor sends mailbox names as UTF-8
(ImapExecutor.wire_name).
"""

from __future__ import annotations

UTF8_ACCEPT = "UTF8=ACCEPT"
