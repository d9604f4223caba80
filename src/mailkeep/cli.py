"""Command line: init, serve, check-config, dns, user ..., cert ..., queue ..., dkim ...,
health."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import getpass
import json
import logging
import os
import pwd
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mailkeep import __version__
from mailkeep.config import ConfigError, load_config
from mailkeep.config.model import Config
from mailkeep.config.template import render
from mailkeep.directory.admin import AdminError, UserAdmin, UserEntry
from mailkeep.directory.apppasswords import AppPassword, new_app_password
from mailkeep.directory.base import (
    SERVICES,
    Account,
    DirectoryError,
    load_admin,
    load_directory,
)
from mailkeep.directory.file import (
    UserRecord,
    read_users_file,
    write_users_file,
)
from mailkeep.directory.importing import parse_dovecot_passwd, parse_users_csv
from mailkeep.directory.names import ACCOUNT_NAME, ADDRESS, APP_PASSWORD_LABEL, clean_groups
from mailkeep.directory.passwords import hash_password
from mailkeep.fsmodes import PRIVATE_FILE, make_private_dirs, write_file
from mailkeep.tls.certs import CertificateProblem, generate_selfsigned, inspect_certificate
from mailkeep.tls.inventory import describe as describe_certificate
from mailkeep.tls.inventory import inventory as certificate_inventory
from mailkeep.tls.inventory import problems as certificate_problems

EXIT_USAGE = 2
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: the daemon did not take a queue request; retry
# submission (587), submissions (465), pop3s (995), pop3 with STLS (110, commented out),
# imaps (993), imap with STARTTLS (143, commented out)
STANDARD_PORTS = (587, 465, 995, 110, 993, 143)
UNPRIVILEGED_PORTS = (10587, 10465, 10995, 10110, 10993, 10143)
# What a healthy listener says first, by protocol.
GREETINGS = {"submission": b"220", "pop3": b"+OK", "imap": b"* OK",
             "autoconfig": b"HTTP/1.1 200"}


class CliError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(exc.report(), EXIT_CONFIG) from None


# -- init -----------------------------------------------------------------------------------

def _system_user_for_root() -> str | None:
    """`init` as root on a machine with a "mailkeep" user: the daemon should become it."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mailkeep")
    except KeyError:
        return None
    return "mailkeep"


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    hostname = args.hostname.lower().rstrip(".")
    domains = args.domain or [hostname.partition(".")[2] or hostname]
    config_path = target / "mailkeep.toml"
    users_path = target / "users.toml"
    cert_path = target / "certs" / "mailkeep.crt"
    key_path = target / "certs" / "mailkeep.key"
    existing = [p for p in (config_path, users_path, cert_path, key_path) if p.exists()]
    if existing and not args.force:
        names = ", ".join(str(p) for p in existing)
        raise CliError(f"refusing to overwrite {names} (use --force)")
    if args.ports == "auto":
        ports = STANDARD_PORTS if os.geteuid() == 0 else UNPRIVILEGED_PORTS
    else:
        ports = STANDARD_PORTS if args.ports == "standard" else UNPRIVILEGED_PORTS
    # Ours alone whatever the umask (umask 000 would make it world-writable): whoever can
    # write here can replace the users file.
    make_private_dirs(target)
    data_dir = args.data_dir or "data"
    text = render(hostname=hostname, domains=domains, data_dir=data_dir,
                  cert="certs/mailkeep.crt", key="certs/mailkeep.key", ports=ports[:2],
                  pop3_ports=ports[2:4], imap_ports=ports[4:6],
                  hosts=tuple(args.bind_host or ("0.0.0.0", "[::]")),
                  run_as=_system_user_for_root())
    info = generate_selfsigned(cert_path, key_path, [hostname, *args.san], key_type=args.key_type,
                               rsa_bits=args.rsa_bits)
    write_file(config_path, text.encode("utf-8"), PRIVATE_FILE)
    records: dict[str, UserRecord] = {}
    password = None
    if not args.no_demo_user:
        password = secrets.token_urlsafe(12)
        name = "demo"
        records[name] = UserRecord(Account(name, (f"{name}@{domains[0]}",)),
                                   hash_password(password))
    write_users_file(users_path, records)
    print(f"wrote {config_path}")
    print(f"wrote {users_path}")
    print(f"wrote {cert_path} ({info.key_type}, SAN {', '.join(info.names)}, "
          f"expires {info.not_after:%Y-%m-%d})")
    print(f"listeners: submission on port {ports[0]} (STARTTLS), submissions on {ports[1]} "
          f"(TLS), pop3s on {ports[2]} (TLS), imaps on {ports[4]} (TLS)")
    if password is not None:
        print(f"demo account: login demo@{domains[0]}  password {password}")
        print("  (shown once; change it with `mailkeep user passwd demo`)")
    return 0


