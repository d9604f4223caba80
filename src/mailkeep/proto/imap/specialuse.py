"""RFC 6154 special-use folders: which folder is Sent, Drafts, Trash, Junk, Archive.

A folder gets a special use when a client said so (CREATE ... (USE (\\Sent)), remembered by
the store), or by its name: for each use, the names configured in `[imap.special_use]` (or
the defaults below) are tried in order and the first that names an existing folder wins,
compared without regard to case, also under "INBOX." (Courier's Maildir++ layout). One folder
per use from names, so "Sent" and "Sent Items" side by side do not both claim \\Sent; a use
a client gave explicitly takes that use off the name-based guess.

The defaults cover what common clients create: Outlook ("Sent Items", "Deleted Items",
"Junk E-mail"), Apple Mail ("Sent Messages", "Deleted Messages"), Thunderbird and Dovecot's
example configuration ("Sent", "Drafts", "Trash", "Junk", "Archive"), Gmail-style "Spam",
and the German names of Thunderbird, Outlook and Apple Mail ("Gesendet", "Entwürfe",
"Papierkorb", "Gelöschte Elemente", "Archiv", ...). The first name of each list is the one
created for a new account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# RFC 6154 §2, in the order we create them (\All and \Flagged are virtual: not offered).
DRAFTS, SENT, TRASH, JUNK, ARCHIVE = "\\Drafts", "\\Sent", "\\Trash", "\\Junk", "\\Archive"
USES = (DRAFTS, SENT, TRASH, JUNK, ARCHIVE)
# The `[imap.special_use]` key of each use.
CONFIG_KEYS = {DRAFTS: "drafts", SENT: "sent", TRASH: "trash", JUNK: "junk",
               ARCHIVE: "archive"}
DEFAULT_NAMES: Mapping[str, tuple[str, ...]] = {
    DRAFTS: ("Drafts", "Draft", "Entwürfe", "Brouillons", "Borradores"),
    SENT: ("Sent", "Sent Items", "Sent Messages", "Sent Mail", "Gesendet",
           "Gesendete Objekte", "Gesendete Elemente", "Éléments envoyés", "Enviados"),
    TRASH: ("Trash", "Deleted Items", "Deleted Messages", "Papierkorb", "Gelöschte Elemente",
            "Gelöschte Objekte", "Corbeille", "Papelera"),
    JUNK: ("Junk", "Spam", "Junk E-mail", "Junk Email", "Bulk Mail", "Junk-E-Mail",
           "Unerwünscht", "Courrier indésirable"),
    ARCHIVE: ("Archive", "Archives", "Archiv"),
}


def resolve(folders: Iterable[str], explicit: Mapping[str, Iterable[str]],
            names: Mapping[str, tuple[str, ...]] = DEFAULT_NAMES) -> dict[str, list[str]]:
    """Folder -> its special uses. `folders`: the selectable folders; `explicit`: the uses
    clients gave (store.special_uses()); `names`: use -> candidate names in order."""
    existing = list(folders)
    present = set(existing)
    out: dict[str, list[str]] = {}
    claimed: set[str] = set()
    for folder, uses in explicit.items():
        if folder in present:
            for use in uses:
                out.setdefault(folder, []).append(use)
                claimed.add(use)
    by_fold: dict[str, str] = {}
    for folder in existing:
        by_fold.setdefault(folder.casefold(), folder)
    for use in USES:
        if use in claimed:
            continue
        found = _first(names.get(use, ()), present, by_fold)
        if found is not None and use not in out.get(found, []):
            out.setdefault(found, []).append(use)
    return out


def _first(candidates: tuple[str, ...], present: set[str], by_fold: dict[str, str]) -> str | None:
    for prefix in ("", "INBOX."):
        for name in candidates:
            wanted = prefix + name
            if wanted in present:
                return wanted
            folded = by_fold.get(wanted.casefold())
            if folded is not None:
                return folded
    return None


def missing(assigned: Mapping[str, Iterable[str]]) -> list[str]:
    """The uses no folder has (those a new account gets folders for)."""
    have = {u for uses in assigned.values() for u in uses}
    return [u for u in USES if u not in have]
