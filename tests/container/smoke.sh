#!/usr/bin/env bash
# Container smoke test for mailkeep (manual / optional CI; not collected by pytest).
#
#   sudo tests/container/smoke.sh            # from the repo root; needs root, podman via the
#                                            # harness, and swaks on the host
#
# What it proves, end to end, with the image built from this checkout:
#   1. hadolint has no findings on the Dockerfile;
#   2. the image builds, starts (first-start `mailkeep init` in the entrypoint), and its
#      HEALTHCHECK (`mailkeep health`) passes;
#   3. AUTH is not offered before STARTTLS on 587;
#   4. swaks delivers with STARTTLS + AUTH PLAIN on 587 and implicit TLS + AUTH LOGIN on 465,
#      using the demo password printed once in the container log;
#   5. both messages are in the data volume (/var/lib/mailkeep/mail/demo/new), and curl reads
#      them back over POP3S (995) and IMAPS (993);
#   6. the daemon runs as a non-root uid (podman exec id, and PID 1's status);
#   7. after a restart the config is kept (no second init) and the health check passes.
# Exit status is non-zero on the first failure; the container log is printed then.
#
# Knobs: HARNESS (path to build-and-run.sh), TAG, NAME, SMTP_PORT, SMTPS_PORT, KEEP=1 (leave
# the container and its volumes running afterwards), SKIP_LINT=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/container/build-and-run.sh}
TAG=${TAG:-localhost/mailkeep:test}
NAME=${NAME:-mailkeep}
SMTP_PORT=${SMTP_PORT:-20587}
SMTPS_PORT=${SMTPS_PORT:-20465}
POP3S_PORT=${POP3S_PORT:-20995}
IMAPS_PORT=${IMAPS_PORT:-20993}
VOL_CONFIG=$NAME-smoke-config
VOL_DATA=$NAME-smoke-data
MARK="smoke-$(date +%s)-$$"

