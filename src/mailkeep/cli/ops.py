"""`mailkeep cert ...`, `queue ...`, `dkim ...`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mailkeep.cli.common import (
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    CliError,
    default_config,
    load_or_exit,
)
from mailkeep.config.hints import CONFIG_ENV
from mailkeep.fsmodes import cannot_write
from mailkeep.tls.certs import generate_selfsigned
from mailkeep.tls.inventory import describe as describe_certificate
from mailkeep.tls.inventory import inventory as certificate_inventory

# -- certificates ---------------------------------------------------------------------------

def cmd_cert_show(args: argparse.Namespace) -> int:
    """Every certificate: listener defaults, SNI certificates, the ACME one."""
    config = load_or_exit(args.config)
    uses = certificate_inventory(config)
    for i, use in enumerate(uses):
        if i:
            print()
        print("\n".join(describe_certificate(use, config.hostname)))
    return 1 if any(use.problem for use in uses) else 0


def cmd_cert_selfsigned(args: argparse.Namespace) -> int:
    # --config, else --cert/--key given explicitly, else the default configuration.
    config_path = args.config or (None if args.cert or args.key else default_config())
    if config_path:
        config = load_or_exit(config_path)
        cert, key = config.tls.cert, config.tls.key
        hostname = args.hostname or config.hostname
    else:
        if not (args.cert and args.key and args.hostname):
            raise CliError(f"give --config FILE (or set {CONFIG_ENV}), or --hostname with "
                           "--cert and --key", EXIT_USAGE)
        cert, key, hostname = Path(args.cert), Path(args.key), args.hostname
    if (cert.exists() or key.exists()) and not args.force:
        raise CliError(f"refusing to overwrite {cert} / {key} (use --force)")
    try:
        info = generate_selfsigned(cert, key, [hostname, *args.san], key_type=args.key_type,
                                   rsa_bits=args.rsa_bits, days=args.days)
    except OSError as exc:
        target = Path(exc.filename) if exc.filename else cert
        raise CliError(cannot_write(target, exc, "the certificate or its key")) from None
    print(f"wrote {cert} and {key}: {info.key_type}, SAN {', '.join(info.names)}, "
          f"expires {info.not_after:%Y-%m-%d}, sha256 {info.sha256}")
    print("a running daemon picks it up within tls.reload_interval, or at once on SIGHUP")
    return 0


# -- queue ----------------------------------------------------------------------------------

def cmd_queue(args: argparse.Namespace) -> int:
    from mailkeep.relay import queue_admin as qa  # noqa: PLC0415
    from mailkeep.relay.spool import Spool  # noqa: PLC0415

    config = load_or_exit(args.config)
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

    config_path = args.config or default_config()
    try:
        new = create_key(args.domain, selector=args.selector or DEFAULT_SELECTOR,
                         key_type=KeyType(args.type),
                         config_path=Path(config_path) if config_path else None,
                         force=args.force)
    except DkimAdminError as exc:
        raise CliError(str(exc)) from None
    print("\n".join(render_new_key(new)))
    return 0


def cmd_dkim_show(args: argparse.Namespace) -> int:
    from mailkeep.relay.dkim_admin import key_statuses, render_statuses  # noqa: PLC0415

    config = load_or_exit(args.config)
    statuses = key_statuses(config)
    print("\n".join(render_statuses(statuses, config.path)))
    return 1 if any(s.problems for s in statuses) else 0
