"""Accounts from elsewhere: a Dovecot passwd-file, or a CSV table (`mailkeep user import`).

Dovecot passwd-file lines (doc.dovecot.org, "Passwd-file"):

    user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Only the first two fields matter here. `user` is a name or an address; the account name is
its local part (`--names local`, the default) or the whole address (`--names full`, for
files that hold the same local part in several domains). Hashes keep their scheme
(argon2id, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT); {PLAIN} and {CLEAR} passwords are hashed
with argon2id on the way in, so no cleartext is ever stored.

CSV, with a header row naming the columns (any order; only `name` and `password` needed):

    name,password,addresses,groups,send_as_others
    alice,{SHA512-CRYPT}$6$...,alice@example.test a.smith@example.test,staff,false

`addresses` and `groups` are separated by spaces or semicolons.

Both parsers report every problem at once, by line number, and never include a password
or hash in a message.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from mailkeep.directory.admin import UserEntry
from mailkeep.directory.base import Account
from mailkeep.directory.names import ACCOUNT_NAME, clean_address, clean_groups
from mailkeep.directory.passwords import hash_password, is_supported

_CLEARTEXT = re.compile(r"^\{(PLAIN|CLEAR|CLEARTEXT)\}", re.IGNORECASE)
_SPLIT = re.compile(r"[\s;,]+")
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n", ""}


@dataclass
class ImportResult:
    entries: list[UserEntry]
    problems: list[str]


def _hash(stored: str) -> str | None:
    """The stored hash to keep, or None when unusable. Cleartext becomes argon2id."""
    m = _CLEARTEXT.match(stored)
    if m:
        secret = stored[m.end():]
        return hash_password(secret) if secret else None
    return stored if is_supported(stored) else None


def _account(user: str, names: str, default_domain: str, is_local: Callable[[str], bool],
             *, where: str, problems: list[str]) -> tuple[str, str] | None:
    """(account name, first address) for a passwd-file user field."""
    user = user.strip().lower()
    address = user if "@" in user else f"{user}@{default_domain}"
    addr = clean_address(address)
    if addr is None:
        problems.append(f"{where}: {user!r} is not a user name or address")
        return None
    if not is_local(addr.rpartition("@")[2]):
        problems.append(f"{where}: {addr} is not in a local domain (add it to `domains`)")
        return None
    name = addr if names == "full" else addr.partition("@")[0]
    if not ACCOUNT_NAME.match(name):
        problems.append(f"{where}: {name!r} cannot be an account name (lower-case letters, "
                        "digits and . _ + @ -)")
        return None
    return name, addr


def _merge(entries: dict[str, UserEntry], entry: UserEntry, where: str,
           problems: list[str]) -> None:
    name = entry.account.name
    if name in entries:
        problems.append(f"{where}: account {name} appears twice (use --names full when the "
                        "same user name exists in several domains)")
        return
    entries[name] = entry


def parse_dovecot_passwd(text: str, *, default_domain: str, is_local: Callable[[str], bool],
                         names: str = "local") -> ImportResult:
    problems: list[str] = []
    entries: dict[str, UserEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 2:
            problems.append(f"{where}: expected user:password[:...]")
            continue
        found = _account(fields[0], names, default_domain, is_local, where=where,
                         problems=problems)
        stored = _hash(fields[1].strip())
        if stored is None:
            problems.append(f"{where}: the password is empty or in a scheme mailkeep does not "
                            "verify (use SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, ARGON2ID or "
                            "PLAIN)")
        if found is None or stored is None:
            continue
        name, addr = found
        _merge(entries, UserEntry(Account(name, (addr,)), stored), where, problems)
    return ImportResult(list(entries.values()), problems)


def parse_users_csv(text: str, *, default_domain: str, is_local: Callable[[str], bool]
                    ) -> ImportResult:
    problems: list[str] = []
    entries: dict[str, UserEntry] = {}
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "name" not in header or "password" not in header:
        return ImportResult([], ["line 1: the header must name the columns: name,password"
                                 "[,addresses][,groups][,send_as_others]"])
    unknown = set(header) - {"name", "password", "addresses", "groups", "send_as_others"}
    if unknown:
        return ImportResult([], [f"line 1: unknown column {sorted(unknown)[0]!r}"])
    reader.fieldnames = header
    for row in reader:
        where = f"line {reader.line_num}"
        name = (row.get("name") or "").strip().lower()
        if not ACCOUNT_NAME.match(name):
            problems.append(f"{where}: {name!r} cannot be an account name")
            continue
        stored = _hash((row.get("password") or "").strip())
        if stored is None:
            problems.append(f"{where}: the password is empty or in a scheme mailkeep does not "
                            "verify")
            continue
        given = [a for a in _SPLIT.split(row.get("addresses") or "") if a]
        if not given:
            given = [name if "@" in name else f"{name}@{default_domain}"]
        addresses: list[str] = []
        for value in given:
            addr = clean_address(value)
            if addr is None:
                problems.append(f"{where}: {value!r} is not an address")
            elif not is_local(addr.rpartition("@")[2]):
                problems.append(f"{where}: {addr} is not in a local domain")
            elif addr not in addresses:
                addresses.append(addr)
        flag = (row.get("send_as_others") or "").strip().lower()
        if flag not in _TRUE | _FALSE:
            problems.append(f"{where}: send_as_others: expected true or false")
        groups = clean_groups([g for g in _SPLIT.split(row.get("groups") or "") if g])
        account = Account(name, tuple(addresses), flag in _TRUE, groups)
        _merge(entries, UserEntry(account, stored), where, problems)
    return ImportResult(list(entries.values()), problems)
