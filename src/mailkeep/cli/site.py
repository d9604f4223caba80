"""Commands about the site as a whole: init, serve, check-config, dns (health: health.py)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import pwd
import secrets
import sys
from pathlib import Path

from mailkeep.cli.common import (
    EXIT_CONFIG,
    EXIT_USAGE,
    STANDARD_PORTS,
    UNPRIVILEGED_PORTS,
    CliError,
    load_or_exit,
    setup_logging,
)
from mailkeep.config import load_config
from mailkeep.config.check import problems as check_problems
from mailkeep.config.check import warnings as check_warnings
from mailkeep.config.hints import admin_command
from mailkeep.config.load import read_config
from mailkeep.config.model import Config
from mailkeep.config.template import render
from mailkeep.directory.base import Account
from mailkeep.directory.file import UserRecord, write_users_file
from mailkeep.directory.passwords import hash_password
from mailkeep.fsmodes import PRIVATE_FILE, cannot_write, make_private_dirs, write_file
from mailkeep.observe.logformat import formatter
from mailkeep.tls.certs import generate_selfsigned

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


# `init` creates the "demo" account (its password printed once) only when asked: by
# --demo-user, or by this variable (the container's entry point and scripts/demo.sh).
DEMO_USER_ENV = "MAILKEEP_DEMO_USER"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise CliError(f"{name}={value!r}: expected 1 or 0 (true/false, yes/no)", EXIT_USAGE)


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    demo_user = args.demo_user if args.demo_user is not None else _env_flag(DEMO_USER_ENV)
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
    data_dir = args.data_dir or "data"
    text = render(hostname=hostname, domains=domains, data_dir=data_dir,
                  cert="certs/mailkeep.crt", key="certs/mailkeep.key", ports=ports[:2],
                  pop3_ports=ports[2:4], imap_ports=ports[4:6],
                  hosts=tuple(args.bind_host or ("0.0.0.0", "[::]")),
                  run_as=_system_user_for_root(), config_name=str(config_path.absolute()))
    records: dict[str, UserRecord] = {}
    password = None
    if demo_user:
        password = secrets.token_urlsafe(12)
        name = "demo"
        records[name] = UserRecord(Account(name, (f"{name}@{domains[0]}",)),
                                   hash_password(password))
    try:
        # Ours alone whatever the umask (umask 000 would make it world-writable): whoever
        # can write here can replace the users file.
        make_private_dirs(target)
        info = generate_selfsigned(cert_path, key_path, [hostname, *args.san],
                                   key_type=args.key_type, rsa_bits=args.rsa_bits)
        write_file(config_path, text.encode("utf-8"), PRIVATE_FILE)
        write_users_file(users_path, records)
    except OSError as exc:
        failed = Path(exc.filename) if exc.filename else target
        if failed.name.startswith(".users.toml."):
            failed = users_path  # the temporary sibling it is written through
        raise CliError(cannot_write(failed, exc, "")) from None
    print(f"wrote {config_path}")
    print(f"wrote {users_path}")
    print(f"wrote {cert_path} ({info.key_type}, SAN {', '.join(info.names)}, "
          f"expires {info.not_after:%Y-%m-%d})")
    print(f"listeners: submission on port {ports[0]} (STARTTLS), submissions on {ports[1]} "
          f"(TLS), pop3s on {ports[2]} (TLS), imaps on {ports[4]} (TLS)")
    config_abs = config_path.absolute()
    if password is not None:
        print(f"demo account: login demo@{domains[0]}  password {password}")
        passwd = admin_command("user", "passwd", "demo", config=config_abs)
        print(f"  (shown once; change it with `{passwd}`)")
    else:
        print("no accounts yet; add one (the password is asked for, or read from stdin):")
        print(f"  {admin_command('user', 'add', 'postmaster', config=config_abs)}")
    print(f"start it with: {admin_command('serve', config=config_abs)}")
    return 0


# -- serve / check-config -------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from mailkeep.app import StartupError, serve  # noqa: PLC0415 (keep `--help` fast)

    config = load_or_exit(args.config)
    if args.allow_root:
        config = dataclasses.replace(config, allow_root=True)
    setup_logging(args.log_level or config.log_level, config.log_format)
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
    if config.workers > 1:
        return _serve_workers(args, config, runner, ready)
    try:
        with runner:
            runner.run(serve(config, ready_file=ready,
                             log_level_pinned=args.log_level is not None))
    except StartupError as exc:
        _startup_problems(config, exc.problems)
        return EXIT_CONFIG
    return 0


def _startup_problems(config: Config, problems: list[str]) -> None:
    print(f"mailkeep: cannot start ({config.path}):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _serve_workers(args: argparse.Namespace, config: Config, runner: asyncio.Runner,
                   ready: Path | None) -> int:
    """`workers` > 1: a supervisor forks the workers (no event loop exists here yet: the
    runner creates its loop on first use, in each worker)."""
    from mailkeep.app import StartupError, serve  # noqa: PLC0415
    from mailkeep.workers.link import WorkerLink  # noqa: PLC0415
    from mailkeep.workers.supervisor import Supervisor  # noqa: PLC0415

    def reload_config() -> Config:
        fresh = load_config(args.config)
        return dataclasses.replace(fresh, allow_root=True) if args.allow_root else fresh

    def worker_main(worker_config: Config, link: WorkerLink) -> int:
        try:
            with runner:
                runner.run(serve(worker_config, link=link,
                                 log_level_pinned=args.log_level is not None))
        except StartupError as exc:
            _startup_problems(worker_config, exc.problems)
            return EXIT_CONFIG
        return 0

    for handler in logging.getLogger().handlers:  # which worker said it
        handler.setFormatter(formatter(config.log_format, pid=True))
    return Supervisor(config, reload_config, worker_main, ready).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    reading = read_config(args.config)
    problems = check_problems(reading)
    if reading.config is not None and not reading.problems:
        for warning in check_warnings(reading.config):
            print(f"warning: {warning}", file=sys.stderr)
    if problems:
        print(f"{reading.path}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    assert reading.config is not None
    print(f"{reading.path}: OK ({len(reading.config.listeners)} listeners)")
    return 0


# -- dns ------------------------------------------------------------------------------------

def cmd_dns(args: argparse.Namespace) -> int:
    """Zone-file lines for one local domain: MX, SRV, autoconfig CNAMEs, SPF, DKIM."""
    from mailkeep.proto.zone import AutoconfigSite, records  # noqa: PLC0415
    from mailkeep.relay.dkim import DkimError, txt_record  # noqa: PLC0415
    from mailkeep.server.autoconfig import mail_setup  # noqa: PLC0415

    config = load_or_exit(args.config)
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
