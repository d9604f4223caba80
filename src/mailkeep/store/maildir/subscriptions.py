"""The account's `subscriptions` file, as Dovecot 2.3 reads and writes it (blocking).

Version 2 (Dovecot 2.2+, subscription-file.c): a header line "V\\t2", an empty line, then one
mailbox per line, in modified UTF-7, with the hierarchy delimiter written as a TAB:

    V<TAB>2
    <empty>
    Sent
    Archive<TAB>2026
    Entw&APw-rfe

Version 1 (no header, "." delimiter) is read too. Rewritten under `subscriptions.lock`
(written into the lock file, fsync, rename), like the index.
"""

from __future__ import annotations

from pathlib import Path

from mailkeep.fsmodes import make_private_dirs
from mailkeep.store import mutf7
from mailkeep.store.maildir.dotlock import Dotlock
from mailkeep.store.names import DELIMITER, folder_name

SUBSCRIPTIONS_NAME = "subscriptions"
_HEADER = "V\t2"


def read(root: Path) -> list[str]:
    """Subscribed names (decoded, canonical) in file order; unreadable lines are skipped."""
    try:
        text = (root / SUBSCRIPTIONS_NAME).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    v2 = lines[0] == _HEADER
    if v2:
        lines = lines[2:] if len(lines) > 1 and lines[1] == "" else lines[1:]
    out: list[str] = []
    for line in lines:
        if not line:
            continue
        raw = line.replace("\t", DELIMITER) if v2 else line
        try:
            name = folder_name(mutf7.decode(raw))
        except ValueError:
            continue
        if name not in out:
            out.append(name)
    return out


def _render(names: list[str]) -> bytes:
    body = "".join(mutf7.encode(n).replace(DELIMITER, "\t") + "\n" for n in names)
    return f"{_HEADER}\n\n{body}".encode("ascii")


def change(root: Path, name: str, subscribe: bool) -> bool:
    """Subscribe or unsubscribe one name. Returns whether the set changed."""
    name = folder_name(name)
    make_private_dirs(root)
    with Dotlock(root, SUBSCRIPTIONS_NAME) as lock:
        names = read(root)
        if subscribe == (name in names):
            return False
        if subscribe:
            names.append(name)
        else:
            names.remove(name)
        lock.replace(_render(names))
        return True
