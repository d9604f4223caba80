"""IMAP flags <-> the maildir info suffix ":2,LETTERS", and the dovecot-keywords file.

maildir(5) letters, in ASCII order after ":2,": D draft, F flagged, P passed (resent; no
IMAP flag), R replied (\\Answered), S seen, T trashed (\\Deleted). Dovecot adds keywords as
the lowercase letters a..z, each an index into the folder's `dovecot-keywords` file:

    0 $Label1
    1 Junk

(one "index name" line per keyword; Dovecot wiki "MailboxFormat/Maildir", "IMAP keywords").
Letters we do not know (P, or another writer's) are kept as they are when flags change.
The file is rewritten like the index: under `dovecot-keywords.lock`, new content written into
the lock file, fsync, rename (Dovecot's maildir-keywords.c uses the same dotlock).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from mailkeep.store.base import KeywordLimit
from mailkeep.store.maildir.dotlock import Dotlock
from mailkeep.store.names import MAX_KEYWORDS

KEYWORDS_NAME = "dovecot-keywords"
LETTER_TO_FLAG = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                  "T": "\\Deleted"}
FLAG_TO_LETTER = {v: k for k, v in LETTER_TO_FLAG.items()}
_KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def read_keywords(root: Path) -> dict[int, str]:
    """index -> keyword name from `dovecot-keywords` (empty when there is none)."""
    try:  # a plain path, not pathlib: this runs at every snapshot and flag change
        with open(f"{root}/{KEYWORDS_NAME}", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return {}
    found: dict[int, str] = {}
    for line in text.split("\n"):
        idx, sep, name = line.partition(" ")
        if sep and idx.isdigit() and name and int(idx) < MAX_KEYWORDS:
            found[int(idx)] = name
    return found


def _render(keywords: Mapping[int, str]) -> bytes:
    return "".join(f"{i} {name}\n" for i, name in sorted(keywords.items())).encode("utf-8")


def allocate(root: Path, names: Iterable[str]) -> dict[int, str]:
    """Make sure every keyword in `names` has an index in this folder; the whole table.

    KeywordLimit when the 26 letters run out (Dovecot would keep the extra ones only in its
    own index; we refuse rather than lose them silently)."""
    wanted = set(names)
    current = read_keywords(root)
    if wanted <= set(current.values()):
        return current
    with Dotlock(root, KEYWORDS_NAME) as lock:
        current = read_keywords(root)
        missing = sorted(wanted - set(current.values()))
        free = [i for i in range(MAX_KEYWORDS) if i not in current]
        if len(missing) > len(free):
            raise KeywordLimit(f"too many keywords (a folder holds {MAX_KEYWORDS})")
        for idx, name in zip(free, missing, strict=False):
            current[idx] = name
        lock.replace(_render(current))
    return current


def from_info(letters: str, keywords: Mapping[int, str]) -> frozenset[str]:
    """":2," letters -> IMAP flags (keywords missing from the table are dropped)."""
    flags: set[str] = set()
    for ch in letters:
        if ch in LETTER_TO_FLAG:
            flags.add(LETTER_TO_FLAG[ch])
        elif "a" <= ch <= "z":
            name = keywords.get(ord(ch) - ord("a"))
            if name is not None:
                flags.add(name)
    return frozenset(flags)


def to_info(flags: Iterable[str], keywords: Mapping[int, str], keep: str = "") -> str:
    """IMAP flags -> ":2," letters in ASCII order. `keep` are the old letters: letters we do
    not manage (P, unknown ones) survive. Every keyword must be in the table (allocate)."""
    index = {name: i for i, name in keywords.items()}
    letters = {ch for ch in keep if ch not in FLAG_TO_LETTER.values()
               and not ("a" <= ch <= "z")}
    for flag in flags:
        if flag in FLAG_TO_LETTER:
            letters.add(FLAG_TO_LETTER[flag])
        elif not flag.startswith("\\"):
            letters.add(_KEYWORD_LETTERS[index[flag]])
    return "".join(sorted(letters))


def filename(base: str, letters: str) -> str:
    return f"{base}:2,{letters}"
