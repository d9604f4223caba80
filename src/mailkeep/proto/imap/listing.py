"""LIST and LSUB name matching (RFC 3501 §6.3.8, §6.3.9) with "." as hierarchy delimiter.

"*" matches anything, "%" anything but the delimiter. The reference is joined to the
pattern as RFC 3501 §6.3.8 describes (reference "" or ending in "."); Maildir++ names are
all relative to the account root, so the joined name is matched against folder names.
"INBOX" matches case-insensitively (RFC 3501 §5.1).
"""

from __future__ import annotations

import re

DELIMITER = "."


def canonical_pattern(reference: str, pattern: str) -> str:
    if not reference:
        return pattern
    if pattern.startswith(DELIMITER) and reference.endswith(DELIMITER):
        return reference + pattern[1:]
    return reference + pattern


def compile_pattern(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def matches(regex: re.Pattern[str], name: str) -> bool:
    if regex.fullmatch(name):
        return True
    # RFC 3501 §5.1: INBOX is case-insensitive ("list "" inbox" finds it).
    return name == "INBOX" and re.fullmatch(regex.pattern, name, re.DOTALL | re.IGNORECASE) \
        is not None