# -- serve / check-config -------------------------------------------------------------------

def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd would log AUTH lines


def cmd_serve(args: argparse.Namespace) -> int:
    from mailkeep.app import StartupError, serve  # noqa: PLC0415 (keep `--help` fast)

    config = _load(args.config)
    if args.allow_root:
        config = dataclasses.replace(config, allow_root=True)
    _setup_logging(args.log_level or config.log_level)
    use_uvloop = args.loop in ("auto", "uvloop")
    runner: asyncio.Runner
    if use_uvloop:
        try:
            import uvloop  # noqa: PLC0415

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            if args.loop == "uvloop":
                raise CliError("--loop uvloop: uvloop is not installed") from None
            runner = asyncio.Runner()
    else:
        runner = asyncio.Runner()
    ready = Path(args.ready_file) if args.ready_file else None
    try:
        with runner:
            runner.run(serve(config, ready_file=ready))
    except StartupError as exc:
        print(f"mailkeep: cannot start ({config.path}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    problems = certificate_problems(config)
    try:
        users_path = config.directory.base_dir / str(config.directory.options.get("path",
                                                                                  "users.toml"))
        if config.directory.backend != "file":
            # The options are checked (and a SQLite file looked for); servers are not
            # contacted: the daemon starts while they are down, and says so per login.
            directory = load_directory(config.directory.backend, config.directory.options,
                                       config.directory.base_dir)
            asyncio.run(directory.close())
        else:
            records = read_users_file(users_path)
            for name, rec in records.items():
                for addr in rec.account.addresses:
                    if not config.is_local_domain(addr.rpartition("@")[2]):
                        problems.append(f"users.{name}.addresses: {addr} is not in a local "
                                        f"domain ({', '.join(config.domains)})")
    except DirectoryError as exc:
        problems.append(f"directory: {exc}")
    if config.dkim:
        from mailkeep.relay.dkim_admin import key_problems  # noqa: PLC0415 (cryptography)

        problems += key_problems(config)
    for warning in _autoconfig_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{config.path}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{config.path}: OK ({len(config.listeners)} listeners)")
    return 0


def _autoconfig_warnings(config: Config) -> list[str]:
    """An HTTPS autoconfig listener is reached as autoconfig.DOMAIN and autodiscover.DOMAIN
    (the CNAMEs of `mailkeep dns`): a certificate without those names makes Thunderbird fall
    back to plain HTTP and Outlook warn or give up. Worth a warning, not a refusal: the
    documents still work over HTTP, and the certificate may be renewed with the names."""
    warnings: list[str] = []
    for lst in config.listeners:
        if lst.protocol != "autoconfig" or lst.tls != "implicit":
            continue
        try:
            info = inspect_certificate(lst.cert)
        except CertificateProblem:
            continue  # reported above as a problem
        missing = [f"{prefix}.{domain}" for domain in config.domains
                   for prefix in ("autoconfig", "autodiscover")
                   if not info.covers(f"{prefix}.{domain}")]
        if missing:
            warnings.append(f"listeners.{lst.name}: the certificate {lst.cert} does not cover "
                            f"{', '.join(missing)} (SAN: {', '.join(info.names) or 'none'}); "
                            "HTTPS clients fetching those names will refuse it: add them "
                            "to the certificate (mailkeep cert selfsigned --san NAME ...)")
    return warnings


# -- dns ------------------------------------------------------------------------------------

def cmd_dns(args: argparse.Namespace) -> int:
    """Zone-file lines for one local domain: MX, SRV, autoconfig CNAMEs, SPF, DKIM."""
    from mailkeep.proto.zone import AutoconfigSite, records  # noqa: PLC0415
    from mailkeep.relay.dkim import DkimError, txt_record  # noqa: PLC0415
    from mailkeep.server.autoconfig import mail_setup  # noqa: PLC0415

    config = _load(args.config)
    domain = args.domain.lower().rstrip(".")
    if not config.is_local_domain(domain):
        raise CliError(f"{domain} is not a local domain ({', '.join(config.domains)})",
                       EXIT_USAGE)
    sites = tuple(AutoconfigSite(addr.port, lst.tls == "implicit")
                  for lst in config.listeners if lst.protocol == "autoconfig"
                  for addr in lst.bind)
    dkim_txt = dkim_note = None
    setting = config.dkim.get(domain)
    if setting is None:
        dkim_note = ("no key configured for this domain (add [dkim.domains."
                     f'"{domain}"] with a selector and key)')
    else:
        try:
            dkim_txt = txt_record(domain, setting.selector, setting.key.read_bytes())
        except (OSError, DkimError, ValueError) as exc:
            dkim_note = f"the key {setting.key} cannot be read: {exc}"
    lines = records(mail_setup(config), domain,
                    inbound_mx=any(lst.protocol == "smtp" for lst in config.listeners),
                    sites=sites, dkim_txt=dkim_txt, dkim_note=dkim_note)
    print("\n".join(lines))
    return 0


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
        return await _app_password(args, admin)
    name = args.name.lower()
    if action == "add":
        if not ACCOUNT_NAME.match(name):
            raise CliError(f"{name!r}: account names are lower-case letters, digits, . _ + @ -")
        addresses = _normalise_addresses(config, name, args.address or [])
        if await admin.get_user(name) is not None:
            raise CliError(f"{name} exists; use `mailkeep user passwd {name}`")
        password = _read_password(args)
        groups = clean_groups(args.group or [])
        await admin.add_users([UserEntry(Account(name, addresses, args.send_as_others, groups),
                                         hash_password(password))])
        print(f"added {name}: {', '.join(addresses)}")
    elif action == "passwd":
        if admin.manages_accounts and await admin.get_user(name) is None:
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


async def _app_password(args: argparse.Namespace, admin: UserAdmin) -> int:
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
        print("  (shown once; revoke it with `mailkeep user app-password revoke "
              f"{name} {label}`)")
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
    config = _load(args.config)
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


# -- certificates ---------------------------------------------------------------------------

def cmd_cert_show(args: argparse.Namespace) -> int:
    """Every certificate: listener defaults, SNI certificates, the ACME one."""
    config = _load(args.config)
    uses = certificate_inventory(config)
    for i, use in enumerate(uses):
        if i:
            print()
        print("\n".join(describe_certificate(use, config.hostname)))
    return 1 if any(use.problem for use in uses) else 0


def cmd_cert_selfsigned(args: argparse.Namespace) -> int:
    if args.config:
        config = _load(args.config)
        cert, key = config.tls.cert, config.tls.key
        hostname = args.hostname or config.hostname
    else:
        if not (args.cert and args.key and args.hostname):
            raise CliError("give --config FILE, or --hostname with --cert and --key", EXIT_USAGE)
        cert, key, hostname = Path(args.cert), Path(args.key), args.hostname
    if (cert.exists() or key.exists()) and not args.force:
        raise CliError(f"refusing to overwrite {cert} / {key} (use --force)")
    info = generate_selfsigned(cert, key, [hostname, *args.san], key_type=args.key_type,
                               rsa_bits=args.rsa_bits, days=args.days)
    print(f"wrote {cert} and {key}: {info.key_type}, SAN {', '.join(info.names)}, "
          f"expires {info.not_after:%Y-%m-%d}, sha256 {info.sha256}")
    print("a running daemon picks it up within tls.reload_interval, or at once on SIGHUP")
    return 0


# -- queue ----------------------------------------------------------------------------------

def cmd_queue(args: argparse.Namespace) -> int:
    from mailkeep.relay import queue_admin as qa  # noqa: PLC0415
    from mailkeep.relay.spool import Spool  # noqa: PLC0415

    config = _load(args.config)
    spool = Spool(config.data_dir / "spool")
    action = args.queue_command
    try:
        if action == "list":
            listing = qa.listing(spool)
            print(qa.listing_json(listing) if args.json
                  else "\n".join(qa.render_listing(listing)))
            return 0
        if action == "show":
            entry = qa.load(spool, args.id)
            header, body = qa.message_parts(spool, args.id)
            now = time.time()
            if args.json:
                out = qa.entry_json(entry, now)
                out["header"] = header.decode("utf-8", "replace")
                if args.body:
                    out["body"] = body.decode("utf-8", "replace")
                print(json.dumps(out, indent=2))
            else:
                print("\n".join(qa.render_entry(entry, header, body if args.body else None,
                                                now)))
            return 0
        op: qa.Op
        if action == "retry":
            if args.all == bool(args.id):
                raise CliError("give one message ID, or --all", EXIT_USAGE)
            op, target = "retry", qa.ALL if args.all else args.id
        elif action == "flush":
            op, target = "retry", qa.ALL
        else:
            op, target = action, args.id
        outcome = qa.act(spool, op, target,
                         wait=qa.CONTROL_WAIT if args.wait is None else args.wait)
    except qa.NoAnswer as exc:
        raise CliError(str(exc), EXIT_TEMPFAIL) from None
    except qa.QueueError as exc:
        raise CliError(str(exc)) from None
    print(outcome.message)
    return 0


# -- dkim -----------------------------------------------------------------------------------

def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from mailkeep.relay.dkim import DEFAULT_SELECTOR, KeyType  # noqa: PLC0415 (keep --help fast)
    from mailkeep.relay.dkim_admin import (  # noqa: PLC0415
        DkimAdminError,
        create_key,
        render_new_key,
    )

    try:
        new = create_key(args.domain, selector=args.selector or DEFAULT_SELECTOR,
                         key_type=KeyType(args.type),
                         config_path=Path(args.config) if args.config else None,
                         force=args.force)
    except DkimAdminError as exc:
        raise CliError(str(exc)) from None
    print("\n".join(render_new_key(new)))
    return 0


def cmd_dkim_show(args: argparse.Namespace) -> int:
    from mailkeep.relay.dkim_admin import key_statuses, render_statuses  # noqa: PLC0415

    config = _load(args.config)
    statuses = key_statuses(config)
    print("\n".join(render_statuses(statuses)))
    return 1 if any(s.problems for s in statuses) else 0


# -- health ---------------------------------------------------------------------------------

def cmd_health(args: argparse.Namespace) -> int:
    """Container HEALTHCHECK: every listener answers with its greeting (220, +OK)."""
    import socket  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    config = _load(args.config)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a health probe checks liveness, not identity
    failed = 0
    for lst in config.listeners:
        for addr in lst.bind:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr.host, addr.host)
            try:
                with socket.create_connection((host, addr.port), timeout=5) as raw:
                    sock: socket.socket = raw
                    if lst.tls == "implicit":
                        sock = ctx.wrap_socket(raw, server_hostname=config.hostname)
                    if lst.protocol == "autoconfig":
                        sock.sendall(f"HEAD /mail/config-v1.1.xml HTTP/1.1\r\nHost: "
                                     f"{config.hostname}\r\nConnection: close\r\n\r\n"
                                     .encode())
                    greeting = sock.recv(512)
                    if not greeting.startswith(GREETINGS[lst.protocol]):
                        raise OSError(f"unexpected greeting {greeting[:60]!r}")
                    if lst.protocol != "autoconfig":
                        sock.sendall(b"h LOGOUT\r\n" if lst.protocol == "imap"
                                     else b"QUIT\r\n")
                print(f"ok {lst.name} {addr}")
            except OSError as exc:
                print(f"FAIL {lst.name} {addr}: {exc}")
                failed += 1
    return 1 if failed else 0


