"""`mailkeep user ...`: accounts, passwords, app passwords, import."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys
import time
from pathlib import Path

from mailkeep.cli.common import EXIT_CONFIG, CliError, load_or_exit
from mailkeep.config.hints import admin_command
from mailkeep.config.model import Config
from mailkeep.directory.admin import AdminError, UserAdmin, UserEntry
from mailkeep.directory.apppasswords import AppPassword, new_app_password
from mailkeep.directory.base import (
    SERVICES,
    Account,
    DirectoryError,
    load_admin,
)
from mailkeep.directory.importing import parse_dovecot_passwd, parse_users_csv
from mailkeep.directory.names import ACCOUNT_NAME, ADDRESS, APP_PASSWORD_LABEL, clean_groups
from mailkeep.directory.passwords import hash_password

# -- users ----------------------------------------------------------------------------------

def _admin(config: Config) -> UserAdmin:
    try:
        return load_admin(config.directory.backend, config.directory.options,
                          config.directory.base_dir)
    except DirectoryError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None


def _read_password(args: argparse.Namespace) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if first != getpass.getpass("Again: "):
            raise CliError("passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise CliError("password too short: at least 8 characters")
    return password


def _normalise_addresses(config: Config, name: str, extra: list[str]) -> tuple[str, ...]:
    base = name if "@" in name else f"{name}@{config.domains[0]}"
    result: list[str] = []
    for given in [base, *extra]:
        addr = given.strip().lower()
        if not ADDRESS.match(addr):
            raise CliError(f"--address: {addr!r} is not an address")
        if not config.is_local_domain(addr.rpartition("@")[2]):
            raise CliError(f"--address: {addr} is not in a local domain "
                           f"({', '.join(config.domains)}); add the domain to `domains` first")
        if addr not in result:
            result.append(addr)
    return tuple(result)


def _describe(entry: UserEntry) -> str:
    acct = entry.account
    flags = " (send_as_others)" if acct.send_as_others else ""
    if acct.groups:
        flags += f" [groups: {', '.join(acct.groups)}]"
    if entry.app_passwords:
        flags += f" [app passwords: {', '.join(a.label for a in entry.app_passwords)}]"
    return f"{acct.name}: {', '.join(acct.addresses)}{flags}"


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


async def _user_action(args: argparse.Namespace, config: Config, admin: UserAdmin) -> int:
    action = args.user_command
    if action == "create-schema":
        create = getattr(admin, "create_schema", None)
        if create is None:
            raise CliError(f"create-schema is for backend = \"sql\" (this config uses "
                           f"{config.directory.backend!r})")
        await create()
        print("default tables created (or already there)")
        return 0
    if action == "list":
        for entry in await admin.list_users():
            print(_describe(entry))
        return 0
    if action == "import":
        return await _import(args, config, admin)
    if action == "app-password":
        return await _app_password(args, config, admin)
    name = args.name.lower()
    if action == "add":
        if not ACCOUNT_NAME.match(name):
            raise CliError(f"{name!r}: account names are lower-case letters, digits, . _ + @ -")
        addresses = _normalise_addresses(config, name, args.address or [])
        if await admin.get_user(name) is not None:
            raise CliError(f"{name} exists; change its password with "
                           f"`{admin_command('user', 'passwd', name, config=config.path)}`")
        password = _read_password(args)
        groups = clean_groups(args.group or [])
        await admin.add_users([UserEntry(Account(name, addresses, args.send_as_others, groups),
                                         hash_password(password))])
        print(f"added {name}: {', '.join(addresses)}")
    elif action == "passwd":
        if admin.manages_accounts and await _missing(admin, name):
            raise CliError(f"no account {name}")
        await admin.set_password(name, hash_password(_read_password(args)))
        print(f"password changed for {name}")
    elif action == "groups":
        await admin.set_groups(name, clean_groups(args.groups))
        print(f"groups of {name}: {', '.join(clean_groups(args.groups)) or '(none)'}")
    elif action == "del":
        await admin.delete_user(name)
        print(f"deleted {name} (its Maildir under {config.data_dir / 'mail' / name} is kept)")
    return 0


async def _missing(admin: UserAdmin, name: str) -> bool:
    """No such account (asked before the password is). A users file that cannot be read
    because of this very account's password is for set_password to judge: `passwd` is how
    a missing or damaged hash gets repaired."""
    try:
        return await admin.get_user(name) is None
    except AdminError:
        raise
    except DirectoryError:
        return False


async def _app_password(args: argparse.Namespace, config: Config, admin: UserAdmin) -> int:
    name = args.name.lower()
    action = args.app_command
    if action == "add":
        label = args.label.lower()
        if not APP_PASSWORD_LABEL.match(label):
            raise CliError(f"{label!r}: labels are lower-case letters, digits and . _ -")
        services = tuple(dict.fromkeys(s.strip() for s in args.services.split(",")
                                       if s.strip()))
        bad = [s for s in services if s not in SERVICES]
        if bad or not services:
            raise CliError(f"--services: {', '.join(bad) or '(none)'}: choose from "
                           f"{', '.join(SERVICES)}")
        secret, stored = new_app_password()
        await admin.add_app_password(name, AppPassword(label, stored, services, time.time()))
        print(f"app password {label!r} for {name} ({', '.join(services)}):")
        print(f"  {secret}")
        revoke = admin_command("user", "app-password", "revoke", name, label,
                               config=config.path)
        print(f"  (shown once; revoke it with `{revoke}`)")
    elif action == "list":
        for app in await admin.list_app_passwords(name):
            print(f"{app.label}: {', '.join(app.services)}; created {_when(app.created)}; "
                  f"last used {_when(app.last_used)}")
    elif action == "revoke":
        if not await admin.revoke_app_password(name, args.label.lower()):
            raise CliError(f"{name} has no app password {args.label.lower()!r}")
        print(f"revoked {args.label.lower()!r} of {name}")
    return 0


async def _import(args: argparse.Namespace, config: Config, admin: UserAdmin) -> int:
    source = Path(args.dovecot_passwd or args.csv)
    try:
        text = await asyncio.to_thread(source.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{source}: cannot read: {exc}") from None
    if args.dovecot_passwd:
        result = await asyncio.to_thread(
            parse_dovecot_passwd, text, default_domain=config.domains[0],
            is_local=config.is_local_domain, names=args.names)
    else:
        result = await asyncio.to_thread(parse_users_csv, text,
                                         default_domain=config.domains[0],
                                         is_local=config.is_local_domain)
    if result.problems and not args.skip_invalid:
        raise CliError(f"{source}: nothing imported, {len(result.problems)} problem(s) "
                       "(fix them, or --skip-invalid to import the rest):\n  "
                       + "\n  ".join(result.problems))
    for problem in result.problems:
        print(f"skipped: {source}: {problem}", file=sys.stderr)
    await admin.add_users(result.entries)
    print(f"imported {len(result.entries)} account(s) from {source}")
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    admin = _admin(config)

    async def run() -> int:
        try:
            return await _user_action(args, config, admin)
        finally:
            await admin.close()

    try:
        return asyncio.run(run())
    except AdminError as exc:
        raise CliError(str(exc)) from None
    except DirectoryError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
