"""Maildir++ folders of one account (blocking: run off the event loop).

The account directory is the INBOX Maildir; folder "Archive.2026" is the directory
".Archive.2026" beside INBOX's tmp/ new/ cur/, its name in modified UTF-7 exactly as Dovecot
writes it ("Entwürfe" -> ".Entw&APw-rfe"). Decisions, all as Dovecot 2.3 does them:

- Parents are implicit (RFC 3501 §6.3.3 "SHOULD create superior names"): CREATE a.b makes
  only ".a.b"; "a" is listed without a directory as \\Noselect with children. CREATE a later
  makes it a real folder.
- DELETE removes the folder's own directory only; its inferiors stay and the name lives on
  as \\Noselect (RFC 3501 §6.3.4). DELETE of a \\Noselect name or of INBOX is refused.
  The directory is first renamed out of the tree, so readers never see half a folder.
- RENAME moves the folder and every inferior (RFC 3501 §6.3.5); RENAME INBOX moves INBOX's
  messages into a new folder and leaves INBOX empty; INBOX's inferiors stay.
- A new folder gets its dovecot-uidlist at once, with a UIDVALIDITY from the account's
  `dovecot-uidvalidity` counter (Dovecot's mailbox-uidvalidity.c: hex in the file, and the
  marker file "dovecot-uidvalidity.<hex>" renamed forward as a lock-free claim), so a folder
  deleted and re-created within the same second never reuses a UIDVALIDITY.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from mailkeep.fsmodes import PRIVATE_DIR, create_file, make_private_dirs
from mailkeep.store import mutf7
from mailkeep.store.base import FolderExists, FolderInfo, FolderNotAllowed, NoSuchFolder
from mailkeep.store.maildir import uidlist
from mailkeep.store.maildir.dotlock import Dotlock, NoSpace
from mailkeep.store.maildir.layout import ensure_maildir, forget_maildirs
from mailkeep.store.names import INBOX, folder_name, is_inferior, parent_names

UIDVALIDITY_NAME = "dovecot-uidvalidity"
_MARKER = re.compile(re.escape(UIDVALIDITY_NAME) + r"\.[0-9a-f]{8}")
# Dovecot's Maildir++ marker: "this directory is a folder, not the root" (maildir++ spec).
MAILDIRFOLDER = "maildirfolder"
# A deleted folder is renamed to this (plus a random tail) before it is removed. The name
# starts with ".." so neither we nor Dovecot list it (Dovecot refuses a leading delimiter).
TRASH_PREFIX = "..mailkeep-trash."


def folder_path(root: Path, name: str) -> Path:
    """The Maildir of a canonical folder name."""
    if name == INBOX:
        return root
    return root / ("." + mutf7.encode(name))


def _real_folders(root: Path) -> set[str]:
    """Canonical names of every folder directory (INBOX excluded)."""
    found: set[str] = set()
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return found
    for entry in entries:
        if not entry.name.startswith(".") or entry.name.startswith(".."):
            continue
        try:
            if not entry.is_dir():
                continue
            name = folder_name(mutf7.decode(entry.name[1:]))
        except ValueError:
            continue  # not a name we could have written (or Dovecot would accept): skip
        if name != INBOX:
            found.add(name)
    return found


def list_folders(root: Path) -> list[FolderInfo]:
    """Every folder, INBOX first, then implied parents and real folders in name order."""
    real = _real_folders(root)
    implied = {p for name in real for p in parent_names(name)} - real - {INBOX}
    names = real | implied
    out = [FolderInfo(INBOX, True, any(is_inferior(n, INBOX) for n in names))]
    for name in sorted(names):
        has_children = any(is_inferior(n, name) for n in names)
        out.append(FolderInfo(name, name in real, has_children))
    return out


def exists(root: Path, name: str) -> bool:
    """A selectable folder of this name exists."""
    name = folder_name(name)
    return name == INBOX or folder_path(root, name).is_dir()


def next_uidvalidity(root: Path, clock: float | None = None) -> int:
    """Dovecot's mailbox_uidvalidity_next(): max(last + 1, now), never handed out twice.

    Read, decide and record happen under `dovecot-uidvalidity.lock` (the same dotlock as the
    uidlist). Dovecot's lock-free trick of renaming a marker file forward is not safe against
    rename() silently replacing a marker another claimant just made, so we lock instead and
    keep one marker, "dovecot-uidvalidity.<hex>", in step for Dovecot's sake."""
    make_private_dirs(root)
    with Dotlock(root, UIDVALIDITY_NAME) as lock:
        now = int(time.time() if clock is None else clock)
        last = 0
        with contextlib.suppress(OSError, ValueError):
            last = int((root / UIDVALIDITY_NAME).read_text().strip(), 16)
        markers = [p for p in root.glob(UIDVALIDITY_NAME + ".*") if _MARKER.fullmatch(p.name)]
        for marker in markers:
            last = max(last, int(marker.name.rsplit(".", 1)[1], 16))
        value = max(last + 1, now) & 0xFFFFFFFF or 1
        new_marker = root / f"{UIDVALIDITY_NAME}.{value:08x}"
        os.close(create_file(new_marker, os.O_WRONLY))
        for marker in markers:
            if marker != new_marker:
                with contextlib.suppress(FileNotFoundError):
                    marker.unlink()
        lock.replace(f"{value:08x}".encode())
    return value


