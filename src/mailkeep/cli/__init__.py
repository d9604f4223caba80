"""Command line: init, serve, check-config, reload, dns, user ..., cert ..., queue ...,
dkim ..., health. The parser and main(); the commands live in the modules beside it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mailkeep import __version__
from mailkeep.cli.common import EXIT_CONFIG, CliError, resolve_config
from mailkeep.cli.health import cmd_health
from mailkeep.cli.ops import (
    cmd_cert_selfsigned,
    cmd_cert_show,
    cmd_dkim_keygen,
    cmd_dkim_show,
    cmd_queue,
)
from mailkeep.cli.reload import DEFAULT_TIMEOUT, cmd_reload
from mailkeep.cli.site import (
    cmd_check_config,
    cmd_dns,
    cmd_init,
    cmd_serve,
)
from mailkeep.cli.users import cmd_user
from mailkeep.config.hints import CONFIG_ENV, DEFAULT_CONFIG
from mailkeep.directory.base import SERVICES

__all__ = ["EXIT_CONFIG", "build_parser", "main"]


# -- parser ---------------------------------------------------------------------------------

def config_option(q: argparse.ArgumentParser, *, required: bool = True,
                  text: str = "the configuration file") -> None:
    """--config FILE; when left out, $MAILKEEP_CONFIG, else /etc/mailkeep/mailkeep.toml if
    it exists (main() resolves it; `required` commands stop with a clear error without)."""
    q.add_argument("--config", metavar="FILE",
                   help=f"{text} (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG} if it exists)")
    q.set_defaults(config_required=required)


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
    q.add_argument("--demo-user", action="store_true", default=None,
                   help="also create a 'demo' account and print its password once (default: "
                        "no accounts; also MAILKEEP_DEMO_USER=1)")
    q.add_argument("--no-demo-user", action="store_false", dest="demo_user",
                   help=argparse.SUPPRESS)  # the default now; kept for existing scripts
    q.add_argument("--force", action="store_true", help="overwrite existing files")
    key_opts(q)
    q.set_defaults(func=cmd_init)

    q = sub.add_parser("serve", help="run the daemon in the foreground")
    config_option(q)
    q.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    q.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    q.add_argument("--ready-file", help="write the bound addresses here (JSON) once listening")
    q.add_argument("--allow-root", action="store_true",
                   help="keep running as root (like allow_root = true; for demos)")
    q.set_defaults(func=cmd_serve)

    q = sub.add_parser("check-config", help="report every problem in a config")
    config_option(q)
    q.set_defaults(func=cmd_check_config)

    q = sub.add_parser("reload", help="check a config, have the running daemon apply it "
                                      "(SIGHUP) and report the outcome")
    config_option(q)
    q.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds to wait for the daemon's answer (default {DEFAULT_TIMEOUT:g})")
    q.set_defaults(func=cmd_reload)

    q = sub.add_parser("dns", help="print the DNS records to publish for a local domain")
    q.add_argument("domain")
    config_option(q)
    q.set_defaults(func=cmd_dns)

    q = sub.add_parser("health", help="probe every listener (for container health checks; "
                       "with an admin listener, its /readyz)")
    config_option(q)
    q.set_defaults(func=cmd_health)

    users = sub.add_parser("user", help="manage accounts (file and sql backends) and app "
                                        "passwords (every backend)")
    usub = users.add_subparsers(dest="user_command", required=True)
    for action, text in (("add", "add an account (password from stdin or a prompt)"),
                         ("passwd", "set an account's password"),
                         ("del", "delete an account (its Maildir is kept)")):
        q = usub.add_parser(action, help=text)
        q.add_argument("name")
        config_option(q)
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
    config_option(q)
    q.set_defaults(func=cmd_user)
    q = usub.add_parser("list", help="list accounts and their addresses")
    config_option(q)
    q.set_defaults(func=cmd_user)
    q = usub.add_parser("create-schema", help="sql backend: create the default tables")
    config_option(q)
    q.set_defaults(func=cmd_user)
    q = usub.add_parser("import", help="add accounts from a Dovecot passwd-file or a CSV file")
    config_option(q)
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
    config_option(q)
    q = asub.add_parser("list", help="an account's app passwords, with last use")
    q.add_argument("name")
    config_option(q)
    q = asub.add_parser("revoke", help="remove one")
    q.add_argument("name")
    q.add_argument("label")
    config_option(q)
    for parser in asub.choices.values():
        parser.set_defaults(func=cmd_user, user_command="app-password")

    cert = sub.add_parser("cert", help="certificates")
    csub = cert.add_subparsers(dest="cert_command", required=True)
    q = csub.add_parser("show", help="every certificate (listener defaults, SNI, ACME): names, "
                                         "doors, expiry, fingerprint")
    config_option(q)
    q.set_defaults(func=cmd_cert_show)
    q = csub.add_parser("selfsigned", help="(re)generate a self-signed certificate")
    config_option(q, required=False, text="write to this config's tls.cert and tls.key")
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
    config_option(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_queue)
    q = qsub.add_parser("show", help="a message's envelope, recipients and header")
    q.add_argument("id")
    config_option(q)
    q.add_argument("--body", action="store_true", help="the body too")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_queue)
    q = qsub.add_parser("retry", help="try a message (or --all) now")
    q.add_argument("id", nargs="?")
    q.add_argument("--all", action="store_true", help="every message not on hold")
    config_option(q)
    q.add_argument("--wait", type=float, help=wait_help)
    q.set_defaults(func=cmd_queue)
    for action, text in (("delete", "remove a message from the queue (no notice is sent)"),
                         ("hold", "keep a message from being tried until released"),
                         ("release", "let a held message be tried again, at once")):
        q = qsub.add_parser(action, help=text)
        q.add_argument("id")
        config_option(q)
        q.add_argument("--wait", type=float, help=wait_help)
        q.set_defaults(func=cmd_queue)
    q = qsub.add_parser("flush", help="try every message not on hold now (retry --all)")
    config_option(q)
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
    config_option(q, required=False, text="write under this config's folder (dkim/) and "
                  "check that DOMAIN is local; without any, under ./dkim/")
    q.add_argument("--force", action="store_true", help="overwrite an existing key")
    q.set_defaults(func=cmd_dkim_keygen)
    q = dsub.add_parser("show", help="each domain's key, selector and the record it needs")
    config_option(q)
    q.set_defaults(func=cmd_dkim_show)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "config_required", False):
            args.config = resolve_config(args.config)
        code: int = args.func(args)
    except CliError as exc:
        print(f"mailkeep: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        # The commands explain the failures they expect (a read-only users file...); this
        # keeps any other from being a traceback: which file, and what the system said.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mailkeep: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
