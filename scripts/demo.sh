#!/usr/bin/env bash
# Quick start: set everything up and run the daemon on an embedded default.
#   - a virtualenv with mailkeep in .venv
#   - ./demo/: config, users file with a demo account (password printed once), a self-signed
#     certificate for MAILKEEP_HOSTNAME (default localhost), Maildirs under demo/data
#   - ports 587/465 as root, else 10587/10465; listening on 127.0.0.1 only (a demo)
# Stop with Ctrl-C. Run again to reuse ./demo; delete it to start fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_venv
HOSTNAME_=${MAILKEEP_HOSTNAME:-localhost}
DOMAIN=${MAILKEEP_DOMAIN:-example.test}
if [ ! -f demo/mailkeep.toml ]; then
    .venv/bin/mailkeep init demo --hostname "$HOSTNAME_" --domain "$DOMAIN" --bind-host 127.0.0.1
fi
.venv/bin/mailkeep cert show --config demo/mailkeep.toml
# A demo as root keeps running as root (--allow-root); in production set run_as instead.
extra=()
if [ "$(id -u)" -eq 0 ]; then extra+=(--allow-root); fi
exec .venv/bin/mailkeep serve --config demo/mailkeep.toml "${extra[@]}" "$@"