def ensure_index(root: Path, folder_dir: Path) -> None:
    """Give a folder (or INBOX) its dovecot-uidlist if it has none yet.

    On a full disk the folder stays without one (uidlist.sync() shows it empty, with a
    placeholder UIDVALIDITY that the index written later keeps)."""
    if os.path.exists(f"{folder_dir}/{uidlist.UIDLIST_NAME}"):  # (at every snapshot)
        return
    try:
        shown = uidlist.pending_placeholder(folder_dir)
        value = shown.uidvalidity if shown is not None else next_uidvalidity(root)
        uidlist.create(folder_dir, value)
    except NoSpace:
        return


def create(root: Path, name: str) -> str:
    name = folder_name(name, creating=True)
    if name == INBOX:
        raise FolderExists("INBOX always exists")
    path = folder_path(root, name)
    ensure_maildir(root)
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        raise FolderExists(f"mailbox {name} exists") from None
    os.chmod(path, PRIVATE_DIR)
    ensure_maildir(path)
    os.close(create_file(path / MAILDIRFOLDER, os.O_WRONLY))
    ensure_index(root, path)
    return name


def delete(root: Path, name: str) -> None:
    name = folder_name(name)
    if name == INBOX:
        raise FolderNotAllowed("INBOX cannot be deleted")  # RFC 3501 §6.3.4
    path = folder_path(root, name)
    if not path.is_dir():
        raise NoSuchFolder(f"mailbox {name} does not exist")
    trash = root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        raise NoSuchFolder(f"mailbox {name} does not exist") from None
    forget_maildirs(path)
    shutil.rmtree(trash, ignore_errors=True)


def rename(root: Path, old: str, new: str) -> list[tuple[str, str]]:
    """Rename a folder and its inferiors. Returns the (old, new) directory pairs moved.

    RENAME INBOX is not handled here (it moves messages: see mailbox.rename_inbox)."""
    old = folder_name(old)
    new = folder_name(new, creating=True)
    if new == INBOX:
        raise FolderExists("INBOX exists")
    if old == INBOX:
        raise FolderNotAllowed("RENAME INBOX is handled by the mailbox layer")
    if new == old or is_inferior(new, old):
        raise FolderNotAllowed("cannot rename a mailbox into itself")
    real = _real_folders(root)
    moving = sorted(n for n in real if n == old or is_inferior(n, old))
    if not moving:
        raise NoSuchFolder(f"mailbox {old} does not exist")
    targets = [new + n[len(old):] for n in moving]
    if any(t in real for t in targets) or new in real:
        raise FolderExists(f"mailbox {new} exists")
    for target in targets:
        folder_name(target)  # the longer names must still be valid (length)
    pairs: list[tuple[str, str]] = []
    for src, dst in zip(moving, targets, strict=True):
        # rename(2) onto a missing name: a concurrent CREATE of dst makes this fail, never
        # merge two folders.
        if folder_path(root, dst).exists():
            raise FolderExists(f"mailbox {dst} exists")
        os.rename(folder_path(root, src), folder_path(root, dst))
        forget_maildirs(folder_path(root, src))
        pairs.append((src, dst))
    return pairs
