#!/usr/bin/env bash
# Quick start: set everything up and run the daemon on an embedded default.
#   - a virtualenv with mailkeep in .venv
#   - ./demo/: config, users file with a demo account (password printed once: the demo asks
#     `init` for it, which by default creates no account), a self-signed certificate for
#     MAILKEEP_HOSTNAME (default localhost), Maildirs under demo/data
#   - ports 587/465/995/993 as root, else 10587/10465/10995/10993; on 127.0.0.1 only (a demo)
#   - once listening, the try-it commands with the ports actually bound
# Stop with Ctrl-C. Run again to reuse ./demo; delete it to start fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
setup_venv
HOSTNAME_=${MAILKEEP_HOSTNAME:-localhost}
DOMAIN=${MAILKEEP_DOMAIN:-example.test}
if [ ! -f demo/mailkeep.toml ]; then
    "$VENV/bin/mailkeep" init demo --hostname "$HOSTNAME_" --domain "$DOMAIN" \
        --bind-host 127.0.0.1 --demo-user
fi
"$VENV/bin/mailkeep" cert show --config demo/mailkeep.toml
# A demo as root keeps running as root (--allow-root); in production set run_as instead.
extra=()
if [ "$(id -u)" -eq 0 ]; then extra+=(--allow-root); fi

ready=demo/.ready.json
rm -f "$ready"
"$VENV/bin/mailkeep" serve --config demo/mailkeep.toml --ready-file "$ready" \
    "${extra[@]}" "$@" &
daemon=$!
# A background job of a script ignores SIGINT: Ctrl-C here stops the daemon with SIGTERM
# (its graceful shutdown).
trap 'kill -TERM "$daemon" 2>/dev/null || true' INT TERM
while [ ! -f "$ready" ] && kill -0 "$daemon" 2>/dev/null; do sleep 0.2; done
if [ -f "$ready" ]; then
    # The ports read back from the running daemon, not assumed from root or not.
    "$VENV/bin/python" - "$ready" demo/mailkeep.toml "$DOMAIN" <<'PY'
import json, sys, tomllib
ready, config, domain = sys.argv[1:]
bound = json.load(open(ready))["listeners"]
listeners = tomllib.load(open(config, "rb")).get("listeners", {})
def port(protocol, tls):
    for name, lst in listeners.items():
        if lst.get("protocol") == protocol and lst.get("tls") == tls and bound.get(name):
            return bound[name][0].rsplit(":", 1)[1]
    return None
user = f"demo@{domain}"
lines = []
if (p := port("submission", "starttls")) or (p := port("submission", "implicit")):
    tls = "--tls" if port("submission", "starttls") == p else "--tlsc"
    lines += [f"swaks --server 127.0.0.1:{p} {tls} --auth PLAIN --auth-user {user} \\",
              f"      --auth-password 'PRINTED-PASSWORD' --from {user} --to {user}",
              "ls demo/data/mail/demo/new/"]
if p := port("pop3", "implicit"):
    lines.append(f"curl -k --user '{user}:PRINTED-PASSWORD' pop3s://127.0.0.1:{p}/1")
if p := port("imap", "implicit"):
    lines.append(f"curl -k --user '{user}:PRINTED-PASSWORD' 'imaps://127.0.0.1:{p}/INBOX;UID=1'")
print("\nlistening: " + ", ".join(f"{n} {' '.join(a)}" for n, a in bound.items()))
print("try it (PRINTED-PASSWORD: the demo password printed by the first run):")
print("\n".join(f"  {line}" for line in lines) + "\n", flush=True)
PY
fi
status=0
wait "$daemon" || status=$?
# Interrupted by the trap: wait again for the daemon's own exit status.
if kill -0 "$daemon" 2>/dev/null; then wait "$daemon" || status=$?; fi
exit "$status"
