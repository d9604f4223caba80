"""Running as root only as long as it takes to bind the ports.

Started as root (ports below 1024 without CAP_NET_BIND_SERVICE), the daemon binds its
listeners and loads its certificates, then drops to `run_as` for good: supplementary groups
cleared, gid then uid set (setuid last, so nothing is regained). Without `run_as` it refuses
to go on as root unless `allow_root = true` says the administrator means it.

Files the unprivileged daemon must write are handed to it before the drop: the data
directory itself, its mail/ folder and the whole spool. Existing Maildirs are left as they
are (an administrator migrating from Dovecot chowns them once; `check-config` says so).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("mailkeep")


class PrivilegeError(Exception):
    """The configured user cannot be used (unknown, or the drop failed)."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    uid: int
    gid: int

    @classmethod
    def resolve(cls, spec: str) -> Identity:
        """"user" (its primary group) or "user:group"."""
        user, _, group = spec.partition(":")
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise PrivilegeError(f"run_as: there is no user {user!r} on this system "
                                 "(create it, e.g. `useradd --system mailkeep`)") from None
        gid = entry.pw_gid
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise PrivilegeError(f"run_as: there is no group {group!r}") from None
        return cls(user, entry.pw_uid, gid)


def running_as_root() -> bool:
    return os.geteuid() == 0


def readable_by(path: Path, who: Identity) -> bool:
    """Would `who` be able to read `path` (mode bits and owner, no ACLs)?"""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == who.uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == who.gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def hand_over(paths: list[Path], trees: list[Path], who: Identity) -> int:
    """chown `paths` and everything under `trees` that is not already `who`'s; how many."""
    changed = 0

    def own(p: Path) -> None:
        nonlocal changed
        with contextlib.suppress(FileNotFoundError):
            st = p.lstat()
            if st.st_uid != who.uid or st.st_gid != who.gid:
                os.lchown(p, who.uid, who.gid)
                changed += 1

    for p in paths:
        own(p)
    for top in trees:
        for root, dirs, files in os.walk(top):
            own(Path(root))
            for name in (*dirs, *files):
                own(Path(root) / name)
    return changed


def drop_to(who: Identity) -> None:
    """Become `who` for good (root only). PrivilegeError if anything fails."""
    try:
        os.setgroups([])
        os.setgid(who.gid)
        os.setuid(who.uid)
    except OSError as exc:
        raise PrivilegeError(f"run_as: cannot become {who.user}: {exc.strerror}") from None
    if os.geteuid() == 0 or (os.getegid() == 0 and who.gid != 0):
        raise PrivilegeError(f"run_as: still root after switching to {who.user}")
    log.info("running as %s (uid %d, gid %d)", who.user, who.uid, who.gid)
