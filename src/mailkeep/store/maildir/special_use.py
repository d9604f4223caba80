"""The account's `mailkeep-special-use` file: RFC 6154 special uses that clients gave to
folders (CREATE-SPECIAL-USE), and whether the account's default folders were made (blocking).

Folders named like a special use ("Sent", "Papierkorb", ...: proto/imap/specialuse.py) need
no entry; this file remembers only what a name cannot tell. Dovecot keeps special uses in its
configuration (per namespace, for every user alike) or, for CREATE ... USE, as a mailbox
attribute in a dictionary only when mail_attribute_dict is configured, with no default file
we could share; so the format is ours, small and line-based, beside `subscriptions`:

    mailkeep-special-use<TAB>1
    provisioned
    \\Sent<TAB>Gesendete Objekte
    \\Archive<TAB>Ablage<TAB>2026

Folder names are modified UTF-7 with the hierarchy delimiter written as a TAB (as in
`subscriptions`). Entries follow RENAME (the folder and its inferiors) and go with DELETE.
Rewritten under `mailkeep-special-use.lock` (into the lock file, fsync, rename).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mailkeep.fsmodes import make_private_dirs
from mailkeep.store import mutf7
from mailkeep.store.maildir.dotlock import Dotlock
from mailkeep.store.names import DELIMITER, folder_name, is_inferior

SPECIAL_USE_NAME = "mailkeep-special-use"
_HEADER = "mailkeep-special-use\t1"
_PROVISIONED = "provisioned"


@dataclass(slots=True)
class Table:
    provisioned: bool = False
    uses: dict[str, tuple[str, ...]] = field(default_factory=dict)  # folder -> uses


def read(root: Path) -> Table:
    """The file's content (an empty table when there is none); unreadable lines skipped."""
    try:
        text = (root / SPECIAL_USE_NAME).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return Table()
    table = Table()
    for line in text.split("\n")[1:]:
        if line == _PROVISIONED:
            table.provisioned = True
            continue
        use, sep, raw = line.partition("\t")
        if not sep or not use.startswith("\\"):
            continue
        try:
            name = folder_name(mutf7.decode(raw.replace("\t", DELIMITER)))
        except ValueError:
            continue
        if use not in table.uses.get(name, ()):
            table.uses[name] = (*table.uses.get(name, ()), use)
    return table


def _render(table: Table) -> bytes:
    lines = [_HEADER]
    if table.provisioned:
        lines.append(_PROVISIONED)
    for name, uses in sorted(table.uses.items()):
        encoded = mutf7.encode(name).replace(DELIMITER, "\t")
        lines += [f"{use}\t{encoded}" for use in uses]
    return ("\n".join(lines) + "\n").encode("ascii")


def set_uses(root: Path, folder: str, uses: Iterable[str]) -> None:
    name = folder_name(folder)
    wanted = tuple(dict.fromkeys(uses))
    make_private_dirs(root)
    with Dotlock(root, SPECIAL_USE_NAME) as lock:
        table = read(root)
        if table.uses.get(name, ()) == wanted:
            return
        if wanted:
            table.uses[name] = wanted
        else:
            table.uses.pop(name, None)
        lock.replace(_render(table))


def claim(root: Path) -> bool:
    """Mark the account provisioned; True if this call did it (it creates the defaults)."""
    make_private_dirs(root)
    with Dotlock(root, SPECIAL_USE_NAME) as lock:
        table = read(root)
        if table.provisioned:
            return False
        table.provisioned = True
        lock.replace(_render(table))
        return True


def renamed(root: Path, old: str, new: str) -> None:
    """RENAME moved `old` and its inferiors to `new`: their entries follow."""
    if not (root / SPECIAL_USE_NAME).exists():
        return
    with Dotlock(root, SPECIAL_USE_NAME) as lock:
        table = read(root)
        moving = [n for n in table.uses if n == old or is_inferior(n, old)]
        if not moving:
            return
        for name in moving:
            table.uses[new + name[len(old):]] = table.uses.pop(name)
        lock.replace(_render(table))


def deleted(root: Path, folder: str) -> None:
    """DELETE removed `folder` (its inferiors stay, RFC 3501 §6.3.4): its entry goes."""
    if not (root / SPECIAL_USE_NAME).exists():
        return
    with Dotlock(root, SPECIAL_USE_NAME) as lock:
        table = read(root)
        if table.uses.pop(folder, None) is not None:
            lock.replace(_render(table))