# -- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailkeep", description="secure mail daemon")
    p.add_argument("--version", action="version", version=f"mailkeep {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def key_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa",
                       help="ECDSA P-256 (default) or RSA")
        q.add_argument("--rsa-bits", type=int, choices=(2048, 3072, 4096), default=2048)
        q.add_argument("--san", action="append", default=[], metavar="NAME",
                       help="an extra name (or IP) for the certificate; repeatable")

    q = sub.add_parser("init", help="write a config, users file and self-signed certificate")
    q.add_argument("dir")
    q.add_argument("--hostname", required=True)
    q.add_argument("--domain", action="append", help="a local mail domain; repeatable")
    q.add_argument("--data-dir", help="where Maildirs go (default: DIR/data)")
    q.add_argument("--ports", choices=("auto", "standard", "unprivileged"), default="auto",
                   help="587/465/995, or 10587/10465/10995; auto picks standard only as root")
    q.add_argument("--bind-host", action="append", metavar="HOST",
                   help='listen address (default "0.0.0.0" and "[::]"); repeatable')
    q.add_argument("--no-demo-user", action="store_true", help="do not create the demo account")
    q.add_argument("--force", action="store_true", help="overwrite existing files")
    key_opts(q)
    q.set_defaults(func=cmd_init)

    q = sub.add_parser("serve", help="run the daemon in the foreground")
    q.add_argument("--config", required=True)
    q.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    q.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    q.add_argument("--ready-file", help="write the bound addresses here (JSON) once listening")
    q.add_argument("--allow-root", action="store_true",
                   help="keep running as root (like allow_root = true; for demos)")
    q.set_defaults(func=cmd_serve)

    q = sub.add_parser("check-config", help="report every problem in a config")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_check_config)

    q = sub.add_parser("dns", help="print the DNS records to publish for a local domain")
    q.add_argument("domain")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_dns)

    q = sub.add_parser("health", help="probe every listener (for container health checks)")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_health)

    users = sub.add_parser("user", help="manage accounts (file and sql backends) and app "
                                        "passwords (every backend)")
    usub = users.add_subparsers(dest="user_command", required=True)
    for action, text in (("add", "add an account (password from stdin or a prompt)"),
                         ("passwd", "set an account's password"),
                         ("del", "delete an account (its Maildir is kept)")):
        q = usub.add_parser(action, help=text)
        q.add_argument("name")
        q.add_argument("--config", required=True)
        if action == "add":
            q.add_argument("--address", action="append",
                           help="an extra address or alias; repeatable")
            q.add_argument("--send-as-others", action="store_true",
                           help="allow a header From that is not one of the account's addresses")
            q.add_argument("--group", action="append",
                           help="a group for policy (auth_groups, send_as_groups); repeatable")
        q.set_defaults(func=cmd_user)
    q = usub.add_parser("groups", help="set an account's groups (none: no groups)")
    q.add_argument("name")
    q.add_argument("groups", nargs="*")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_user)
    q = usub.add_parser("list", help="list accounts and their addresses")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_user)
    q = usub.add_parser("create-schema", help="sql backend: create the default tables")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_user)
    q = usub.add_parser("import", help="add accounts from a Dovecot passwd-file or a CSV file")
    q.add_argument("--config", required=True)
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--dovecot-passwd", metavar="FILE",
                     help="user:{SCHEME}hash:... lines (hashes kept as they are)")
    src.add_argument("--csv", metavar="FILE",
                     help="a header row, then name,password[,addresses][,groups]"
                          "[,send_as_others]")
    q.add_argument("--names", choices=("local", "full"), default="local",
                   help="passwd-file: account names are the local part (default) or the "
                        "whole address")
    q.add_argument("--skip-invalid", action="store_true",
                   help="import the good lines and report the others (default: all or "
                        "nothing)")
    q.set_defaults(func=cmd_user)
    apps = usub.add_parser("app-password", help="named passwords limited to some services")
    asub = apps.add_subparsers(dest="app_command", required=True)
    q = asub.add_parser("add", help="make one (printed once)")
    q.add_argument("name")
    q.add_argument("label", help='e.g. "phone"')
    q.add_argument("--services", required=True,
                   help=f"comma-separated: {', '.join(SERVICES)}")
    q.add_argument("--config", required=True)
    q = asub.add_parser("list", help="an account's app passwords, with last use")
    q.add_argument("name")
    q.add_argument("--config", required=True)
    q = asub.add_parser("revoke", help="remove one")
    q.add_argument("name")
    q.add_argument("label")
    q.add_argument("--config", required=True)
    for parser in asub.choices.values():
        parser.set_defaults(func=cmd_user, user_command="app-password")

    cert = sub.add_parser("cert", help="certificates")
    csub = cert.add_subparsers(dest="cert_command", required=True)
    q = csub.add_parser("show", help="every certificate (listener defaults, SNI, ACME): names, "
                                         "doors, expiry, fingerprint")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_cert_show)
    q = csub.add_parser("selfsigned", help="(re)generate a self-signed certificate")
    q.add_argument("--config", help="write to this config's tls.cert and tls.key")
    q.add_argument("--hostname")
    q.add_argument("--cert")
    q.add_argument("--key")
    q.add_argument("--days", type=int, default=825)
    q.add_argument("--force", action="store_true")
    key_opts(q)
    q.set_defaults(func=cmd_cert_selfsigned)

    queue = sub.add_parser("queue", help="the delivery queue: list, show, retry, hold, delete")
    qsub = queue.add_subparsers(dest="queue_command", required=True)
    wait_help = ("seconds to wait for a running daemon to take the request (default 5); "
                 "without a daemon the spool is changed directly")
    q = qsub.add_parser("list", help="one line per queued message, and a summary")
    q.add_argument("--config", required=True)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_queue)
    q = qsub.add_parser("show", help="a message's envelope, recipients and header")
    q.add_argument("id")
    q.add_argument("--config", required=True)
    q.add_argument("--body", action="store_true", help="the body too")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_queue)
    q = qsub.add_parser("retry", help="try a message (or --all) now")
    q.add_argument("id", nargs="?")
    q.add_argument("--all", action="store_true", help="every message not on hold")
    q.add_argument("--config", required=True)
    q.add_argument("--wait", type=float, help=wait_help)
    q.set_defaults(func=cmd_queue)
    for action, text in (("delete", "remove a message from the queue (no notice is sent)"),
                         ("hold", "keep a message from being tried until released"),
                         ("release", "let a held message be tried again, at once")):
        q = qsub.add_parser(action, help=text)
        q.add_argument("id")
        q.add_argument("--config", required=True)
        q.add_argument("--wait", type=float, help=wait_help)
        q.set_defaults(func=cmd_queue)
    q = qsub.add_parser("flush", help="try every message not on hold now (retry --all)")
    q.add_argument("--config", required=True)
    q.add_argument("--wait", type=float, help=wait_help)
    q.set_defaults(func=cmd_queue)

    dkim = sub.add_parser("dkim", help="DKIM signing keys")
    dsub = dkim.add_subparsers(dest="dkim_command", required=True)
    q = dsub.add_parser("keygen", help="make a key; print the DNS record and config lines")
    q.add_argument("domain")
    q.add_argument("--selector", help='the DNS selector (default "mailkeep"; a new one '
                   "to rotate keys)")
    q.add_argument("--type", choices=("rsa", "ed25519"), default="rsa",
                   help="RSA 2048 (default) or Ed25519 (RFC 8463)")
    q.add_argument("--config", help="write under this config's folder (dkim/) and check "
                   "that DOMAIN is local; without it, under ./dkim/")
    q.add_argument("--force", action="store_true", help="overwrite an existing key")
    q.set_defaults(func=cmd_dkim_keygen)
    q = dsub.add_parser("show", help="each domain's key, selector and the record it needs")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_dkim_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"mailkeep: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
