"""Folder names and flag names as every store accepts them (the Maildir and memory stores
share these rules, so the oracle refuses exactly what the real store refuses).

Folder names follow Dovecot's Maildir++ rules (hierarchy delimiter "."):
- "INBOX" is case-insensitive (RFC 3501 §5.1) and so is a leading "INBOX." component;
- no "/" (a path escape), no control characters, no leading "." or "~", no empty
  components ("a..b"), no trailing "." (CREATE strips one first: RFC 3501 §6.3.3);
- each component fits a directory name once encoded in modified UTF-7.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailkeep.store import mutf7
from mailkeep.store.base import InvalidName, StoreRefusal

INBOX = "INBOX"
DELIMITER = "."
# NAME_MAX of Linux filesystems is 255 octets; the Maildir++ directory is "." + the encoded
# name, so the whole encoded name must fit in 254 (Dovecot's MAILBOX_LIST_NAME_MAX_LENGTH is
# 4096 but the filesystem refuses sooner).
MAX_ENCODED_NAME = 254

# RFC 3501 §2.3.2 system flags, by lower-cased name. \Recent is session state, never stored.
SYSTEM_FLAGS = {f.lower(): f for f in
                ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
RECENT = "\\Recent"
# RFC 3501 §9 atom-specials, minus "]" is still refused (resp-specials) in a flag-keyword.
_KEYWORD_FORBIDDEN = set('(){ %*"\\]')
# Dovecot's maildir keywords: letters a..z in the info suffix, so 26 per folder.
MAX_KEYWORDS = 26


def folder_name(name: str, *, creating: bool = False) -> str:
    """The canonical form of a folder name, or InvalidName (a NO for the client)."""
    if creating and name.endswith(DELIMITER) and len(name) > 1:
        name = name[:-1]  # RFC 3501 §6.3.3: "foo." declares intent; create "foo"
    if not name:
        raise InvalidName("empty mailbox name")
    if name.upper() == INBOX:
        return INBOX
    if "/" in name:
        raise InvalidName("mailbox name must not contain '/'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidName("mailbox name contains control characters")
    if name.startswith(DELIMITER):
        raise InvalidName("mailbox name begins with the hierarchy delimiter")
    if name.startswith("~"):
        raise InvalidName("mailbox name begins with '~'")
    parts = name.split(DELIMITER)
    if any(not p for p in parts):
        raise InvalidName("mailbox name has an empty hierarchy level")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    canonical = DELIMITER.join(parts)
    if len(mutf7.encode(canonical).encode("ascii")) > MAX_ENCODED_NAME:
        raise InvalidName("mailbox name too long")
    return canonical


def parent_names(name: str) -> list[str]:
    """"a.b.c" -> ["a", "a.b"]."""
    parts = name.split(DELIMITER)
    return [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


def is_inferior(name: str, ancestor: str) -> bool:
    return name.startswith(ancestor + DELIMITER)


def flag_name(flag: str) -> str:
    """A system flag in its canonical case, or a keyword as given. InvalidName otherwise."""
    if flag.startswith("\\"):
        canonical = SYSTEM_FLAGS.get(flag.lower())
        if canonical is None:
            raise InvalidName(f"unknown system flag {flag!r}")
        return canonical
    if not flag or any(c in _KEYWORD_FORBIDDEN or ord(c) <= 0x20 or ord(c) >= 0x7F
                       for c in flag):
        raise InvalidName(f"invalid keyword {flag!r}")
    return flag


def flag_set(flags: Iterable[str]) -> frozenset[str]:
    """Canonical flags; \\Recent is dropped (RFC 3501 §2.3.2: it cannot be stored)."""
    return frozenset(flag_name(f) for f in flags if f.lower() != RECENT.lower())


def keywords_of(flags: Iterable[str]) -> set[str]:
    return {f for f in flags if not f.startswith("\\")}


def same_folder(name: str, selected: str) -> bool:
    """Does a command's mailbox name the selected folder? (yes when it cannot be told)"""
    try:
        return folder_name(name) == folder_name(selected)
    except StoreRefusal:
        return True
