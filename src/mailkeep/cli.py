"""Command line: init, serve, check-config, user ..., cert ..., health."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from mailkeep import __version__
from mailkeep.config import ConfigError, load_config
from mailkeep.config.model import Config
from mailkeep.config.template import render
from mailkeep.directory.base import Account, DirectoryError
from mailkeep.directory.file import (
    ACCOUNT_NAME,
    ADDRESS,
    UserRecord,
    read_users_file,
    write_users_file,
)
from mailkeep.directory.passwords import hash_password
from mailkeep.fsmodes import PRIVATE_FILE, make_private_dirs, write_file
from mailkeep.tls.certs import generate_selfsigned
from mailkeep.tls.inventory import describe as describe_certificate
from mailkeep.tls.inventory import inventory as certificate_inventory
from mailkeep.tls.inventory import problems as certificate_problems

EXIT_USAGE = 2
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG
# submission (587), submissions (465), pop3s (995), pop3 with STLS (110, commented out),
# imaps (993), imap with STARTTLS (143, commented out)
STANDARD_PORTS = (587, 465, 995, 110, 993, 143)
UNPRIVILEGED_PORTS = (10587, 10465, 10995, 10110, 10993, 10143)
# What a healthy listener says first, by protocol.
GREETINGS = {"submission": b"220", "pop3": b"+OK", "imap": b"* OK"}


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
                  hosts=tuple(args.bind_host or ("0.0.0.0", "[::]")))
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
        if config.directory.backend == "file":
            records = read_users_file(users_path)
            for name, rec in records.items():
                for addr in rec.account.addresses:
                    if not config.is_local_domain(addr.rpartition("@")[2]):
                        problems.append(f"users.{name}.addresses: {addr} is not in a local "
                                        f"domain ({', '.join(config.domains)})")
    except DirectoryError as exc:
        problems.append(f"directory: {exc}")
    if problems:
        print(f"{config.path}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{config.path}: OK ({len(config.listeners)} listeners)")
    return 0


# -- users ----------------------------------------------------------------------------------

def _users_path(config: Config) -> Path:
    if config.directory.backend != "file":
        raise CliError("`mailkeep user` manages the file backend only")
    raw = config.directory.options.get("path", "users.toml")
    return (config.directory.base_dir / str(raw)).resolve()


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


def cmd_user(args: argparse.Namespace) -> int:
    config = _load(args.config)
    path = _users_path(config)
    try:
        records = read_users_file(path) if path.exists() else {}
    except DirectoryError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    action = args.user_command
    if action == "list":
        for name in sorted(records):
            acct = records[name].account
            flag = " (send_as_others)" if acct.send_as_others else ""
            print(f"{name}: {', '.join(acct.addresses)}{flag}")
        return 0
    name = args.name.lower()
    if action == "add":
        if not ACCOUNT_NAME.match(name):
            raise CliError(f"{name!r}: account names are lower-case letters, digits, . _ + @ -")
        if name in records:
            raise CliError(f"{name} exists; use `mailkeep user passwd {name}`")
        addresses = _normalise_addresses(config, name, args.address or [])
        taken = {a: n for n, r in records.items() for a in r.account.addresses}
        for addr in addresses:
            if addr in taken:
                raise CliError(f"{addr} already belongs to {taken[addr]}")
        password = _read_password(args)
        records[name] = UserRecord(Account(name, addresses, args.send_as_others),
                                   hash_password(password))
        write_users_file(path, records)
        print(f"added {name}: {', '.join(addresses)}")
        return 0
    if name not in records:
        raise CliError(f"no account {name}")
    if action == "passwd":
        rec = records[name]
        records[name] = UserRecord(rec.account, hash_password(_read_password(args)))
        write_users_file(path, records)
        print(f"password changed for {name}")
    elif action == "del":
        del records[name]
        write_users_file(path, records)
        print(f"deleted {name} (its Maildir under {config.data_dir / 'mail' / name} is kept)")
    return 0


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
                    greeting = sock.recv(512)
                    if not greeting.startswith(GREETINGS[lst.protocol]):
                        raise OSError(f"unexpected greeting {greeting[:60]!r}")
                    sock.sendall(b"h LOGOUT\r\n" if lst.protocol == "imap" else b"QUIT\r\n")
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
    q.set_defaults(func=cmd_serve)

    q = sub.add_parser("check-config", help="report every problem in a config")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_check_config)

    q = sub.add_parser("health", help="probe every listener (for container health checks)")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_health)

    users = sub.add_parser("user", help="manage accounts in the users file")
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
        q.set_defaults(func=cmd_user)
    q = usub.add_parser("list", help="list accounts and their addresses")
    q.add_argument("--config", required=True)
    q.set_defaults(func=cmd_user)

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
