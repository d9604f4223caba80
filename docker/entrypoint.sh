#!/bin/sh
# Container entry point for mailkeep (see docs/container.md).
#
# First start (no /etc/mailkeep/mailkeep.toml yet): `mailkeep init` writes a config, an empty
# users file (with MAILKEEP_DEMO_USER=1 a "demo" account instead, its password printed ONCE
# to this container's log) and a self-signed certificate for $MAILKEEP_HOSTNAME. Then the daemon runs in the foreground as
# PID 1 (exec), so SIGTERM from `docker stop` / `podman stop` reaches it directly.
#
#   no arguments, or arguments starting with "-"  ->  mailkeep serve --config ... "$@"
#   anything else (e.g. `mailkeep user list --config ...`, `sh`)  ->  run that command instead
#
# Environment:
#   MAILKEEP_HOSTNAME  name clients connect to; certificate SAN and SMTP greeting (localhost)
#   MAILKEEP_DOMAINS   local mail domains, separated by spaces or commas (default: derived
#                      from the hostname by `mailkeep init`)
#   MAILKEEP_DEMO_USER 1: create the "demo" account (read by `mailkeep init`; default 0)
# These are only read on the first start; afterwards edit /etc/mailkeep/mailkeep.toml.
#   MAILKEEP_CONFIG    set by the image to /etc/mailkeep/mailkeep.toml: every `mailkeep`
#                      command (e.g. `docker exec NAME mailkeep user add alice`) uses it
set -eu

CONFIG_DIR=/etc/mailkeep
CONFIG="$CONFIG_DIR/mailkeep.toml"
DATA_DIR=/var/lib/mailkeep

umask 027

say() { printf 'mailkeep-entrypoint: %s\n' "$*" >&2; }

init_config() {
    if [ ! -w "$CONFIG_DIR" ]; then
        say "$CONFIG_DIR is not writable by uid $(id -u) gid $(id -g), so the first-start"
        say "configuration cannot be written. Use a named volume, or chown a bind-mounted"
        say "directory to $(id -u):$(id -g), or provide your own $CONFIG."
        exit 78
    fi
    # Positional parameters are local to this function: build the init command line in them.
    set -- init "$CONFIG_DIR" --hostname "${MAILKEEP_HOSTNAME:-localhost}" \
        --ports standard --bind-host 0.0.0.0 --data-dir "$DATA_DIR"
    domains=$(printf '%s' "${MAILKEEP_DOMAINS:-}" | tr ',' ' ')
    set -f  # no globbing while splitting the domain list on whitespace
    for domain in $domains; do
        set -- "$@" --domain "$domain"
    done
    set +f
    say "no $CONFIG: running mailkeep $*"
    if ! mailkeep "$@"; then
        say "mailkeep init failed (see above); nothing is served"
        exit 78
    fi
}

# A hint only (the daemon reports the bind error itself): a non-root process may bind a
# port below net.ipv4.ip_unprivileged_port_start only with CAP_NET_BIND_SERVICE. Docker
# 20.10+ sets that sysctl to 0 in a container's network namespace; podman 4.3 does not.
hint_low_ports() {
    [ "$(id -u)" != 0 ] || return 0
    start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start 2>/dev/null) || return 0
    capeff=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status 2>/dev/null) || return 0
    [ $(( 0x${capeff:-0} & 0x400 )) = 0 ] || return 0  # bit 10 = CAP_NET_BIND_SERVICE
    ports=$(sed -n 's/^[[:space:]]*bind[[:space:]]*=//p' "$CONFIG" | grep -Eo ':[0-9]+"' | tr -d ':"')
    for port in $ports; do
        if [ "$port" -lt "$start" ]; then
            say "port $port is below net.ipv4.ip_unprivileged_port_start=$start here and uid"
            say "$(id -u) lacks CAP_NET_BIND_SERVICE: run the container with"
            say "--sysctl net.ipv4.ip_unprivileged_port_start=0 (see docs/container.md)"
            return 0
        fi
    done
}

if [ ! -e "$CONFIG" ]; then
    init_config
fi

case "${1:-}" in
    "" | -*)
        hint_low_ports || true
        exec mailkeep serve --config "$CONFIG" "$@"
        ;;
    *) exec "$@" ;;
esac
