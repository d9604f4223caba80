"""Client-supplied text on its way to a reply or a log line: control characters escaped.

A client can put ESC, BEL or backspace into a command; echoed raw, they reach an
administrator's terminal (log tail) or a client's error box as escape sequences. They are
written as \\xNN instead.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def printable(text: str) -> str:
    """`text` with every C0 control character and DEL written as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