step() { printf '\n=== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || fail "run as root (the podman harness needs it)"
[[ -x $HARNESS ]] || fail "no harness at $HARNESS (set HARNESS=)"
command -v swaks >/dev/null || fail "swaks is not installed (apt-get install swaks)"

cleanup() {
    local rc=$?
    if [[ $rc != 0 ]]; then
        printf '\n--- container log (%s) ---\n' "$NAME" >&2
        "$HARNESS" logs -n "$NAME" >&2 || true
    fi
    if [[ ${KEEP:-0} != 1 ]]; then
        "$HARNESS" down -n "$NAME" || true
        podman volume rm -f "$VOL_CONFIG" "$VOL_DATA" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}

# podman/buildah through the harness' private storage and config
eval "$("$HARNESS" env)"

if [[ ${SKIP_LINT:-0} != 1 ]]; then
    step "hadolint"
    "$HARNESS" lint "$ROOT"
fi

trap cleanup EXIT
# Fresh named volumes, so the entrypoint runs `mailkeep init` and prints a new demo password
# (MAILKEEP_DEMO_USER=1: the image creates no account by default).
podman rm -f -t 5 "$NAME" >/dev/null 2>&1 || true
podman volume rm -f "$VOL_CONFIG" "$VOL_DATA" >/dev/null 2>&1 || true

step "build and start $TAG as $NAME (waits for the ports and the HEALTHCHECK)"
# podman 4.3 keeps net.ipv4.ip_unprivileged_port_start=1024 inside the container, so the
# non-root daemon could not bind 587/465 without this sysctl (Docker 20.10+ sets it to 0).
"$HARNESS" up -t "$TAG" -n "$NAME" -p "$SMTP_PORT:587" -p "$SMTPS_PORT:465" \
    -p "$POP3S_PORT:995" -p "$IMAPS_PORT:993" \
    --podman-arg "--sysctl=net.ipv4.ip_unprivileged_port_start=0" \
    --podman-arg "--env=MAILKEEP_DEMO_USER=1" \
    --podman-arg "--volume=$VOL_CONFIG:/etc/mailkeep" \
    --podman-arg "--volume=$VOL_DATA:/var/lib/mailkeep" \
    "$ROOT"

step "health"
podman healthcheck run "$NAME" || fail "podman healthcheck run $NAME"
echo "health status: $(podman inspect -f '{{.State.Health.Status}}' "$NAME")"
podman exec "$NAME" mailkeep health --config /etc/mailkeep/mailkeep.toml

step "demo password from the log"
LOG=$("$HARNESS" logs -n "$NAME" 2>&1)
LOGIN=$(sed -n 's/^demo account: login \([^ ]*\)  password .*/\1/p' <<<"$LOG" | tail -n 1)
PASSWORD=$(sed -n 's/^demo account: login [^ ]*  password \([^ ]*\)$/\1/p' <<<"$LOG" | tail -n 1)
[[ -n $LOGIN && -n $PASSWORD ]] || fail "no 'demo account: login ... password ...' line in the log"
echo "login $LOGIN (password found, ${#PASSWORD} characters)"

swaks_common=(--timeout 30 --auth-user "$LOGIN" --auth-password "$PASSWORD"
              --from "$LOGIN" --to "$LOGIN")

step "587 without TLS: AUTH must not be offered"
if out=$(swaks --server "127.0.0.1:$SMTP_PORT" --auth PLAIN "${swaks_common[@]}" \
        --header "Subject: $MARK must-not-arrive" 2>&1); then
    printf '%s\n' "$out"; fail "AUTH succeeded without TLS on port 587"
fi
grep -q 'STARTTLS' <<<"$out" || { printf '%s\n' "$out"; fail "587 does not offer STARTTLS"; }
grep -q 'AUTH' <<<"$(grep '^<-' <<<"$out")" && { printf '%s\n' "$out"; fail "AUTH offered before TLS"; }
echo "ok: plaintext session offers STARTTLS and no AUTH"

step "587 STARTTLS + AUTH PLAIN"
out=$(swaks --server "127.0.0.1:$SMTP_PORT" --tls --auth PLAIN "${swaks_common[@]}" \
      --header "Subject: $MARK starttls" --body "smoke test via 587 STARTTLS" 2>&1) \
    || { printf '%s\n' "$out"; fail "swaks via 587 STARTTLS"; }
grep -E '^(<~|<-|=== TLS started)' <<<"$out"
grep -q '^<~  235 ' <<<"$out" || fail "no 235 after AUTH on 587"
grep -q '^<~  250 2.0.0 Ok: queued' <<<"$out" || fail "message not queued on 587"

step "465 implicit TLS + AUTH LOGIN"
out=$(swaks --server "127.0.0.1:$SMTPS_PORT" --tlsc --auth LOGIN "${swaks_common[@]}" \
      --header "Subject: $MARK implicit" --body "smoke test via 465 implicit TLS" 2>&1) \
    || { printf '%s\n' "$out"; fail "swaks via 465 implicit TLS"; }
grep -E '^(<~|=== TLS started)' <<<"$out"
grep -q '^<~  235 ' <<<"$out" || fail "no 235 after AUTH on 465"
grep -q '^<~  250 2.0.0 Ok: queued' <<<"$out" || fail "message not queued on 465"

step "messages in the data volume"
podman exec "$NAME" ls -l /var/lib/mailkeep/mail/demo/new
for kind in starttls implicit; do
    podman exec "$NAME" grep -rlq -- "Subject: $MARK $kind" /var/lib/mailkeep/mail/demo/new \
        || fail "the $kind message is not in /var/lib/mailkeep/mail/demo/new"
done
if podman exec "$NAME" grep -rlq -- "$MARK must-not-arrive" /var/lib/mailkeep/mail/demo; then
    fail "a message sent without TLS was delivered"
fi
echo "ok: both messages delivered, the plaintext one was not"

step "read back over POP3S (995) and IMAPS (993)"
# The demo certificate is self-signed for $MAILKEEP_HOSTNAME (localhost): -k, this proves the
# doors, not the certificate (the test suite verifies certificates).
out=$(curl -sSk --max-time 30 --user "$LOGIN:$PASSWORD" "pop3s://127.0.0.1:$POP3S_PORT/") \
    || fail "POP3S LIST on 995"
printf 'POP3 LIST: %s\n' "$(tr '\r\n' '  ' <<<"$out")"
[[ $(grep -c . <<<"$out") == 2 ]] || fail "POP3 should list 2 messages"
curl -sSk --max-time 30 --user "$LOGIN:$PASSWORD" "pop3s://127.0.0.1:$POP3S_PORT/1" \
    | grep -q "^Subject: $MARK" || fail "POP3 RETR 1 does not return a smoke message"
out=$(curl -sSk --max-time 30 --user "$LOGIN:$PASSWORD" \
      "imaps://127.0.0.1:$IMAPS_PORT/INBOX" -X "SEARCH SUBJECT $MARK") || fail "IMAPS SEARCH"
printf 'IMAP: %s\n' "$(tr -d '\r' <<<"$out")"
grep -q '^\* SEARCH 1 2' <<<"$out" || fail "IMAP SEARCH should find messages 1 and 2"
curl -sSk --max-time 30 --user "$LOGIN:$PASSWORD" "imaps://127.0.0.1:$IMAPS_PORT/INBOX;UID=2" \
    | grep -q "^Subject: $MARK" || fail "IMAP UID FETCH 2 does not return a smoke message"
echo "ok: both messages readable over POP3S and IMAPS"

step "non-root"
ID=$(podman exec "$NAME" id)
echo "podman exec $NAME id: $ID"
[[ $ID == uid=0\(* ]] && fail "exec user is root"
PID1_UID=$(podman exec "$NAME" awk '/^Uid:/ {print $2}' /proc/1/status)
echo "PID 1: $(podman exec "$NAME" awk '/^Name:/ {print $2}' /proc/1/status), uid $PID1_UID"
[[ $PID1_UID != 0 ]] || fail "the daemon (PID 1) runs as root"

step "restart keeps the config (no second init) and is healthy again"
podman restart -t 10 "$NAME" 2>&1 >/dev/null | { grep -v "unable to get systemd connection" >&2 || true; }
for _ in $(seq 30); do podman healthcheck run "$NAME" >/dev/null 2>&1 && break; sleep 1; done
podman healthcheck run "$NAME" || fail "not healthy after a restart"
INITS=$("$HARNESS" logs -n "$NAME" 2>&1 | grep -c '^demo account:' || true)
[[ $INITS == 1 ]] || fail "mailkeep init ran $INITS times (expected once)"
echo "ok: healthy after restart, init ran once"

step "image"
podman image inspect -f 'size {{.Size}} bytes, user {{.Config.User}}, ports {{json .Config.ExposedPorts}}, volumes {{json .Config.Volumes}}' "$TAG"
printf '\nPASS: mailkeep container smoke test\n'
